// End-to-end tests of herald's push path: real socket.io-client 4.x and 2.3.0
// connections authenticated with JWTs, the HTTP push/presence API, and the
// server's refusals (auth, limits, bad requests).
//
// Run with HERALD_BIN pointing at the binary (see run.sh).

import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";

import { describeResponse, jwt, runHerald, startHerald } from "./lib/herald.js";
import {
  CLIENTS,
  ClientPool,
  EventLog,
  WAIT_MS,
  describeError,
  waitFor,
  waitUntil,
} from "./lib/clients.js";

const SECRET = "e2e-secret-0123456789abcdef";
const OTHER_SECRET = "not-the-server-secret-0123456789";
const KEY = "e2e-key-1";
const KEY2 = "e2e-key-2";
const TEST = { timeout: 30_000 };
const VERSIONS = ["v4", "v2"];

// Servers and sockets opened by the current test; torn down after each test.
const pool = new ClientPool();
const servers = new Set();

async function server(opts) {
  const s = await startHerald(opts);
  servers.add(s);
  return s;
}

afterEach(async () => {
  pool.closeAll();
  const crashed = [];
  for (const s of servers) {
    if (s.exited()) crashed.push(s.logs());
    await s.stop();
  }
  servers.clear();
  if (crashed.length) throw new Error(`herald exited during the test\n${crashed.join("\n")}`);
});

// A server with JWT auth and two API keys, configured through the config file.
function jwtServer({ env = {}, config = {} } = {}) {
  return server({
    config: { auth: { jwt_secret: SECRET }, api: { keys: [KEY, KEY2] }, ...config },
    env,
  });
}

const token = (sub, opts = {}) => jwt(sub, { secret: SECRET, ...opts });

async function push(s, body, key = KEY) {
  const res = await s.api("POST", "/api/v1/push", body, key);
  assert.equal(res.status, 200, describeResponse("POST", "/api/v1/push", res));
  assert.equal(typeof res.json?.id, "string", `push response without a string id: ${res.text}`);
  assert.notEqual(res.json.id, "", "push response id is empty");
  return res.json;
}

async function presence(s, user, key = KEY) {
  const path = `/api/v1/users/${encodeURIComponent(user)}/presence`;
  const res = await s.api("GET", path, undefined, key);
  assert.equal(res.status, 200, describeResponse("GET", path, res));
  assert.equal(typeof res.json?.online, "boolean", `presence.online: ${res.text}`);
  assert.equal(typeof res.json?.connections, "number", `presence.connections: ${res.text}`);
  return res.json;
}

function waitPresence(s, user, connections) {
  return waitUntil(
    `presence of ${user} to be ${connections} connection(s)`,
    () => presence(s, user),
    (p) => p.connections === connections && p.online === connections > 0,
  );
}

const pick = ({ online, connections }) => ({ online, connections });

// Checks the (data, meta) arguments a pushed event arrives with.
function assertDelivery(args, data, id, what) {
  assert.ok(args.length >= 1, `${what}: event carried no arguments`);
  assert.deepStrictEqual(args[0], data, `${what}: data`);
  const meta = args[1];
  assert.ok(meta && typeof meta === "object", `${what}: second argument (meta) missing: ${JSON.stringify(args)}`);
  assert.equal(meta.id, id, `${what}: meta.id should be the push response's id`);
  assert.equal(typeof meta.ts, "number", `${what}: meta.ts should be a number: ${JSON.stringify(meta)}`);
  // Milliseconds since the epoch, close to now.
  assert.ok(Math.abs(meta.ts - Date.now()) < 60_000, `${what}: meta.ts ${meta.ts} is not a current time in ms`);
}

