import { io } from "socket.io-client";

import { backoffDelay } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { UnreadCounter } from "./unread.js";
import { isWhole, validate } from "./options.js";
import { defaultStorage, parsePosition, positionKey } from "./storage.js";
import { tokenSubject } from "./token.js";

/** Events herald sends for itself; never handed to `message` listeners. */
const HERALD_EVENTS = new Set(["inbox", "read"]);

/**
 * A herald connection that hands the application every stored message once, in seq
 * order, across reconnects, server restarts, token refreshes and page reloads.
 *
 * Events: `message`, `unread`, `reset`, `error`, `connect`, `disconnect`. See the
 * README for the guarantees and the policies (handler errors, resets, `read()`).
 */
export class HeraldClient extends Emitter {
  /** The socket.io-client socket underneath (its `auth` belongs to the client). */
  socket;

  /** The options as validated, defaults filled in. */
  #opts;
  #storage;

  // Whose position is loaded, and under which key it is kept. Set by the first
  // handshake (the user is known once the token is), changed when the token's user is.
  #user = undefined;
  #key = undefined;
  /** The load of #user's stored position (resolved once loaded). */
  #loading = null;
  /** The last stored seq processed for #user (loaded from storage, then advanced). */
  #lastSeq = 0;
  /** Whether #lastSeq is a real position (stored, or reached) rather than a default. */
  #hasPosition = false;

  /**
   * Bumped when what is queued or being handled stops counting: the user changed, or
   * the server's inbox was reset. Work tagged with an older epoch is not persisted.
   */
  #epoch = 0;
  /**
   * Counts connections (bumped at each disconnect). A message is acknowledged only on
   * the connection it came on: socket.io-client would write a late ack on the next
   * transport before its CONNECT, and herald (as Socket.IO servers do) ends a session
   * that sends anything before CONNECT. The resumed connection sends the message again
   * and that copy is acknowledged.
   */
  #conn = 0;
  /** Received messages waiting for their turn; handled one at a time, in order. */
  #queue = [];
  /** The loop handling #queue while it runs, so close() can wait for it. */
  #draining = null;

  /** The unread count as herald last said, kept current; null until `inbox`. */
  #inbox = null;

  /** Whether `connect` was emitted and `disconnect` not yet (socket.io-client also
   * reports the end of transports that never connected as a disconnect). */
  #up = false;
  /** Consecutive refused connects, for the backoff delay; reset on connect. */
  #attempt = 0;
  /** Consecutive handler failures, for the retry delay; reset when one succeeds. */
  #failures = 0;
  /** The pending reconnect, if any. */
  #timer = null;
  #closed = false;

