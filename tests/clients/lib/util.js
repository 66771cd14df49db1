// Helpers shared by the client test files. They work with both the 4.x and the
// 2.x client (both expose on/off/once/emit emitters).

import assert from "node:assert/strict";

/** Default deadline for any single wait. */
export const WAIT_MS = Number(process.env.HERALD_TEST_WAIT_MS || 5_000);

/** Options that keep automatic reconnection quick. */
export const FAST_RECONNECT = {
  reconnectionDelay: 50,
  reconnectionDelayMax: 200,
  randomizationFactor: 0,
};

/**
 * Transport modes exercised for every client version. `upgrade` starts with
 * HTTP long-polling and is expected to upgrade to WebSocket.
 */
export const MODES = [
  { name: "websocket", opts: { transports: ["websocket"] }, first: "websocket" },
  { name: "polling", opts: { transports: ["polling"] }, first: "polling" },
  { name: "upgrade", opts: {}, first: "polling" },
];

// Cleanup functions of every wait still in flight; see cancelPendingWaits().
const pending = new Set();

/**
 * A promise that must settle within `ms`, or it rejects with a message naming
 * `what`. `executor(resolve, reject, onCleanup)` works like a Promise executor;
 * functions passed to onCleanup run once the promise settles or is cancelled
 * (use them to detach listeners).
 */
export function withDeadline(what, ms, executor) {
  const promise = new Promise((resolve, reject) => {
    const cleanups = [];
    let settled = false;
    const done = () => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      pending.delete(done);
      for (const fn of cleanups) fn();
      return true;
    };
    const timer = setTimeout(() => {
      if (done()) reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    pending.add(done);
    executor(
      (value) => done() && resolve(value),
      (err) => done() && reject(err),
      (fn) => cleanups.push(fn),
    );
  });
  // Tests often set up several waits before awaiting them one by one; if an
  // earlier one fails, the later ones must not surface as unhandled
  // rejections. Awaiting the returned promise still sees the rejection.
  promise.catch(() => {});
  return promise;
}

/**
 * Abandon every wait still in flight: timers are cleared and listeners
 * detached, and the promises never settle. Called after each test so that a
 * failed test cannot leave timers behind that fire during a later one.
 */
export function cancelPendingWaits() {
  for (const done of [...pending]) done();
}

/**
 * Resolve with the arguments of the next `event` on `emitter`; reject after
 * `ms`. Register it *before* triggering whatever causes the event.
 */
export function waitFor(emitter, event, ms = WAIT_MS, what = `"${event}"`) {
  return withDeadline(what, ms, (resolve, _reject, onCleanup) => {
    const handler = (...args) => resolve(args);
    emitter.on(event, handler);
    onCleanup(() => emitter.off(event, handler));
  });
}

/** Like waitFor, but resolves with the first argument only. */
export function waitFor1(emitter, event, ms = WAIT_MS, what = undefined) {
  const promise = waitFor(emitter, event, ms, what).then((args) => args[0]);
  promise.catch(() => {});
  return promise;
}

/**
 * Emit `event` with `args` and an acknowledgement callback; resolve with the
 * full list of values the server acknowledged with.
 */
export function emitWithAck(socket, event, args, ms = WAIT_MS) {
  return withDeadline(`ack for "${event}"`, ms, (resolve) => {
    socket.emit(event, ...args, (...reply) => resolve(reply));
  });
}

/**
 * Resolve after `ms` unless `event` fires first, in which case reject. Used to
 * check that something does NOT happen (e.g. no automatic reconnection).
 */
export function expectNo(emitter, event, ms) {
  const promise = new Promise((resolve, reject) => {
    let finished = false;
    const finish = () => {
      if (finished) return false;
      finished = true;
      clearTimeout(timer);
      emitter.off(event, handler);
      pending.delete(finish);
      return true;
    };
    const handler = () => finish() && reject(new Error(`unexpected "${event}"`));
    const timer = setTimeout(() => finish() && resolve(), ms);
    pending.add(finish);
    emitter.on(event, handler);
  });
  promise.catch(() => {});
  return promise;
}

/**
 * Recursively turn every binary value (Buffer, ArrayBuffer, typed array) into
 * a Buffer, so that payloads can be compared with deepStrictEqual regardless
 * of which binary type a client version hands out.
 */
export function normalize(value) {
  if (Buffer.isBuffer(value)) return Buffer.from(value);
  if (value instanceof ArrayBuffer) return Buffer.from(value);
  if (ArrayBuffer.isView(value)) {
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  }
  if (Array.isArray(value)) return value.map(normalize);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = normalize(v);
    return out;
  }
  return value;
}

/** Assert that `actual` (as received) equals `expected`, binary-agnostic. */
export function assertSamePayload(actual, expected, message) {
  assert.deepStrictEqual(normalize(actual), normalize(expected), message);
}

/** Assert that a received value really is binary, not e.g. a JSON object. */
export function assertBinary(value, message = "expected a binary value") {
  assert.ok(
    Buffer.isBuffer(value) || value instanceof ArrayBuffer || ArrayBuffer.isView(value),
    `${message}, got ${typeof value}: ${JSON.stringify(value)?.slice(0, 120)}`,
  );
}

/** A deterministic pseudo-random buffer of `n` bytes. */
export function bytes(n, seed = 1) {
  const buf = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}

/** JSON-only payloads exercised by the echo tests. */
export const JSON_CASES = [
  { name: "numbers", args: [0, 1, -1, 42, 3.5, -0.25, 1e21, Number.MAX_SAFE_INTEGER] },
  { name: "strings", args: ["hello", "with \"quotes\" and \\backslash\\", "line\nbreak\ttab"] },
  { name: "empty string", args: [""] },
  { name: "booleans and null", args: [true, false, null] },
  {
    name: "nested objects and arrays",
    args: [
      { a: 1, b: { c: [1, 2, { d: "e" }], f: null }, g: [] },
      [[], [[1]], { x: {} }],
    ],
  },
  {
    name: "unicode",
    args: [
      "héllo wörld",
      "日本語のテキスト 中文 한국어",
      "emoji 😀🎉👍🏽 and a flag 🇫🇷",
      { "键": "值", "🔑": "🔒" },
      "\u2028\u2029 separators",
    ],
  },
  { name: "no arguments", args: [] },
];
