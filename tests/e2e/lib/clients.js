// Real Socket.IO clients (4.x and 2.3.0) and deadline-bound waits.
//
// Every wait here has a deadline; nothing sleeps a fixed time to wait for an
// event. Sockets made through a ClientPool are closed by pool.closeAll().

import { io as ioV4 } from "socket.io-client";
import ioV2 from "socket.io-client-v2";

/** Default deadline for a single wait. */
export const WAIT_MS = Number(process.env.HERALD_E2E_WAIT_MS || 5_000);

/**
 * A promise that must settle within `ms`, or rejects naming `what`.
 * `executor(resolve, reject, onCleanup)`; cleanups run once it settles.
 */
export function withDeadline(what, ms, executor) {
  return new Promise((resolve, reject) => {
    const cleanups = [];
    let settled = false;
    const done = () => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      for (const fn of cleanups) fn();
      return true;
    };
    const timer = setTimeout(() => {
      if (done()) reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    try {
      executor(
        (value) => done() && resolve(value),
        (err) => done() && reject(err),
        (fn) => cleanups.push(fn),
      );
    } catch (err) {
      if (done()) reject(err);
    }
  });
}

/**
 * Poll `probe` (sync or async) until `check(value)` holds; resolve with that
 * value. On timeout the error shows the last value seen.
 */
export async function waitUntil(what, probe, check, { ms = WAIT_MS, intervalMs = 50 } = {}) {
  const deadline = Date.now() + ms;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await probe();
      lastError = undefined;
      if (check(last)) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const seen = lastError ? `error: ${lastError.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${ms} ms waiting for ${what} (${seen})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Records every event a socket receives, in order, and lets a test wait for
 * the n-th occurrence of an event. Works for both client versions (2.x has no
 * onAny, so the events of interest are named up front).
 */
export class EventLog {
  constructor(socket, events) {
    this.entries = []; // { event, args }
    this.waiters = new Set();
    for (const event of events) {
      socket.on(event, (...args) => this.#push(event, args));
    }
  }

  #push(event, args) {
    this.entries.push({ event, args });
    for (const w of [...this.waiters]) w();
  }

  /** All recorded entries for `event` (or all entries when omitted). */
  of(event) {
    return event === undefined ? this.entries : this.entries.filter((e) => e.event === event);
  }

  /** Resolve with the args of the `n`-th (1-based) `event` received. */
  nth(event, n, ms = WAIT_MS) {
    return withDeadline(`"${event}" #${n} (got ${this.of(event).length})`, ms, (resolve, _reject, onCleanup) => {
      const check = () => {
        const list = this.of(event);
        if (list.length >= n) resolve(list[n - 1].args);
      };
      this.waiters.add(check);
      onCleanup(() => this.waiters.delete(check));
      check();
    });
  }
}

// ---------------------------------------------------------------------------
// Connecting

const COMMON = { forceNew: true, reconnection: false, timeout: WAIT_MS };

/**
 * The two client versions, with how each passes credentials and reports a
 * refused connection.
 *
 * credentials(kind, value): kind is "token" or "userId"; value null omits it.
 */
export const CLIENTS = {
  v4: {
    label: "socket.io-client 4.x",
    eio: "4",
    make(url, creds, opts) {
      return ioV4(url, { ...COMMON, ...(creds ? { auth: creds } : {}), ...opts });
    },
    // A refused namespace connect is `connect_error` with an Error.
    refusalEvents: ["connect_error"],
    refusalMessage: (err) => (err instanceof Error ? err.message : err),
    close(socket) {
      socket.disconnect();
      socket.io.engine?.close();
    },
  },
  v2: {
    label: "socket.io-client 2.3.0",
    eio: "3",
    make(url, creds, opts) {
      return ioV2(url, { ...COMMON, ...(creds ? { query: creds } : {}), ...opts });
    },
    // A refused namespace connect is `error` carrying the server's data;
    // transport-level failures are `connect_error`.
    refusalEvents: ["error", "connect_error"],
    refusalMessage: (err) => err,
    close(socket) {
      socket.close();
      socket.io.engine?.close();
    },
  },
};

/**
 * Keeps track of every socket a test opens so that they can all be closed
 * afterwards, whatever happened.
 */
export class ClientPool {
  constructor() {
    this.sockets = new Map(); // socket -> client
  }

  /**
   * Open a socket and wait for the outcome. Resolves with
   * `{ socket, connected: true }` or `{ socket, connected: false, event, error, message }`.
   */
  attempt(version, url, creds, opts = {}, ms = WAIT_MS) {
    const client = CLIENTS[version];
    const socket = client.make(url, creds, opts);
    this.sockets.set(socket, client);
    return withDeadline(`${client.label} connect outcome`, ms, (resolve, _reject, onCleanup) => {
      const onConnect = () => resolve({ socket, connected: true });
      socket.on("connect", onConnect);
      onCleanup(() => socket.off("connect", onConnect));
      for (const event of client.refusalEvents) {
        const handler = (error) =>
          resolve({ socket, connected: false, event, error, message: client.refusalMessage(error) });
        socket.on(event, handler);
        onCleanup(() => socket.off(event, handler));
      }
    });
  }

  /**
   * Create a socket without waiting, so that listeners can be attached before any
   * packet arrives (as applications do); it is closed by closeAll().
   */
  open(version, url, creds, opts = {}) {
    const client = CLIENTS[version];
    const socket = client.make(url, creds, opts);
    this.sockets.set(socket, client);
    return socket;
  }

  /** Open a socket that must connect; resolves with the socket. */
  async connect(version, url, creds, opts = {}, ms = WAIT_MS) {
    const res = await this.attempt(version, url, creds, opts, ms);
    if (!res.connected) {
      throw new Error(
        `${CLIENTS[version].label} was refused (${res.event}): ${describeError(res.error)}`,
      );
    }
    return res.socket;
  }

  /** Disconnect one socket (and its manager). */
  close(socket) {
    const client = this.sockets.get(socket);
    if (!client) return;
    this.sockets.delete(socket);
    try {
      client.close(socket);
    } catch {
      // best effort
    }
  }

  closeAll() {
    for (const socket of [...this.sockets.keys()]) this.close(socket);
  }
}

export function describeError(err) {
  if (err instanceof Error) {
    const data = err.data !== undefined ? ` data=${JSON.stringify(err.data)}` : "";
    return `Error(${JSON.stringify(err.message)})${data}`;
  }
  return JSON.stringify(err);
}

/**
 * Resolve with `handler(...args)` of the next `event` on `emitter` (default:
 * the argument list); reject after `ms`. Register before triggering it.
 */
export function waitFor(emitter, event, handler = (...args) => args, ms = WAIT_MS) {
  return withDeadline(`"${event}"`, ms, (resolve, _reject, onCleanup) => {
    const fn = (...args) => resolve(handler(...args));
    emitter.on(event, fn);
    onCleanup(() => emitter.off(event, fn));
  });
}