// Asserts the `{error: {code, message}}` shape of an API error response.
function assertApiError(res, status, what) {
  const desc = `${what}: ${describeResponse(res.method, res.path, res)}`;
  assert.equal(res.status, status, desc);
  const ct = res.headers.get("content-type") || "";
  assert.match(ct, /^application\/json/, `${desc}\nexpected a JSON content-type`);
  assert.ok(res.json && typeof res.json === "object", `${desc}\nbody is not JSON`);
  const err = res.json.error;
  assert.ok(err && typeof err === "object", `${desc}\nbody has no "error" object`);
  assert.equal(typeof err.code, "string", `${desc}\nerror.code should be a string`);
  assert.notEqual(err.code, "", `${desc}\nerror.code is empty`);
  assert.equal(typeof err.message, "string", `${desc}\nerror.message should be a string`);
}

async function call(s, method, path, body, key) {
  const res = await s.api(method, path, body, key);
  return Object.assign(res, { method, path });
}

// ---------------------------------------------------------------------------

describe("push delivery", () => {
  it("reaches a user's 2.3.0 and 4.x connections; presence follows them", TEST, async () => {
    const s = await jwtServer();
    const user = "alice";
    // 2.3.0 over the default transports (polling, then upgrade); 4.x over WebSocket only.
    const old = await pool.connect("v2", s.url, { token: token(user) });
    const cur = await pool.connect("v4", s.url, { token: token(user) }, { transports: ["websocket"] });
    const oldLog = new EventLog(old, ["news"]);
    const curLog = new EventLog(cur, ["news"]);

    // Pushed right after both clients saw "connect": both must get it.
    const data1 = { title: "first", n: 1, nested: { list: [1, "two", null, true] }, text: "héllo 😀" };
    const r1 = await push(s, { to: { users: [user] }, event: "news", data: data1 });
    assertDelivery(await oldLog.nth("news", 1), data1, r1.id, "2.3.0 connection, push 1");
    assertDelivery(await curLog.nth("news", 1), data1, r1.id, "4.x connection, push 1");
    assert.deepStrictEqual(
      pick(await presence(s, user)),
      { online: true, connections: 2 },
      "presence with both connections open",
    );

    // The 4.x connection leaves; the 2.3.0 one still gets the next push.
    pool.close(cur);
    const p1 = await waitPresence(s, user, 1);
    assert.equal(p1.online, true);

    const data2 = ["second", 2];
    const r2 = await push(s, { to: { users: [user] }, event: "news", data: data2 });
    assert.notEqual(r2.id, r1.id, "two pushes got the same id");
    assertDelivery(await oldLog.nth("news", 2), data2, r2.id, "2.3.0 connection, push 2");
    assert.equal(curLog.of("news").length, 1, "the closed 4.x connection must not get push 2");

    pool.close(old);
    const p0 = await waitPresence(s, user, 0);
    assert.equal(p0.online, false);
    assert.equal(p0.connections, 0);
  });

  it("delivers a one-argument handler the data", TEST, async () => {
    const s = await jwtServer();
    for (const version of VERSIONS) {
      const sock = await pool.connect(version, s.url, { token: token(`one-${version}`) });
      const got = waitFor(sock, "ping-me", (data) => data);
      await push(s, { to: { users: [`one-${version}`] }, event: "ping-me", data: 42 });
      assert.equal(await got, 42);
    }
  });

  it("to all reaches connections of different users", TEST, async () => {
    const s = await jwtServer();
    const socks = [
      await pool.connect("v4", s.url, { token: token("u-a") }),
      await pool.connect("v2", s.url, { token: token("u-b") }),
      await pool.connect("v4", s.url, { token: token("u-c") }, { transports: ["polling"] }),
      await pool.connect("v2", s.url, { token: token("u-c") }, { transports: ["websocket"] }),
    ];
    const logs = socks.map((sock) => new EventLog(sock, ["broadcast"]));
    const data = { all: true, at: "everyone" };
    const r = await push(s, { to: { all: true }, event: "broadcast", data });
    for (const [i, log] of logs.entries()) {
      assertDelivery(await log.nth("broadcast", 1), data, r.id, `connection ${i}`);
    }
  });

  it("a push to several users reaches each of them", TEST, async () => {
    const s = await jwtServer();
    const a = new EventLog(await pool.connect("v4", s.url, { token: token("m-a") }), ["multi"]);
    const b = new EventLog(await pool.connect("v2", s.url, { token: token("m-b") }), ["multi"]);
    const c = new EventLog(await pool.connect("v4", s.url, { token: token("m-c") }), ["multi", "marker"]);
    const r = await push(s, { to: { users: ["m-a", "m-b"] }, event: "multi", data: "x" });
    assertDelivery(await a.nth("multi", 1), "x", r.id, "m-a");
    assertDelivery(await b.nth("multi", 1), "x", r.id, "m-b");
    // m-c was not addressed: the first thing it gets is the later marker push.
    const rm = await push(s, { to: { users: ["m-c"] }, event: "marker", data: 0 });
    await c.nth("marker", 1);
    assert.deepStrictEqual(c.entries.map((e) => e.event), ["marker"]);
    assert.equal(c.entries[0].args[1]?.id, rm.id);
  });
});

