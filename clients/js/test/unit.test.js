// The parts of the client that need no server: tokens, storage keys, backoff, option
// checks, and the package's two entry points.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

import * as esm from "herald-client";
import { HeraldClient, MemoryStorage, backoffDelay, positionKey, tokenClaims, tokenSubject } from "../src/index.js";
import { parsePosition } from "../src/storage.js";
import { UnreadCounter } from "../src/unread.js";

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
const fakeJwt = (claims) => `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}.c2ln`;

describe("tokens", () => {
  it("reads the sub of a JWT without verifying it", () => {
    assert.equal(tokenSubject(fakeJwt({ sub: "alice", exp: 1 })), "alice");
    // Characters base64url writes as - and _, and text beyond ASCII.
    const sub = "ü>?~ñ-日本";
    assert.equal(tokenSubject(fakeJwt({ sub, pad: ">>>???" })), sub);
    assert.deepEqual(tokenClaims(fakeJwt({ sub: "a", n: 1 })), { sub: "a", n: 1 });
  });

  it("finds no user in what is not a JWT with a sub", () => {
    for (const t of ["", "abc", "a.b", "a.b.c.d", `x.${b64url([1])}.y`, `x.${b64url({ sub: 7 })}.y`, "x.@@@.y"]) {
      assert.equal(tokenSubject(t), undefined, t);
    }
    assert.equal(tokenSubject(fakeJwt({ sub: "" })), undefined);
  });
});

describe("storage", () => {
  it("keys positions by user and device, unambiguously", () => {
    const keys = [
      positionKey("alice"),
      positionKey("bob"),
      positionKey("alice", "phone"),
      positionKey("alice:phone"),
      positionKey("alice", "phone", "other-prefix"),
    ];
    assert.equal(new Set(keys).size, keys.length, keys.join(" "));
    assert.equal(positionKey("a:b", "c:d"), "herald:lastSeq:a%3Ab:c%3Ad");
  });

  it("takes only whole numbers as positions", () => {
    assert.equal(parsePosition("42"), 42);
    assert.equal(parsePosition(" 7 "), 7);
    assert.equal(parsePosition(0), 0);
    for (const bad of [null, undefined, "", "-1", "1.5", "abc", "1e3", "99999999999999999"]) {
      assert.equal(parsePosition(bad), undefined, String(bad));
    }
  });

  it("MemoryStorage behaves as localStorage does", () => {
    const s = new MemoryStorage();
    assert.equal(s.getItem("k"), null);
    s.setItem("k", 5);
    assert.equal(s.getItem("k"), "5");
    assert.equal(s.length, 1);
    assert.equal(s.key(0), "k");
    s.removeItem("k");
    assert.equal(s.getItem("k"), null);
  });
});

describe("unread count", () => {
  it("counts new stored messages and follows read positions", () => {
    const c = new UnreadCounter({ unread: 2, lastSeq: 5, readUpTo: 3 });
    assert.equal(c.stored(5), false, "not new");
    assert.equal(c.stored(6), true);
    assert.deepEqual(c.state(), { unread: 3, lastSeq: 6, readUpTo: 3 });
    assert.equal(c.read(2), false, "never backwards");
    assert.equal(c.read(5), true);
    assert.deepEqual(c.state(), { unread: 1, lastSeq: 6, readUpTo: 5 });
    assert.equal(c.read(99), true);
    assert.deepEqual(c.state(), { unread: 0, lastSeq: 6, readUpTo: 99 });
    // Read beyond what has arrived: the message that then arrives is read already.
    assert.equal(c.stored(7), true);
    assert.deepEqual(c.state(), { unread: 0, lastSeq: 7, readUpTo: 99 });
  });

  it("keeps the count of a user whose oldest messages retention removed", () => {
    // Seqs 1..100, only 91..100 kept, none read: 10 unread, not 100.
    const c = new UnreadCounter({ unread: 10, lastSeq: 100, readUpTo: 0 });
    assert.equal(c.read(50), true);
    assert.equal(c.unread, 10);
    assert.equal(c.read(95), true);
    assert.equal(c.unread, 5);
  });

  it("takes only whole-number inbox states", () => {
    assert.equal(UnreadCounter.valid({ unread: 0, lastSeq: 0, readUpTo: 0 }), true);
    for (const bad of [null, {}, { unread: -1, lastSeq: 0, readUpTo: 0 }, { unread: "1", lastSeq: 1, readUpTo: 0 }]) {
      assert.equal(UnreadCounter.valid(bad), false, JSON.stringify(bad));
    }
  });
});