  /**
   * @param {string} url the herald server, e.g. `https://push.example.com`
   * @param {object} options see the README and types/index.d.ts
   */
  constructor(url, options = {}) {
    super();
    if (typeof url !== "string" || url === "") throw new TypeError("HeraldClient: url must be a string");
    this.#opts = validate(options);
    this.#storage = this.#opts.storage ?? defaultStorage();

    const { reconnectDelayMs, reconnectDelayMaxMs } = this.#opts;
    this.socket = io(url, {
      forceNew: true,
      reconnectionDelay: reconnectDelayMs,
      reconnectionDelayMax: reconnectDelayMaxMs,
      ...this.#opts.socketOptions,
      autoConnect: false,
      auth: (cb) => this.#authenticate(cb),
    });
    this.socket.on("connect", () => this.#onConnect());
    this.socket.on("connect_error", (err) => this.#onConnectError(err));
    this.socket.on("disconnect", (reason, details) => this.#onDisconnect(reason, details));
    this.socket.on("inbox", (state) => this.#onInbox(state));
    this.socket.on("read", (payload) => this.#onRead(payload));
    this.socket.onAny((event, ...args) => this.#onEvent(event, args));

    if (this.#opts.autoConnect) this.connect();
  }

  /** The last stored seq handled for the current user (0 before any); it is written to
   * the storage right after its listeners finish. */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** Whether the socket is connected now. */
  get connected() {
    return this.socket.connected;
  }

  /** The user whose messages this client handles: `userId`, or the token's `sub`. */
  get userId() {
    return this.#user ?? this.#opts.userId ?? tokenSubject(this.#opts.token);
  }

  /** `{unread, lastSeq, readUpTo}` as last known (null before the first `inbox`). */
  get inbox() {
    return this.#inbox?.state() ?? null;
  }

  /** Whether close() was called. */
  get closed() {
    return this.#closed;
  }

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this.#closed) throw new HeraldError("closed", "the client is closed");
    if (!this.socket.active) this.socket.connect();
    return this;
  }

  /**
   * Marks everything up to `seq` read, for all of the user's devices. Resolves with the
   * position herald stored (clamped to the user's last seq, never backwards). Rejects
   * when not connected (nothing is queued), when herald answers with an error, and when
   * no answer comes within `readTimeoutMs`.
   */
  read(seq) {
    if (!isWhole(seq)) {
      return Promise.reject(new TypeError("read(seq): seq must be a whole number from 0 up"));
    }
    if (this.#closed) return Promise.reject(new HeraldError("closed", "the client is closed"));
    if (!this.socket.connected) {
      return Promise.reject(new HeraldError("not_connected", "not connected; read again once connected"));
    }
    return new Promise((resolve, reject) => {
      this.socket.timeout(this.#opts.readTimeoutMs).emit("read", { upTo: seq }, (err, answer) => {
        if (err) {
          reject(new HeraldError("read", `read got no answer: ${err.message ?? err}`, { cause: err }));
        } else if (answer && typeof answer === "object" && answer.error !== undefined) {
          reject(new HeraldError("read", `read refused: ${answer.error}`));
        } else if (!answer || !isWhole(answer.upTo)) {
          reject(new HeraldError("read", `read got an unexpected answer: ${JSON.stringify(answer)}`));
        } else {
          this.#readUpTo(answer.upTo, true);
          resolve(answer.upTo);
        }
      });
    });
  }

  /**
   * Disconnects for good. Resolves once the message being handled, if any, is done and
   * its seq persisted; messages received but not yet handled are not acknowledged and
   * come again on the next connect.
   */
  close() {
    if (!this.#closed) {
      this.#closed = true;
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#queue.length = 0;
      this.socket.disconnect();
    }
    return this.#draining ?? Promise.resolve();
  }

  // ---------------------------------------------------------------------------
  // Connecting

  /**
   * socket.io-client asks for the CONNECT payload on every (re)connect. The token may
   * have to be fetched, and the user's stored position read, so this is async; a stale
   * answer (the transport reopened meanwhile, or the client closed) is not sent.
   */
  #authenticate(cb) {
    const engine = this.socket.io.engine;
    this.#handshake().then((payload) => {
      if (this.#closed || this.socket.io.engine !== engine) return;
      cb(payload);
    });
  }

  /** The CONNECT payload: credentials, device and where to resume. Never rejects. */
  async #handshake() {
    const payload = {};
    let token;
    let user = this.#opts.userId;
    if (this.#opts.token !== undefined) {
      try {
        token = await this.#currentToken();
      } catch (err) {
        // Connect without a token: herald refuses it, and the refusal takes the one
        // path that fetches again after a backoff delay.
        this.#report(new HeraldError("token", `the token function failed: ${err?.message ?? err}`, { cause: err }));
        return payload;
      }
      payload.token = token;
      if (user === undefined) user = tokenSubject(token);
      if (user === undefined) {
        this.#report(new HeraldError("token", "cannot tell the user from the token (no `sub`): pass `userId`"));
        return {};
      }
    } else {
      payload.userId = user;
    }
    await this.#useUser(user);
    if (this.#opts.deviceId !== undefined) payload.deviceId = this.#opts.deviceId;
    const since = this.#hasPosition ? this.#lastSeq : this.#opts.since;
    if (since !== null) payload.since = since;
    return payload;
  }

  /**
   * The token to send: the fixed one, or what the token function gives now. The function
   * is asked before every connect attempt, so a refreshed token, or another user's after
   * a sign-in, is used at once; one that fetches over the network should cache.
   */
  async #currentToken() {
    const source = this.#opts.token;
    if (typeof source === "string") return source;
    const token = await source();
    if (typeof token !== "string" || token === "") {
      throw new TypeError(`the token function returned ${token === "" ? "an empty string" : typeof token}, not a token`);
    }
    return token;
  }

  /**
   * Makes `user` the current one and resolves once their stored position is loaded. A
   * handshake that comes while it loads waits for the same load, so it never resumes
   * from a default position (and gets duplicates it could not recognise).
   */
  #useUser(user) {
    if (user !== this.#user || this.#loading === null) this.#loading = this.#load(user);
    return this.#loading;
  }

  async #load(user) {
    this.#epoch++;
    this.#queue.length = 0;
    this.#inbox = null;
    this.#user = user;
    const key = positionKey(user, this.#opts.deviceId, this.#opts.storagePrefix);
    this.#key = key;
    this.#lastSeq = 0;
    this.#hasPosition = false;
    let raw;
    try {
      raw = await this.#storage.getItem(key);
    } catch (err) {
      this.#report(new HeraldError("storage", `cannot read ${key}: ${err?.message ?? err}`, { cause: err }));
    }
    const stored = parsePosition(raw);
    // Nothing may have moved the position meanwhile (another user, a reset).
    if (this.#key === key && stored !== undefined && !this.#hasPosition) {
      this.#lastSeq = stored;
      this.#hasPosition = true;
    }
  }

  #onConnect() {
    this.#attempt = 0;
    this.#up = true;
    this.#emit("connect");
  }

  #onConnectError(err) {
    if (this.#closed) return;
    const message = err?.message ?? String(err);
    if (this.socket.active) {
      // The transport failed; socket.io-client tries again by itself.
      this.#report(new HeraldError("connect_failed", `cannot reach the server: ${message}`, { cause: err }));
      return;
    }
    // herald refused the CONNECT. socket.io-client gives up on such a socket; connect
    // again after a growing delay (asking the token function again).
    const unauthorized = message.startsWith("unauthorized");
    this.#report(new HeraldError(unauthorized ? "unauthorized" : "refused", message, { cause: err }));
    this.#reconnectLater();
  }

  #onDisconnect(reason, details) {
    this.#conn++;
    if (this.#up) {
      this.#up = false;
      this.#emit("disconnect", reason, details);
    }
    // A server's disconnect is not retried by socket.io-client; transport closes are.
    // "io client disconnect" is this client's own doing: close(), or a reconnect it
    // schedules itself.
    if (reason === "io server disconnect" && !this.#closed) this.#reconnectLater();
  }

  /** Connects again after the backoff delay of the next attempt. */
  #reconnectLater(delay = backoffDelay(this.#attempt++, this.#opts.reconnectDelayMs, this.#opts.reconnectDelayMaxMs)) {
    if (this.#closed || this.#timer !== null) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (!this.#closed && !this.socket.active) this.socket.connect();
    }, delay);
  }