// ---------------------------------------------------------------------------

describe("JWT auth", () => {
  let s;
  before(async () => {
    s = await startHerald({ config: { auth: { jwt_secret: SECRET }, api: { keys: [KEY] } } });
  });
  after(async () => {
    const crashed = s?.exited();
    await s?.stop();
    if (crashed) throw new Error(`herald exited during the tests\n${s.logs()}`);
  });

  for (const version of VERSIONS) {
    const label = CLIENTS[version].label;

    it(`${label}: a valid token connects as its sub`, TEST, async () => {
      const user = `valid-${version}`;
      await pool.connect(version, s.url, { token: token(user) });
      await waitPresence(s, user, 1);
    });

    const refusals = [
      ["an expired token", () => ({ token: token(`exp-${version}`, { expSecondsFromNow: -3600 }) })],
      ["a token signed with another secret", () => ({ token: jwt(`sig-${version}`, { secret: OTHER_SECRET }) })],
      ["a token with a tampered payload", () => ({ token: tamper(token(`tamper-${version}`), "mallory") })],
      ["a malformed token", () => ({ token: "not-a-jwt" })],
      ["no token", () => null],
    ];
    for (const [what, creds] of refusals) {
      it(`${label}: ${what} is refused with unauthorized`, TEST, async () => {
        const res = await pool.attempt(version, s.url, creds());
        assert.equal(res.connected, false, `${what} was accepted`);
        assert.equal(
          res.event,
          CLIENTS[version].refusalEvents[0],
          `expected a namespace refusal, got ${res.event}: ${describeError(res.error)}`,
        );
        assert.equal(typeof res.message, "string", `refusal should carry a string message: ${describeError(res.error)}`);
        assert.match(res.message, /^unauthorized/, `refusal message: ${describeError(res.error)}`);
      });
    }
  }
});

// Replace the payload of a signed token, keeping the old signature.
function tamper(tok, sub) {
  const [h, p, sig] = tok.split(".");
  const payload = JSON.parse(Buffer.from(p, "base64url").toString());
  payload.sub = sub;
  return `${h}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}.${sig}`;
}

// ---------------------------------------------------------------------------

describe("dev auth", () => {
  it("refuses a non-loopback listen address", TEST, async () => {
    const res = await runHerald({ listen: "0.0.0.0:0", devAuth: true });
    assert.equal(res.timedOut, false, `herald kept running with --dev-auth on 0.0.0.0\n${res.stdout}\n${res.stderr}`);
    assert.ok(res.code !== 0 && res.code !== null, `expected a non-zero exit code, got code=${res.code} signal=${res.signal}`);
    assert.match(res.stderr, /dev-auth/, `stderr should mention dev-auth:\n${res.stderr}`);
    assert.doesNotMatch(res.stdout, /listening on/, `herald must not listen:\n${res.stdout}`);
  });

  it("takes userId unverified from both clients; API open without keys", TEST, async () => {
    const s = await server({ devAuth: true });
    const a = new EventLog(await pool.connect("v4", s.url, { userId: "dev-1" }), ["dev"]);
    const b = new EventLog(await pool.connect("v2", s.url, { userId: "dev-1" }), ["dev"]);
    const res = await call(s, "GET", "/api/v1/users/dev-1/presence");
    assert.equal(res.status, 200, describeResponse(res.method, res.path, res));
    assert.equal(res.json.connections, 2, res.text);
    const pr = await call(s, "POST", "/api/v1/push", { to: { users: ["dev-1"] }, event: "dev", data: { ok: 1 } });
    assert.equal(pr.status, 200, describeResponse(pr.method, pr.path, pr));
    assertDelivery(await a.nth("dev", 1), { ok: 1 }, pr.json.id, "4.x");
    assertDelivery(await b.nth("dev", 1), { ok: 1 }, pr.json.id, "2.3.0");
  });
});

