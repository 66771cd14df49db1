// End-to-end tests of the durable inbox with real clients: messages pushed while a user
// is offline arrive on reconnect with `since`, in order; the Socket.IO ack callback marks
// a message delivered; reading on one device tells the others. Both socket.io-client 4.x
// (auth payload) and 2.3.0 (query string).

import { afterEach, describe, it } from "node:test";
import assert from "node:assert/strict";

import { describeResponse, startHerald } from "./lib/herald.js";
import { ClientPool, EventLog, waitFor, waitUntil } from "./lib/clients.js";

const TEST = { timeout: 30_000 };
const pool = new ClientPool();
const servers = new Set();

afterEach(async () => {
  pool.closeAll();
  for (const s of servers) await s.stop();
  servers.clear();
});

async function server() {
  const s = await startHerald({ devAuth: true });
  servers.add(s);
  return s;
}

async function call(s, method, path, body) {
  const res = await s.api(method, path, body);
  assert.equal(res.status, 200, describeResponse(method, path, res));
  return res.json;
}

const push = (s, user, data) =>
  call(s, "POST", "/api/v1/push", { to: { users: [user] }, event: "note", data });

for (const version of ["v4", "v2"]) {
  describe(`inbox with socket.io-client ${version === "v4" ? "4.x" : "2.3.0"}`, () => {
    it("delivers what was pushed while offline, in order, then live ones", TEST, async () => {
      const s = await server();
      const user = `offline-${version}`;
      const first = await push(s, user, { n: 1 });
      await push(s, user, { n: 2 });
      await push(s, user, { n: 3 });
      assert.equal(first.seqs[user], 1);

      // Listen before connecting: the stored messages follow the connect at once.
      const socket = pool.open(version, s.url, { userId: user, since: 0 });
      const log = new EventLog(socket, ["note"]);
      await waitFor(socket, "connect");
      await push(s, user, { n: 4 });
      const got = [];
      for (let i = 1; i <= 4; i++) got.push(await log.nth("note", i));
      assert.deepEqual(
        got.map(([data]) => data.n),
        [1, 2, 3, 4],
      );
      assert.deepEqual(
        got.map(([, meta]) => meta.seq),
        [1, 2, 3, 4],
      );
      assert.equal(got[0][1].id, first.id);
      assert.equal(got[0][1].ts, first.ts);
    });

    it("records delivery when the client acknowledges", TEST, async () => {
      const s = await server();
      const user = `ack-${version}`;
      const socket = await pool.connect(version, s.url, { userId: user });
      socket.on("note", (_data, _meta, ack) => ack());
      const { id } = await push(s, user, { hello: true });
      const state = await waitUntil(
        "delivered state",
        () => call(s, "GET", `/api/v1/messages/${id}`),
        (st) => typeof st.recipients?.[0]?.deliveredAt === "number",
      );
      assert.equal(state.recipients[0].user, user);
      assert.equal(state.recipients[0].seq, 1);
    });

    it("tells a user's other devices what was read", TEST, async () => {
      const s = await server();
      const user = `read-${version}`;
      const phone = await pool.connect(version, s.url, { userId: user });
      const laptop = await pool.connect("v4", s.url, { userId: user });
      const laptopLog = new EventLog(laptop, ["read", "note"]);
      const phoneLog = new EventLog(phone, ["note"]);
      await push(s, user, 1);
      await push(s, user, 2);
      await phoneLog.nth("note", 2);
      await laptopLog.nth("note", 2);
      const answer = await new Promise((resolve) => phone.emit("read", { upTo: 1 }, resolve));
      assert.deepEqual(answer, { upTo: 1 });
      const [read] = await laptopLog.nth("read", 1);
      assert.deepEqual(read, { upTo: 1 });
      const unread = await call(s, "GET", `/api/v1/users/${user}/unread`);
      assert.deepEqual(unread, { unread: 1, lastSeq: 2, readUpTo: 1 });
    });
  });
}
