// A herald binary ($HERALD_BIN) for the client's tests, built on the end-to-end tests'
// helpers (tests/e2e/lib/herald.js). Adds what those do not keep: a data directory and
// a port that outlive one process, so a test can stop the server and start it again
// where clients expect it, with its stored messages.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { describeResponse, jwt, startHerald } from "../../../../tests/e2e/lib/herald.js";

export { jwt };

/** The API key every test server accepts. */
export const API_KEY = "client-tests-key";
/** The HS256 secret of the test servers that verify tokens. */
export const SECRET = "client-tests-secret";

/** A token for `user`, valid an hour unless said otherwise. */
export const tokenFor = (user, expSecondsFromNow = 3600) => jwt(user, { secret: SECRET, expSecondsFromNow });

/**
 * A herald server that can be restarted on the same port and data directory.
 *
 *   const h = await Herald.start({ auth: { on_expiry: "disconnect" } });
 *   await h.push("alice", { n: 1 });
 *   await h.restart();
 *   await h.destroy();
 */
export class Herald {
  /**
   * @param {object} [opts]
   * @param {boolean} [opts.devAuth] development mode (clients give `userId`) instead of JWTs
   * @param {object} [opts.auth] more `[auth]` settings (JWT mode)
   * @param {object} [opts.transport] `[transport]` settings
   */
  static async start(opts = {}) {
    const h = new Herald(opts);
    await h.start();
    return h;
  }

  constructor({ devAuth = false, auth = {}, transport = {} } = {}) {
    this.devAuth = devAuth;
    this.config = { api: { keys: [API_KEY] } };
    if (!devAuth) this.config.auth = { jwt_secret: SECRET, ...auth };
    if (Object.keys(transport).length > 0) this.config.transport = transport;
    this.dataDir = mkdtempSync(join(tmpdir(), "herald-client-data-"));
    this.port = 0;
    this.server = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the process (on the port of the last one, once there was one). */
  async start() {
    assert.equal(this.server, null, "herald is already running");
    this.server = await startHerald({
      listen: `127.0.0.1:${this.port}`,
      devAuth: this.devAuth,
      config: this.config,
      args: ["--data-dir", this.dataDir],
    });
    this.port = this.server.port;
  }

  /** Stops the process; throws if it had exited by itself. */
  async stop() {
    const server = this.server;
    if (!server) return;
    this.server = null;
    const crashed = server.exited();
    await server.stop();
    if (crashed) throw new Error(`herald exited during the test\n${server.logs()}`);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** Starts again on the same port with an empty store, as a replaced server would be. */
  async replaceStore() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
    this.dataDir = mkdtempSync(join(tmpdir(), "herald-client-data-"));
    await this.start();
  }

  async destroy() {
    try {
      await this.stop();
    } finally {
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  /** An API call that must answer 200; resolves with the JSON body. */
  async call(method, path, body) {
    assert.ok(this.server, "herald is not running");
    const res = await this.server.api(method, path, body, API_KEY);
    assert.equal(res.status, 200, describeResponse(method, path, res));
    return res.json;
  }

  /** A durable push of `note` to one user; resolves with {id, ts, seq}. */
  async push(user, data, { event = "note" } = {}) {
    const res = await this.call("POST", "/api/v1/push", { to: { users: [user] }, event, data });
    return { id: res.id, ts: res.ts, seq: res.seqs[user] };
  }

  /** A volatile push (live only, no seq). */
  pushVolatile(user, data, { event = "note" } = {}) {
    return this.call("POST", "/api/v1/push", { to: { users: [user] }, event, data, volatile: true });
  }

  unread(user) {
    return this.call("GET", `/api/v1/users/${encodeURIComponent(user)}/unread`);
  }

  message(id) {
    return this.call("GET", `/api/v1/messages/${encodeURIComponent(id)}`);
  }
}
