// The client against the real herald binary ($HERALD_BIN), in Node: every stored
// message handed over once, in seq order, whatever happens to the connection, the
// server, the token or the storage.
//
// Each check that a list of seqs is exact ends with a marker push: messages of one
// connection arrive in order, so once the marker is handed over, a duplicate or a
// stray message would have been too.

import { afterEach, describe, it } from "node:test";
import assert from "node:assert/strict";

import { HeraldClient, MemoryStorage, positionKey } from "../src/index.js";
import { Herald, tokenFor } from "./lib/herald.js";
import { Recorder, compact, range, waitUntil } from "./lib/wait.js";

const TEST = { timeout: 60_000 };
const LONG = { timeout: 180_000 };
// Short delays, so that recoveries take a fraction of a second.
const FAST = { reconnectDelayMs: 50, reconnectDelayMaxMs: 500 };

const servers = new Set();
const clients = new Set();

afterEach(async () => {
  for (const c of clients) await c.close();
  clients.clear();
  for (const s of servers) await s.destroy();
  servers.clear();
});

async function herald(opts) {
  const h = await Herald.start(opts);
  servers.add(h);
  return h;
}

/** A client (and its recorder) for `user` with a fixed token, unless options say otherwise. */
function open(h, user, options = {}) {
  const client = new HeraldClient(h.url, {
    ...(h.devAuth ? { userId: user } : { token: async () => tokenFor(user) }),
    ...FAST,
    ...options,
  });
  clients.add(client);
  return { client, rec: new Recorder(client) };
}

async function closeClient(client) {
  await client.close();
  clients.delete(client);
}