// ---------------------------------------------------------------------------

describe("HTTP API", () => {
  const good = { to: { users: ["a"] }, event: "e", data: 1 };

  it("refuses a missing or wrong key with 401", TEST, async () => {
    const s = await jwtServer();
    assertApiError(await call(s, "POST", "/api/v1/push", good), 401, "no key");
    assertApiError(await call(s, "POST", "/api/v1/push", good, "wrong-key"), 401, "wrong key");
    assertApiError(await call(s, "GET", "/api/v1/users/a/presence", undefined, "wrong-key"), 401, "presence, wrong key");
    // Both configured keys are accepted.
    for (const key of [KEY, KEY2]) {
      const res = await call(s, "POST", "/api/v1/push", good, key);
      assert.equal(res.status, 200, describeResponse(res.method, res.path, res));
    }
  });

  it("refuses bad push bodies with 400", TEST, async () => {
    const s = await jwtServer();
    const cases = [
      ["malformed JSON", '{"to": {"users": ["a"]}, "event": "e", "data": '],
      ["not JSON at all", "hello"],
      ["an unknown field", { ...good, bogus: 1 }],
      ["missing to", { event: "e", data: 1 }],
      ["missing event", { to: { users: ["a"] }, data: 1 }],
      ["an empty event", { ...good, event: "" }],
      ["a non-string event", { ...good, event: 5 }],
    ];
    for (const [what, body] of cases) {
      assertApiError(await call(s, "POST", "/api/v1/push", body, KEY), 400, what);
    }
  });

  it("refuses a body over max_body_bytes with 413", TEST, async () => {
    const s = await jwtServer({ env: { HERALD_API_MAX_BODY_BYTES: "1024" } });
    const big = { ...good, data: "x".repeat(2048) };
    assertApiError(await call(s, "POST", "/api/v1/push", big, KEY), 413, "2 KB body with a 1 KB limit");
    // Below the limit is fine.
    const small = await call(s, "POST", "/api/v1/push", { ...good, data: "x".repeat(700) }, KEY);
    assert.equal(small.status, 200, describeResponse(small.method, small.path, small));
  });

  it("answers unknown paths under /api/v1 with 404", TEST, async () => {
    const s = await jwtServer();
    assertApiError(await call(s, "GET", "/api/v1/nope", undefined, KEY), 404, "unknown path");
    assertApiError(await call(s, "POST", "/api/v1/pushes", good, KEY), 404, "unknown path (POST)");
  });

  it("answers a wrong method under /api/v1 with 405 and the error shape", TEST, async () => {
    const s = await jwtServer();
    assertApiError(await call(s, "GET", "/api/v1/push", undefined, KEY), 405, "GET on the push endpoint");
    assertApiError(await call(s, "POST", "/api/v1/users/a/presence", {}, KEY), 405, "POST on presence");
  });

  it("accepts the optional volatile and idempotencyKey fields", TEST, async () => {
    const s = await jwtServer();
    const log = new EventLog(await pool.connect("v4", s.url, { token: token("opt") }), ["opt"]);
    // A volatile push may be dropped by design; only its acceptance is checked.
    await push(s, { to: { users: ["opt"] }, event: "opt", data: "v", volatile: true });
    const r = await push(s, { to: { users: ["opt"] }, event: "opt", data: "i", idempotencyKey: "opt-key-1" });
    const got = await waitUntil("the idempotencyKey push", () => log.of("opt"), (l) => l.some((e) => e.args[0] === "i"));
    assertDelivery(got.find((e) => e.args[0] === "i").args, "i", r.id, "push with idempotencyKey");
  });

  it("a push to an unknown user answers 200 and reaches nobody", TEST, async () => {
    const s = await jwtServer();
    const sock = await pool.connect("v4", s.url, { token: token("known") });
    const received = [];
    // Everything but herald's own `inbox` state at connect.
    sock.onAny((event, ...args) => event !== "inbox" && received.push({ event, args }));
    const r1 = await push(s, { to: { users: ["nobody-here"] }, event: "probe", data: "for nobody" });
    const r2 = await push(s, { to: { users: ["known"] }, event: "probe", data: "for known" });
    await waitUntil("the push to the known user", () => received.length, (n) => n >= 1);
    assert.equal(received[0].event, "probe");
    assert.equal(received[0].args[0], "for known", `first event received: ${JSON.stringify(received[0])}`);
    assert.equal(received[0].args[1]?.id, r2.id);
    assert.notEqual(r1.id, r2.id);
  });

  it("serves the OpenAPI document", TEST, async () => {
    const s = await jwtServer();
    const res = await call(s, "GET", "/api/v1/openapi.json", undefined, KEY);
    assert.equal(res.status, 200, describeResponse(res.method, res.path, res));
    assert.ok(res.json, `openapi.json is not JSON: ${res.text.slice(0, 200)}`);
    assert.match(String(res.json.openapi), /^3\./, "openapi version");
    assert.ok(res.json.paths && typeof res.json.paths === "object", "paths");
    assert.ok("/api/v1/push" in res.json.paths, `paths: ${Object.keys(res.json.paths)}`);
  });

  it("environment settings override the config file", TEST, async () => {
    const s = await server({
      config: { auth: { jwt_secret: SECRET }, api: { keys: ["file-key"] } },
      env: { HERALD_API_KEYS: `env-key,${KEY2}` },
    });
    const fromEnv = await call(s, "POST", "/api/v1/push", good, "env-key");
    assert.equal(fromEnv.status, 200, describeResponse(fromEnv.method, fromEnv.path, fromEnv));
    const second = await call(s, "POST", "/api/v1/push", good, KEY2);
    assert.equal(second.status, 200, describeResponse(second.method, second.path, second));
    assertApiError(await call(s, "POST", "/api/v1/push", good, "file-key"), 401, "key only in the file");
  });
});