describe("backoff", () => {
  it("grows exponentially to the cap, with jitter in the upper half", () => {
    const low = () => 0;
    const high = () => 1;
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, 100, 3_000, high)),
      [100, 200, 400, 800, 1600, 3000, 3000],
    );
    assert.deepEqual(
      [0, 1, 2].map((a) => backoffDelay(a, 100, 3_000, low)),
      [50, 100, 200],
    );
    assert.equal(backoffDelay(1_000, 100, 3_000, high), 3000);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(3, 100, 3_000);
      assert.ok(d >= 400 && d <= 800, String(d));
    }
  });
});

describe("options", () => {
  const url = "http://127.0.0.1:9";
  const ok = { autoConnect: false, userId: "u" };

  it("refuses what cannot work", () => {
    const cases = [
      [{}, /token/],
      [{ autoConnect: false }, /token/],
      [{ autoConnect: false, token: "not-a-jwt" }, /pass userId/],
      [{ autoConnect: false, token: 42 }, /token must be/],
      [{ ...ok, deviceId: "x".repeat(129) }, /deviceId/],
      [{ ...ok, deviceId: "" }, /deviceId/],
      // herald counts bytes: 65 two-byte characters are 130.
      [{ ...ok, deviceId: "é".repeat(65) }, /128 bytes/],
      [{ ...ok, storage: {} }, /storage/],
      [{ ...ok, since: -1 }, /since/],
      [{ ...ok, since: 1.5 }, /since/],
      [{ ...ok, handlerErrors: "ignore" }, /handlerErrors/],
      [{ ...ok, reconnectDelayMs: 0 }, /reconnectDelayMs/],
    ];
    for (const [options, message] of cases) {
      assert.throws(() => new HeraldClient(url, options), { name: "TypeError", message }, JSON.stringify(options));
    }
    assert.throws(() => new HeraldClient("", ok), TypeError);
    // 32 four-byte characters are exactly 128 bytes: accepted.
    new HeraldClient(url, { ...ok, deviceId: "😀".repeat(32) });
  });

  it("knows the user before connecting", () => {
    const fromToken = new HeraldClient(url, { autoConnect: false, token: fakeJwt({ sub: "carol" }) });
    assert.equal(fromToken.userId, "carol");
    const explicit = new HeraldClient(url, { autoConnect: false, token: "opaque", userId: "dave" });
    assert.equal(explicit.userId, "dave");
    const dev = new HeraldClient(url, ok);
    assert.equal(dev.userId, "u");
    assert.equal(dev.lastSeq, 0);
    assert.equal(dev.connected, false);
    assert.equal(dev.inbox, null);
    for (const c of [fromToken, explicit, dev]) c.close();
  });

  it("read() rejects while not connected, and after close()", async () => {
    const client = new HeraldClient(url, ok);
    await assert.rejects(client.read(1), { name: "HeraldError", code: "not_connected" });
    await assert.rejects(client.read(-1), TypeError);
    await client.close();
    await assert.rejects(client.read(1), { code: "closed" });
    assert.throws(() => client.connect(), { code: "closed" });
  });
});

describe("package", () => {
  it("has the same API from import and require", () => {
    const cjs = createRequire(import.meta.url)("herald-client");
    const names = Object.keys(esm).sort();
    assert.deepEqual(Object.keys(cjs).sort(), names);
    assert.ok(names.includes("HeraldClient") && names.includes("MemoryStorage"));
    const client = new cjs.HeraldClient("http://127.0.0.1:9", { autoConnect: false, userId: "u" });
    assert.equal(client.userId, "u");
    client.close();
  });
});