/** Pushes `count` notes to `user` ({n: from..}); resolves with seq -> n. */
async function pushMany(h, user, count, { from = 1, concurrency = 1, between } = {}) {
  const bySeq = new Map();
  let next = from;
  let done = 0;
  const worker = async () => {
    while (next < from + count) {
      const n = next++;
      const { seq } = await h.push(user, { n });
      bySeq.set(seq, n);
      done++;
      if (between) await between(done);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return bySeq;
}

/** Pushes a marker and waits for it: afterwards the record is complete. */
async function settle(h, user, rec) {
  const { seq } = await h.push(user, { marker: true });
  await rec.untilSeq(seq);
  return seq;
}

/** Waits for `storage` to hold `value` under `key` (it is written just after the handlers ran). */
function stored(storage, key, value) {
  return waitUntil(`${key} = ${value}`, () => storage.getItem(key), (v) => v === String(value));
}

function assertExactly(rec, expected, what) {
  const got = rec.seqs();
  assert.deepEqual(got, expected, `${what}: got ${compact(got)}, want ${compact(expected)}`);
}

describe("herald-client in Node", () => {
  it("offline then online: a new client on the same storage gets exactly what it missed", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    const first = open(h, "olga", { storage, deviceId: "laptop" });
    await h.push("olga", { n: 1 });
    await h.push("olga", { n: 2 });
    await first.rec.untilSeq(2);
    assertExactly(first.rec, [1, 2], "online");
    await closeClient(first.client);
    await stored(storage, positionKey("olga", "laptop"), "2");

    const missed = [];
    for (let n = 3; n <= 5; n++) missed.push(await h.push("olga", { n }));

    const second = open(h, "olga", { storage, deviceId: "laptop" });
    await second.rec.untilSeq(5);
    const marker = await settle(h, "olga", second.rec);
    assertExactly(second.rec, [3, 4, 5, marker], "after coming back");
    const replayed = second.rec.messages.slice(0, 3);
    assert.deepEqual(
      replayed.map((m) => [m.event, m.data.n, m.id, m.ts]),
      missed.map((p, i) => ["note", i + 3, p.id, p.ts]),
    );
    await stored(storage, positionKey("olga", "laptop"), String(marker));
    // Each replayed message was acknowledged once handled.
    await waitUntil(
      "the replayed message marked delivered",
      () => h.message(missed[0].id),
      (m) => typeof m.recipients?.[0]?.deliveredAt === "number",
    );
    assert.deepEqual(second.rec.errors, []);
  });

  it("a server restart loses nothing and repeats nothing", TEST, async () => {
    const h = await herald();
    const { rec } = open(h, "rita");
    await pushMany(h, "rita", 3);
    await rec.untilSeq(3);

    await h.restart();
    await pushMany(h, "rita", 3, { from: 4 });
    await rec.untilSeq(6);
    const marker = await settle(h, "rita", rec);
    assertExactly(rec, range(marker), "across the restart");
    assert.deepEqual(
      rec.messages.map((m) => m.data.n ?? "marker"),
      [1, 2, 3, 4, 5, 6, "marker"],
    );
    assert.ok(rec.connects >= 2, `reconnected after the restart (connects: ${rec.connects})`);
  });

  it("a token that expires mid-session is replaced and nothing is missed", TEST, async () => {
    const h = await herald({ auth: { on_expiry: "disconnect" } });
    const issued = [];
    const { client, rec } = open(h, "tom", {
      token: async () => {
        // The first token lasts about two seconds; the next ones an hour.
        const token = tokenFor("tom", issued.length === 0 ? 2 : 3600);
        issued.push(token);
        return token;
      },
    });
    await rec.until("connected", (r) => r.connects === 1);
    await h.push("tom", { n: 1 });
    await rec.untilSeq(1);

    // herald closes the transport when the token expires; push while it is down.
    await rec.until("the disconnect at expiry", (r) => r.disconnects.length >= 1, 10_000);
    await h.push("tom", { n: 2 });
    await rec.until("reconnected", (r) => r.connects >= 2);
    await rec.untilSeq(2);
    const marker = await settle(h, "tom", rec);
    assertExactly(rec, [1, 2, marker], "across the expiry");
    assert.ok(issued.length >= 2, "a fresh token was fetched");
    assert.ok(client.connected);
  });

  it("recovers when the first token has already expired", TEST, async () => {
    const h = await herald();
    let calls = 0;
    const { rec } = open(h, "eve", {
      token: async () => tokenFor("eve", calls++ === 0 ? -60 : 3600),
    });
    await h.push("eve", { n: 1 });
    await rec.untilSeq(1);
    const refused = rec.errors.filter((e) => e.code === "unauthorized");
    assert.equal(refused.length, 1, `errors: ${rec.errors.map((e) => e.message)}`);
    assert.match(refused[0].message, /^unauthorized: token expired/);
    assert.equal(calls, 2);
  });

  it("recovers when the token function fails", TEST, async () => {
    const h = await herald();
    let calls = 0;
    const { rec } = open(h, "fay", {
      token: async () => {
        if (calls++ < 2) throw new Error("token service unavailable");
        return tokenFor("fay");
      },
    });
    await h.push("fay", { n: 1 });
    await rec.untilSeq(1);
    assert.equal(rec.errors.filter((e) => e.code === "token").length, 2);
    assert.ok(calls >= 3);
  });

  it("two users one after the other on the same storage each get exactly their own messages", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    await pushMany(h, "ann", 3);
    await h.push("bob", { n: 1, for: "bob" });
    await h.push("bob", { n: 2, for: "bob" });

    const ann = open(h, "ann", { storage });
    await ann.rec.untilSeq(3);
    await closeClient(ann.client);

    const bob = open(h, "bob", { storage });
    await bob.rec.untilSeq(2);
    const bobMarker = await settle(h, "bob", bob.rec);
    assertExactly(bob.rec, [1, 2, bobMarker], "bob");
    assert.ok(bob.rec.messages.slice(0, 2).every((m) => m.data.for === "bob"));
    await closeClient(bob.client);

    await h.push("ann", { n: 4 });
    const annAgain = open(h, "ann", { storage });
    await annAgain.rec.untilSeq(4);
    const annMarker = await settle(h, "ann", annAgain.rec);
    assertExactly(annAgain.rec, [4, annMarker], "ann again");
    await stored(storage, positionKey("ann"), String(annMarker));
    await stored(storage, positionKey("bob"), String(bobMarker));
  });

  it("one client whose token changes user switches positions", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    let user = "cat";
    const { client, rec } = open(h, "cat", { storage, token: async () => tokenFor(user) });
    await pushMany(h, "cat", 2);
    await rec.untilSeq(2);
    await h.push("dan", { n: 1, for: "dan" });
    // Sign-out and sign-in as someone else on the same client.
    user = "dan";
    client.socket.io.engine.close();
    await rec.until("dan's message", (r) => r.messages.some((m) => m.data.for === "dan"));
    assert.equal(client.userId, "dan");
    assert.deepEqual(
      rec.messages.map((m) => [m.seq, m.data.for ?? "cat"]),
      [
        [1, "cat"],
        [2, "cat"],
        [1, "dan"],
      ],
    );
    await stored(storage, positionKey("cat"), "2");
    await stored(storage, positionKey("dan"), "1");
  });

  it("two tabs of one user keep their unread counts in step", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    await pushMany(h, "tess", 2);
    const a = open(h, "tess", { storage, deviceId: "tab-a" });
    const b = open(h, "tess", { storage, deviceId: "tab-b" });
    for (const tab of [a, b]) {
      await tab.rec.untilSeq(2);
      assert.deepEqual(tab.rec.unread[0], { unread: 2, lastSeq: 2, readUpTo: 0 }, "from inbox");
    }
    await h.push("tess", { n: 3 });
    for (const tab of [a, b]) {
      await tab.rec.until("unread 3", (r) => r.lastUnread()?.unread === 3);
      assert.deepEqual(tab.rec.lastUnread(), { unread: 3, lastSeq: 3, readUpTo: 0 });
    }

    assert.equal(await a.client.read(2), 2);
    assert.deepEqual(a.rec.lastUnread(), { unread: 1, lastSeq: 3, readUpTo: 2 });
    await b.rec.until("the other tab's read", (r) => r.lastUnread()?.readUpTo === 2);
    assert.deepEqual(b.rec.lastUnread(), { unread: 1, lastSeq: 3, readUpTo: 2 });

    // Beyond the last seq: herald clamps it.
    assert.equal(await b.client.read(99), 3);
    await a.rec.until("read to the end", (r) => r.lastUnread()?.unread === 0);
    assert.deepEqual(a.rec.lastUnread(), { unread: 0, lastSeq: 3, readUpTo: 3 });
    assert.deepEqual(await h.unread("tess"), { unread: 0, lastSeq: 3, readUpTo: 3 });
    // Each tab keeps its own position.
    await stored(storage, positionKey("tess", "tab-a"), "3");
    await stored(storage, positionKey("tess", "tab-b"), "3");
  });

  it("messages queued behind a slow handler when the connection drops are not handed over twice", TEST, async () => {
    const h = await herald();
    let tokens = 0;
    const { client, rec } = open(h, "dee", {
      // A token fetched over the network takes a while: the new transport is open well
      // before the CONNECT, while the handlers still work through the old connection's
      // messages (whose acks must not go out on the new transport before the CONNECT).
      token: async () => {
        if (tokens++ > 0) await new Promise((r) => setTimeout(r, 150));
        return tokenFor("dee");
      },
    });
    let opens = 0;
    client.socket.io.on("open", () => opens++);
    const calls = [];
    client.on("message", async ({ seq }) => {
      calls.push(seq);
      // Cut the connection while 6..20 wait in the queue: the resume from 5 sends
      // them again, and the client must recognise them.
      if (seq === 5) client.socket.io.engine.close();
      await new Promise((r) => setTimeout(r, 20));
    });
    await pushMany(h, "dee", 20, { concurrency: 4 });
    await rec.until("reconnected", (r) => r.connects >= 2);
    await waitUntil("seq 20 handled", () => calls.includes(20));
    const marker = await settle(h, "dee", rec);
    await waitUntil("the marker handled", () => calls.includes(marker));
    assert.deepEqual(calls, range(marker), `handled ${compact(calls)}`);
    // One cut, one new transport: none ended by a stray ack before its CONNECT.
    assert.equal(opens, 2, "transports opened");
    assert.deepEqual(rec.disconnects, ["forced close"]);
    assert.equal(rec.connects, 2);
    assert.deepEqual(rec.errors, []);
  });

  it("1,000 pushes while the transport keeps dropping: every seq once, in order", LONG, async () => {
    const h = await herald();
    const { client, rec } = open(h, "kai");
    // Handlers that take a moment, as an application's do: messages queue up behind
    // them, and each reconnect resumes from before what is queued.
    client.on("message", () => new Promise((r) => setTimeout(r, 2)));
    await rec.until("connected", (r) => r.connects === 1);
    // Every 100 pushes the connection is cut under the client, as a network would cut
    // it; one cut at a time, each once the client is back from the last (the pushes go
    // on meanwhile).
    let drops = 0;
    let cuts = Promise.resolve();
    const cut = async () => {
      await rec.until("connected before a cut", () => client.connected);
      const before = rec.disconnects.length;
      client.socket.io.engine.close();
      // The engine closes once what it is writing is out.
      await rec.until("the cut", (r) => r.disconnects.length > before);
      drops++;
    };
    const bySeq = await pushMany(h, "kai", 1000, {
      concurrency: 8,
      between: (done) => {
        if (done % 100 === 50) cuts = cuts.then(cut);
      },
    });
    await cuts;
    await rec.untilSeq(1000, 60_000);
    const marker = await settle(h, "kai", rec);
    assertExactly(rec, range(marker), "1,000 pushes");
    for (const m of rec.messages.slice(0, 1000)) assert.equal(m.data.n, bySeq.get(m.seq), `data of seq ${m.seq}`);
    assert.equal(drops, 10);
    assert.ok(rec.connects >= drops, `reconnected after each cut (connects: ${rec.connects})`);
  });

  it("1,000 pushes with a server restart midway: every seq once, in order", LONG, async () => {
    const h = await herald();
    const { rec } = open(h, "max");
    await rec.until("connected", (r) => r.connects === 1);
    const bySeq = await pushMany(h, "max", 500, { concurrency: 8 });
    await h.restart();
    for (const [seq, n] of await pushMany(h, "max", 500, { from: 501, concurrency: 8 })) bySeq.set(seq, n);
    await rec.untilSeq(1000, 60_000);
    const marker = await settle(h, "max", rec);
    assertExactly(rec, range(marker), "1,000 pushes");
    for (const m of rec.messages.slice(0, 1000)) assert.equal(m.data.n, bySeq.get(m.seq), `data of seq ${m.seq}`);
    assert.ok(rec.connects >= 2, `reconnected (connects: ${rec.connects})`);
  });

  it("a server whose store was replaced: the client starts over from 0 and says so", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    const first = open(h, "ivy", { storage });
    await pushMany(h, "ivy", 5);
    await first.rec.untilSeq(5);
    await closeClient(first.client);

    await h.replaceStore();
    await h.push("ivy", { n: "new-1" });
    await h.push("ivy", { n: "new-2" });
    const { rec } = open(h, "ivy", { storage });
    await rec.until("the reset", (r) => r.resets.length === 1);
    assert.deepEqual(rec.resets[0], { storedSeq: 5, lastSeq: 2 });
    await rec.untilSeq(2);
    const marker = await settle(h, "ivy", rec);
    assertExactly(rec, [1, 2, marker], "after the reset");
    assert.deepEqual(
      rec.messages.slice(0, 2).map((m) => m.data.n),
      ["new-1", "new-2"],
    );
    await stored(storage, positionKey("ivy"), String(marker));
  });

  it("a failing handler gets the message again, and nothing after it is skipped", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    const { client, rec } = open(h, "hal", { storage });
    const calls = [];
    let failed = false;
    client.on("message", async ({ seq }) => {
      calls.push(seq);
      if (seq === 2 && !failed) {
        failed = true;
        throw new Error("database busy");
      }
    });
    await pushMany(h, "hal", 3);
    await waitUntil("seq 3 handled", () => calls.includes(3));
    assert.deepEqual(calls, [1, 2, 2, 3]);
    const handlerErrors = rec.errors.filter((e) => e.code === "handler");
    assert.equal(handlerErrors.length, 1);
    assert.equal(handlerErrors[0].seq, 2);
    assert.match(handlerErrors[0].message, /database busy/);
    await stored(storage, positionKey("hal"), 3);
  });

  it('handlerErrors: "skip" counts a failed message as handled', TEST, async () => {
    const h = await herald();
    const { client, rec } = open(h, "sid", { handlerErrors: "skip" });
    const calls = [];
    client.on("message", ({ seq }) => {
      calls.push(seq);
      if (seq === 2) throw new Error("bad message");
    });
    await pushMany(h, "sid", 3);
    await waitUntil("seq 3 handled", () => calls.includes(3));
    const marker = await settle(h, "sid", rec);
    assert.deepEqual(calls, [1, 2, 3, marker]);
    assert.deepEqual(rec.errorCodes(), ["handler"]);
    assert.equal(rec.connects, 1);
  });

  it("waits for async handlers: one message at a time, in order", TEST, async () => {
    const h = await herald();
    const { client, rec } = open(h, "amy");
    const log = [];
    client.on("message", async ({ seq }) => {
      log.push(`start ${seq}`);
      await new Promise((r) => setTimeout(r, 20));
      log.push(`end ${seq}`);
    });
    await pushMany(h, "amy", 3, { concurrency: 3 });
    await waitUntil("3 ended", () => log.includes("end 3"));
    assert.deepEqual(log, ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]);
    assert.equal(client.lastSeq, 3);
  });

  it("volatile pushes and broadcasts pass through without a seq", TEST, async () => {
    const h = await herald();
    const { rec } = open(h, "val");
    await rec.until("connected", (r) => r.connects === 1);
    await rec.until("the inbox state", (r) => r.unread.length >= 1);
    await h.pushVolatile("val", { live: 1 });
    await h.pushVolatile("val", { live: 1 });
    await h.call("POST", "/api/v1/push", { to: { all: true }, event: "notice", data: "all" });
    await rec.until("three live messages", (r) => r.messages.length === 3);
    assert.deepEqual(
      rec.messages.map((m) => [m.event, m.data, m.seq, typeof m.id, typeof m.ts]),
      [
        ["note", { live: 1 }, undefined, "string", "number"],
        ["note", { live: 1 }, undefined, "string", "number"],
        ["notice", "all", undefined, "string", "number"],
      ],
    );
    const marker = await settle(h, "val", rec);
    assert.equal(marker, 1, "volatile pushes take no seq");
  });

  it("since: null lets herald place a new device: live messages, then resumes from storage", TEST, async () => {
    const h = await herald();
    const storage = new MemoryStorage();
    await pushMany(h, "neo", 2);
    const first = open(h, "neo", { storage, deviceId: "new-phone", since: null });
    // A new device starts at the user's last seq (told by `inbox`).
    await first.rec.until("the inbox state", (r) => r.unread.length >= 1);
    assert.deepEqual(first.rec.lastUnread(), { unread: 2, lastSeq: 2, readUpTo: 0 });
    await h.push("neo", { n: 3 });
    await first.rec.untilSeq(3);
    assertExactly(first.rec, [3], "a new device");
    await closeClient(first.client);

    await h.push("neo", { n: 4 });
    const second = open(h, "neo", { storage, deviceId: "new-phone", since: null });
    await second.rec.untilSeq(4);
    const marker = await settle(h, "neo", second.rec);
    assertExactly(second.rec, [4, marker], "the device again");
  });

  it("development mode: userId instead of a token", TEST, async () => {
    const h = await herald({ devAuth: true });
    const storage = new MemoryStorage();
    const first = open(h, "dev-user", { storage });
    await h.push("dev-user", { n: 1 });
    await first.rec.untilSeq(1);
    await closeClient(first.client);
    await h.push("dev-user", { n: 2 });
    const second = open(h, "dev-user", { storage });
    await second.rec.untilSeq(2);
    const marker = await settle(h, "dev-user", second.rec);
    assertExactly(second.rec, [2, marker], "resumed");
  });

  it("read() rejects while disconnected and on a bad seq", TEST, async () => {
    const h = await herald();
    const { client, rec } = open(h, "ned", { autoConnect: false });
    await assert.rejects(client.read(1), { code: "not_connected" });
    client.connect();
    await rec.until("connected", (r) => r.connects === 1);
    await assert.rejects(client.read(-1), TypeError);
    await assert.rejects(client.read(1.5), TypeError);
    assert.equal(await client.read(0), 0);
    await client.close();
    await assert.rejects(client.read(1), { code: "closed" });
  });

  it("close() is for good: no reconnect, nothing handled after it", TEST, async () => {
    const h = await herald();
    const { client, rec } = open(h, "zed");
    await h.push("zed", { n: 1 });
    await rec.untilSeq(1);
    await client.close();
    assert.equal(client.connected, false);
    await h.push("zed", { n: 2 });
    // A fresh client on the same (process) storage sees 2; the closed one never does.
    const other = open(h, "zed");
    await other.rec.untilSeq(2);
    assert.deepEqual(rec.seqs(), [1]);
    assert.equal(client.socket.active, false);
  });
});
