import type { ManagerOptions, Socket, SocketOptions } from "socket.io-client";

/** A message as handed to `message` listeners. */
export interface HeraldMessage<T = unknown> {
  /** The event name it was pushed with. */
  event: string;
  /** The pushed data. */
  data: T;
  /** The message id (absent on events that carry no herald metadata). */
  id?: string;
  /** The user's sequence number: set for stored messages, absent for volatile ones and broadcasts. */
  seq?: number;
  /** When herald accepted it, in ms since the epoch. */
  ts?: number;
}

/** Where the user's inbox stands. */
export interface UnreadState {
  /** Stored messages after `readUpTo`. */
  unread: number;
  /** The user's last seq. */
  lastSeq: number;
  /** The read position shared by all the user's devices. */
  readUpTo: number;
}

/** The server's inbox ended before the client's position (its store was replaced). */
export interface ResetInfo {
  /** The position the client held (now 0). */
  storedSeq: number;
  /** The server's last seq. */
  lastSeq: number;
}

/**
 * Where positions are kept: localStorage, or anything with its two methods. Either may
 * return a promise.
 */
export interface HeraldStorage {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface HeraldClientOptions {
  /**
   * The JWT, or a function that gives one (or a promise of one). The function is called
   * before every connect attempt (the first, each reconnect, each retry after herald
   * refused a token); cache in it if fetching a token is expensive.
   */
  token?: TokenSource;
  /**
   * The user; defaults to the token's `sub`. Without `token` it is sent as `userId`
   * (herald in development mode).
   */
  userId?: string;
  /** A stable id of this installation or tab, 1 to 128 bytes of UTF-8. */
  deviceId?: string;
  /** Default: the page's localStorage in a browser, a memory storage shared by the process in Node. */
  storage?: HeraldStorage;
  /** First part of the storage keys (default "herald"); give each herald deployment its own. */
  storagePrefix?: string;
  /**
   * Where to start when nothing is stored for this user and device: a seq (default 0:
   * every message herald still stores), or null to let herald decide (with a deviceId, after
   * that device's acknowledged position; a new device, or none, starts with live messages).
   */
  since?: number | null;
  /**
   * When a `message` listener throws or rejects on a stored message: "retry" (default)
   * leaves it unacknowledged and reconnects after a backoff delay to get it again;
   * "skip" counts it as handled.
   */
  handlerErrors?: "retry" | "skip";
  /** First reconnect delay after a refusal or a failed handler (default 1000 ms). */
  reconnectDelayMs?: number;
  /** Longest reconnect delay (default 30000 ms). */
  reconnectDelayMaxMs?: number;
  /** How long read() waits for herald's answer (default 10000 ms). */
  readTimeoutMs?: number;
  /** Connect at once (default true); else call connect(). */
  autoConnect?: boolean;
  /** Passed to socket.io-client's io() (`auth` and `autoConnect` are the client's own). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

export type HeraldErrorCode =
  | "unauthorized"
  | "refused"
  | "connect_failed"
  | "token"
  | "handler"
  | "listener"
  | "storage"
  | "read"
  | "not_connected"
  | "closed";

export class HeraldError extends Error {
  constructor(code: HeraldErrorCode, message: string, extra?: { cause?: unknown; seq?: number });
  readonly code: HeraldErrorCode;
  /** For `handler` errors on stored messages: the message's seq. */
  readonly seq?: number;
  readonly cause?: unknown;
}

export interface HeraldClientEvents {
  message: (message: HeraldMessage) => void | Promise<unknown>;
  unread: (state: UnreadState) => void;
  reset: (info: ResetInfo) => void;
  error: (error: HeraldError) => void;
  connect: () => void;
  disconnect: (reason: Socket.DisconnectReason, details?: unknown) => void;
}

export class HeraldClient {
  constructor(url: string, options: HeraldClientOptions);

  /** The socket.io-client socket underneath. */
  readonly socket: Socket;
  /** The last stored seq handled and persisted (0 before any). */
  readonly lastSeq: number;
  readonly connected: boolean;
  readonly closed: boolean;
  /** `userId`, or the token's `sub` (undefined until known when the token is a function). */
  readonly userId: string | undefined;
  /** The inbox state as last known; null before the first `inbox` of a connection. */
  readonly inbox: UnreadState | null;

  on<E extends keyof HeraldClientEvents>(event: E, listener: HeraldClientEvents[E]): this;
  once<E extends keyof HeraldClientEvents>(event: E, listener: HeraldClientEvents[E]): this;
  off<E extends keyof HeraldClientEvents>(event: E, listener?: HeraldClientEvents[E]): this;
  listeners<E extends keyof HeraldClientEvents>(event: E): HeraldClientEvents[E][];
  listenerCount(event: keyof HeraldClientEvents): number;

  /** Starts connecting (done by the constructor unless `autoConnect: false`). */
  connect(): this;
  /** Marks everything up to `seq` read; resolves with the stored position. */
  read(seq: number): Promise<number>;
  /** Disconnects for good; resolves once the message being handled is done. */
  close(): Promise<void>;
}

/** A storage in memory. */
export class MemoryStorage implements HeraldStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  clear(): void;
  readonly length: number;
  key(index: number): string | null;
}

/** The storage key of a user's position on a device. */
export function positionKey(userId: string, deviceId?: string, prefix?: string): string;

/** The reconnect delay of attempt `attempt` (exponential with jitter). */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;

/** A JWT's claims, read without verifying; undefined when it is not a JWT. */
export function tokenClaims(token: string): Record<string, unknown> | undefined;

/** A JWT's `sub`, read without verifying. */
export function tokenSubject(token: string): string | undefined;
