// The client's options: their defaults, and the checks that turn a mistake into a
// TypeError at construction rather than a connection that quietly never works.

import { isStorage } from "./storage.js";
import { tokenSubject } from "./token.js";

/** Longest deviceId herald accepts, in bytes of UTF-8. */
const MAX_DEVICE_ID = 128;
const utf8Length = (s) => new TextEncoder().encode(s).length;

const DEFAULTS = {
  since: 0,
  storagePrefix: "herald",
  handlerErrors: "retry",
  reconnectDelayMs: 1_000,
  reconnectDelayMaxMs: 30_000,
  readTimeoutMs: 10_000,
  autoConnect: true,
};

export const isWhole = (n) => Number.isSafeInteger(n) && n >= 0;

/** Checks the options once and fills in the defaults. */
export function validate(options) {
  if (options === null || typeof options !== "object") throw new TypeError("HeraldClient: options must be an object");
  const o = { ...DEFAULTS, ...options };
  for (const k of Object.keys(o)) if (o[k] === undefined && k in DEFAULTS) o[k] = DEFAULTS[k];
  const { token, userId, deviceId, storage } = o;
  if (token !== undefined && typeof token !== "string" && typeof token !== "function") {
    throw new TypeError("HeraldClient: token must be a string or a function returning one (or a promise of one)");
  }
  if (token === "") throw new TypeError("HeraldClient: token is empty");
  if (userId !== undefined && (typeof userId !== "string" || userId === "")) {
    throw new TypeError("HeraldClient: userId must be a non-empty string");
  }
  if (token === undefined && userId === undefined) {
    throw new TypeError("HeraldClient: give a token (or, for a server in development mode, a userId)");
  }
  if (typeof token === "string" && userId === undefined && tokenSubject(token) === undefined) {
    throw new TypeError("HeraldClient: the token is not a JWT with a `sub`; pass userId");
  }
  if (deviceId !== undefined && (typeof deviceId !== "string" || deviceId === "" || utf8Length(deviceId) > MAX_DEVICE_ID)) {
    throw new TypeError(`HeraldClient: deviceId must be a string of 1 to ${MAX_DEVICE_ID} bytes (UTF-8)`);
  }
  if (storage !== undefined && !isStorage(storage)) {
    throw new TypeError("HeraldClient: storage must have getItem(key) and setItem(key, value)");
  }
  if (o.since !== null && !isWhole(o.since)) throw new TypeError("HeraldClient: since must be a whole number or null");
  if (o.handlerErrors !== "retry" && o.handlerErrors !== "skip") {
    throw new TypeError('HeraldClient: handlerErrors must be "retry" or "skip"');
  }
  for (const k of ["reconnectDelayMs", "reconnectDelayMaxMs", "readTimeoutMs"]) {
    if (!(typeof o[k] === "number" && o[k] > 0 && Number.isFinite(o[k]))) {
      throw new TypeError(`HeraldClient: ${k} must be a positive number`);
    }
  }
  if (typeof o.storagePrefix !== "string" || o.storagePrefix === "") {
    throw new TypeError("HeraldClient: storagePrefix must be a non-empty string");
  }
  if (o.socketOptions !== undefined && (o.socketOptions === null || typeof o.socketOptions !== "object")) {
    throw new TypeError("HeraldClient: socketOptions must be an object");
  }
  return o;
}