// ---------------------------------------------------------------------------

describe("limits", () => {
  it("refuses a user's connection over max_connections_per_user", TEST, async () => {
    const s = await jwtServer({ env: { HERALD_HUB_MAX_CONNECTIONS_PER_USER: "2" } });
    const user = "busy";
    const first = await pool.connect("v4", s.url, { token: token(user) });
    await pool.connect("v2", s.url, { token: token(user) });
    await waitPresence(s, user, 2);

    for (const version of VERSIONS) {
      const res = await pool.attempt(version, s.url, { token: token(user) });
      assert.equal(res.connected, false, `${CLIENTS[version].label}: a third connection was accepted`);
      assert.equal(
        res.event,
        CLIENTS[version].refusalEvents[0],
        `expected a namespace refusal, got ${res.event}: ${describeError(res.error)}`,
      );
      assert.equal(typeof res.message, "string", describeError(res.error));
      assert.notEqual(res.message, "", "the refusal should say why");
      pool.close(res.socket);
    }
    assert.equal((await presence(s, user)).connections, 2);

    // Another user is not affected.
    await pool.connect("v4", s.url, { token: token("someone-else") });

    // Once one connection leaves, a new one is accepted again.
    pool.close(first);
    await waitPresence(s, user, 1);
    await pool.connect("v4", s.url, { token: token(user) }, {}, WAIT_MS);
    await waitPresence(s, user, 2);
  });
});
