/** Reading a JWT's claims without verifying it: the server verifies; the client only
 * needs to know whose it is, to pick the stored position. */

function base64UrlDecode(part) {
  if (!/^[A-Za-z0-9_-]*$/.test(part)) throw new Error("not base64url");
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** The claims of a JWT (its payload), or undefined when `token` is not one. */
export function tokenClaims(token) {
  if (typeof token !== "string") return undefined;
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    return claims !== null && typeof claims === "object" && !Array.isArray(claims) ? claims : undefined;
  } catch {
    return undefined;
  }
}

/** The user a JWT is for (`sub`), or undefined. */
export function tokenSubject(token) {
  const sub = tokenClaims(token)?.sub;
  return typeof sub === "string" && sub !== "" ? sub : undefined;
}
