/**
 * Where the client keeps the last seq it processed, per user and device.
 *
 * A storage is anything with localStorage's `getItem(key)` and `setItem(key, value)`;
 * either may return a promise (React Native's AsyncStorage, IndexedDB wrappers).
 */

/** A storage in memory, for Node and for tests. */
export class MemoryStorage {
  /** key -> value */
  #items = new Map();

  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null;
  }

  setItem(key, value) {
    this.#items.set(key, String(value));
  }

  removeItem(key) {
    this.#items.delete(key);
  }

  clear() {
    this.#items.clear();
  }

  get length() {
    return this.#items.size;
  }

  key(index) {
    return [...this.#items.keys()][index] ?? null;
  }
}

// Without a browser, every client of the process shares one memory storage, as every
// client of a page shares its localStorage: a client made again resumes where the last
// one stopped.
const processStorage = new MemoryStorage();

/**
 * The default storage: the page's localStorage where there is one (and it can be used:
 * a browser that blocks site data throws on access), else the process's memory storage.
 * Node's own experimental `localStorage` is not used (it wants a file of its own).
 */
export function defaultStorage() {
  try {
    if (typeof window === "object" && window !== null && window.localStorage) {
      const ls = window.localStorage;
      ls.getItem("herald:probe");
      return ls;
    }
  } catch {
    // blocked: fall back to memory
  }
  return processStorage;
}

/** Whether `s` looks like a storage. */
export function isStorage(s) {
  return s != null && typeof s.getItem === "function" && typeof s.setItem === "function";
}

/**
 * The key under which a user's position on a device is kept. User and device are both
 * part of it, so two users signing in one after the other on the same browser never
 * share a position, nor do two devices (tabs with their own deviceId) of one user.
 */
export function positionKey(userId, deviceId = "", prefix = "herald") {
  return `${prefix}:lastSeq:${encodeURIComponent(userId)}:${encodeURIComponent(deviceId ?? "")}`;
}

/** A stored position as a number, or undefined when there is none or it is not one. */
export function parsePosition(raw) {
  if (raw === null || raw === undefined) return undefined;
  const text = String(raw).trim();
  if (!/^\d{1,16}$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : undefined;
}