  // ---------------------------------------------------------------------------
  // Inbox state

  #onInbox(state) {
    if (!UnreadCounter.valid(state)) return;
    if (state.lastSeq < this.#lastSeq) {
      this.#reset(state.lastSeq);
      return;
    }
    this.#inbox = new UnreadCounter(state);
    this.#emitUnread();
  }

  /**
   * The server's inbox ends before the position this client holds: its store was
   * replaced or wiped. Its seqs start again, so the position goes back to 0 and the
   * client resumes from there: whatever the server holds now is delivered, nothing is
   * taken for a duplicate.
   */
  #reset(serverLastSeq) {
    const storedSeq = this.#lastSeq;
    this.#epoch++;
    this.#queue.length = 0;
    this.#inbox = null;
    this.#lastSeq = 0;
    this.#hasPosition = true;
    this.#persist(this.#key, 0);
    this.#emit("reset", { storedSeq, lastSeq: serverLastSeq });
    if (this.#closed) return;
    // The connection resumed after storedSeq, so it replays nothing; connect again.
    this.socket.disconnect();
    this.socket.connect();
  }

  #onRead(payload) {
    if (payload && isWhole(payload.upTo)) this.#readUpTo(payload.upTo, false);
  }

  /** A read position from herald; `always`: tell listeners even if nothing changed. */
  #readUpTo(upTo, always) {
    if (this.#inbox && (this.#inbox.read(upTo) || always)) this.#emitUnread();
  }

  /** A stored message was handled: a new one (beyond the inbox's lastSeq) is unread. */
  #noteStored(seq) {
    if (this.#inbox?.stored(seq)) this.#emitUnread();
  }

  #emitUnread() {
    this.#emit("unread", this.#inbox.state());
  }

  // ---------------------------------------------------------------------------
  // Messages

  #onEvent(event, args) {
    if (HERALD_EVENTS.has(event) || this.#closed) return;
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
    const [data, meta] = args;
    const m = meta !== null && typeof meta === "object" && !Array.isArray(meta) ? meta : undefined;
    const seq = m && Number.isSafeInteger(m.seq) && m.seq > 0 ? m.seq : undefined;
    this.#queue.push({ epoch: this.#epoch, conn: this.#conn, event, data, id: m?.id, seq, ts: m?.ts, ack });
    this.#drain();
  }

  /** Handles the queue one message at a time, until it is empty. */
  #drain() {
    if (this.#draining) return;
    const run = async () => {
      while (this.#queue.length > 0 && !this.#closed) {
        await this.#process(this.#queue.shift());
      }
    };
    this.#draining = run().finally(() => {
      this.#draining = null;
      // Something may have arrived after the loop's last check.
      if (this.#queue.length > 0 && !this.#closed) this.#drain();
    });
  }

  async #process(item) {
    if (item.epoch !== this.#epoch) return;
    const message = { event: item.event, data: item.data, id: item.id, seq: item.seq, ts: item.ts };
    if (item.seq === undefined) {
      // Volatile or broadcast: live only, nothing to resume, nothing to deduplicate.
      const failure = await this.#dispatch(message);
      if (failure !== undefined) this.#handlerFailed(item, failure);
      this.#ack(item);
      return;
    }
    if (item.seq <= this.#lastSeq) {
      // Seen already (a resume from an older position): handled before, so acknowledged.
      this.#ack(item);
      return;
    }
    const failure = await this.#dispatch(message);
    if (item.epoch !== this.#epoch) return;
    if (failure !== undefined) {
      this.#handlerFailed(item, failure);
      if (this.#opts.handlerErrors === "retry") {
        this.#retryLater();
        return;
      }
    } else {
      this.#failures = 0;
    }
    this.#lastSeq = item.seq;
    this.#hasPosition = true;
    // Persisted before the ack: a crash between the two costs an ack (the server's
    // delivered mark), not a message handled twice.
    await this.#persist(this.#key, item.seq);
    this.#ack(item);
    if (item.epoch === this.#epoch) this.#noteStored(item.seq);
  }

  /** Acknowledges a message if the connection it came on is still up. */
  #ack(item) {
    if (item.ack && item.conn === this.#conn && this.socket.connected) item.ack();
  }

  /**
   * Calls every `message` listener and waits for all of them. Resolves with the first
   * failure (a throw or a rejection), or undefined when all succeeded.
   */
  async #dispatch(message) {
    const pending = [];
    for (const listener of this.listeners("message")) {
      try {
        pending.push(listener.call(this, message));
      } catch (err) {
        pending.push(Promise.reject(err));
      }
    }
    const results = await Promise.allSettled(pending);
    const failed = results.find((r) => r.status === "rejected");
    return failed === undefined ? undefined : failed.reason ?? new Error("a message listener rejected");
  }

  #handlerFailed(item, cause) {
    const where = item.seq === undefined ? `"${item.event}"` : `"${item.event}" seq ${item.seq}`;
    const detail = cause instanceof Error ? cause.message : String(cause);
    this.#report(new HeraldError("handler", `a message listener failed on ${where}: ${detail}`, { cause, seq: item.seq }));
  }

  /**
   * A stored message could not be handled. It is not acknowledged and the position
   * stays before it; what came after it on this connection is dropped, and the client
   * reconnects after a growing delay, resuming from the position: the failed message is
   * handed to the listeners again, then the rest in order.
   */
  #retryLater() {
    this.#queue.length = 0;
    this.#epoch++;
    const delay = backoffDelay(this.#failures++, this.#opts.reconnectDelayMs, this.#opts.reconnectDelayMaxMs);
    this.socket.disconnect();
    this.#reconnectLater(delay);
  }

  /** Writes a position; a failure is reported, the position in memory stands. */
  async #persist(key, seq) {
    if (key === undefined) return;
    try {
      await this.#storage.setItem(key, String(seq));
    } catch (err) {
      this.#report(new HeraldError("storage", `cannot write ${key}: ${err?.message ?? err}`, { cause: err }));
    }
  }

  // ---------------------------------------------------------------------------
  // Events out

  /** Calls an event's listeners; one that throws is reported, not propagated. */
  #emit(event, ...args) {
    for (const listener of this.listeners(event)) {
      try {
        const result = listener.apply(this, args);
        if (result && typeof result.then === "function") {
          result.then(undefined, (err) => this.#listenerFailed(event, err));
        }
      } catch (err) {
        this.#listenerFailed(event, err);
      }
    }
  }

  #listenerFailed(event, err) {
    if (event === "error") {
      console.error("herald-client: an error listener failed:", err);
      return;
    }
    this.#report(new HeraldError("listener", `a "${event}" listener failed: ${err?.message ?? err}`, { cause: err }));
  }

  /** Emits `error`; without an error listener it goes to the console. */
  #report(err) {
    if (this.listenerCount("error") === 0) {
      console.error("herald-client:", err);
      return;
    }
    this.#emit("error", err);
  }
}
