/**
 * What the client reports through its `error` event and the rejections of `read()`.
 * `code` says which kind it is, so an application can react without parsing messages:
 *
 * - `unauthorized`: herald refused the credentials (`unauthorized: …`); the client fetches
 *   a new token and connects again after a backoff delay.
 * - `refused`: herald refused the connection for another reason (the message says which);
 *   the client connects again after a backoff delay.
 * - `connect_failed`: the server could not be reached; socket.io-client tries again.
 * - `token`: the token function threw, rejected or returned no usable token, or the user
 *   cannot be told from the token (pass `userId`).
 * - `handler`: a `message` listener threw or rejected (`seq` names the stored message).
 * - `listener`: a listener of another event threw.
 * - `storage`: the storage could not be read or written.
 * - `read`: herald answered `read` with an error, or did not answer in time.
 * - `not_connected`, `closed`: `read()` was called while disconnected, or after `close()`.
 */
export class HeraldError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{cause?: unknown, seq?: number}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause !== undefined ? { cause: extra.cause } : undefined);
    this.name = "HeraldError";
    this.code = code;
    if (extra.cause !== undefined && this.cause === undefined) this.cause = extra.cause;
    if (extra.seq !== undefined) this.seq = extra.seq;
  }
}
