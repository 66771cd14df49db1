/**
 * herald-client: the JavaScript client for herald.
 *
 *   import { HeraldClient } from "herald-client";
 *   const client = new HeraldClient(url, { token: async () => jwt, deviceId });
 *   client.on("message", ({ event, data, seq }) => { ... });
 */
export { HeraldClient } from "./client.js";
export { HeraldError } from "./errors.js";
export { MemoryStorage, positionKey } from "./storage.js";
export { backoffDelay } from "./backoff.js";
export { tokenClaims, tokenSubject } from "./token.js";
