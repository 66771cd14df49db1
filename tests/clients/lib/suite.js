// The client compatibility suite. v4.test.js and v2.test.js run it with an
// adapter describing how the respective client version is driven.
//
// Adapter shape:
//   label          human readable client name
//   eio            Engine.IO protocol revision the client speaks ("3" / "4")
//   connect(url, opts)          -> socket (must honour opts.forceNew etc.)
//   credentials                 extra connect options carrying token "abc"
//   checkCredentials(welcome)   asserts the token made it into `welcome`
//   expectNamespaceError(socket) -> Promise<string> error message for an
//                                   unknown namespace
//   isReconnecting(manager)     whether the manager has a reconnection pending

import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";

import { startServer } from "./server.js";
import {
  FAST_RECONNECT,
  JSON_CASES,
  MODES,
  WAIT_MS,
  assertBinary,
  assertSamePayload,
  bytes,
  cancelPendingWaits,
  emitWithAck,
  expectNo,
  waitFor,
  waitFor1,
  withDeadline,
} from "./util.js";

// How long to watch for an (unwanted) automatic reconnection. Well above the
// first reconnection delay (50 ms, no jitter) used by the tests.
const NO_RECONNECT_WINDOW_MS = 400;

const NAMESPACES = ["/", "/custom"];

// Per-test limit; individual waits fail much sooner (WAIT_MS).
const TEST = { timeout: 30_000 };

export function clientSuite(adapter) {
  let server;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    if (!server) return;
    const crashed = server.exited();
    const result = await server.stop();
    if (crashed) {
      throw new Error(
        `testbed exited during the tests (code=${result.code}, signal=${result.signal})\n` +
          `--- testbed stderr ---\n${server.logs()}`,
      );
    }
  });

  // Every socket opened by a test; closed after each test whatever happened.
  const open = new Set();
  afterEach(() => {
    cancelPendingWaits();
    for (const socket of open) {
      try {
        socket.disconnect();
        socket.io.disconnect();
      } catch {
        // best effort
      }
    }
    open.clear();
  });

  function newSocket(mode, nsp, extra = {}) {
    const socket = adapter.connect(server.url + nsp, {
      ...FAST_RECONNECT,
      ...mode.opts,
      ...adapter.credentials,
      forceNew: true,
      ...extra,
    });
    open.add(socket);
    return socket;
  }

  /**
   * Open a socket on `nsp` and wait until it is connected and has received
   * its `welcome`. In upgrade mode, also wait for (and check) the upgrade to
   * WebSocket so the rest of the test runs over the upgraded transport.
   */
  async function connect(mode, nsp, extra = {}) {
    const socket = newSocket(mode, nsp, extra);
    const engine = socket.io.engine;
    assert.ok(engine, "the manager should have created its engine synchronously");
    const upgraded =
      mode.name === "upgrade" ? waitFor(engine, "upgrade", WAIT_MS, "transport upgrade") : null;
    const [welcome] = await Promise.all([
      waitFor1(socket, "welcome"),
      waitFor(socket, "connect"),
    ]);
    if (upgraded) {
      await upgraded;
      assert.equal(socket.io.engine.transport.name, "websocket", "engine should have upgraded");
    } else {
      assert.equal(socket.io.engine.transport.name, mode.first);
    }
    assert.equal(socket.connected, true);
    return { socket, welcome };
  }

  async function assertEchoWorks(socket, label = "echo after reconnect") {
    const reply = await emitWithAck(socket, "echo", [label, { n: 1 }]);
    assert.deepStrictEqual(reply, [label, { n: 1 }]);
  }

  for (const mode of MODES) {
    describe(`${adapter.label} / ${mode.name}`, () => {
      for (const nsp of NAMESPACES) {
        describe(`namespace ${nsp}`, () => {
          it("connects and receives welcome", TEST, async () => {
            const { socket, welcome } = await connect(mode, nsp);
            assert.equal(welcome.nsp, nsp);
            assert.equal(typeof welcome.auth, "object");
            assert.notEqual(welcome.auth, null);
            assert.equal(typeof welcome.query, "object");
            assert.equal(welcome.query.EIO, adapter.eio);
            assert.equal(welcome.query.transport, mode.first);
            adapter.checkCredentials(welcome);
            assert.equal(typeof socket.id, "string");
            assert.ok(socket.id.length > 0);
          });

          it("echo with ack returns the same arguments", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            for (const { name, args } of JSON_CASES) {
              const reply = await emitWithAck(socket, "echo", args);
              assert.deepStrictEqual(reply, args, `case: ${name}`);
            }
          });

          it("echo without ack comes back as an echo event", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            for (const { name, args } of JSON_CASES) {
              const back = waitFor(socket, "echo", WAIT_MS, `echo event (${name})`);
              socket.emit("echo", ...args);
              assert.deepStrictEqual(await back, args, `case: ${name}`);
            }
          });

          it("keeps message order and matches acks to their emits", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const N = 50;
            const events = [];
            const allEvents = withDeadline(`${N} echo events`, WAIT_MS, (resolve, _r, onCleanup) => {
              const handler = (i) => {
                events.push(i);
                if (events.length === N) resolve();
              };
              socket.on("echo", handler);
              onCleanup(() => socket.off("echo", handler));
            });
            const acks = [];
            for (let i = 0; i < N; i++) {
              socket.emit("echo", i);
              acks.push(emitWithAck(socket, "echo", [`ack-${i}`, i]));
            }
            const replies = await Promise.all(acks);
            replies.forEach((r, i) => assert.deepStrictEqual(r, [`ack-${i}`, i]));
            await allEvents;
            assert.deepStrictEqual(events, [...Array(N).keys()]);
          });

          it("server-to-client ack (ask) delivers the client's reply as answer", TEST, async () => {
            const { socket } = await connect(mode, nsp);

            const cases = [
              { ask: [1, "two", { three: [3] }], reply: ["r1", { r: 2 }, [3]] },
              { ask: [], reply: [] },
              { ask: ["ünïcødé 🚀"], reply: ["返事 ✅", ""] },
            ];
            for (const [i, { ask, reply }] of cases.entries()) {
              const event = `q${i}`;
              const received = withDeadline(`"${event}"`, WAIT_MS, (resolve, reject, onCleanup) => {
                const handler = (...args) => {
                  const ack = args.pop();
                  if (typeof ack !== "function") {
                    reject(new Error(`"${event}" arrived without an ack callback`));
                    return;
                  }
                  resolve(args);
                  ack(...reply);
                };
                socket.on(event, handler);
                onCleanup(() => socket.off(event, handler));
              });
              const answer = waitFor(socket, "answer", WAIT_MS, `answer ${i}`);
              socket.emit("ask", event, ...ask);
              const args = await received;
              assert.deepStrictEqual(args, ask, `server should send the asked args (${i})`);
              assert.deepStrictEqual(await answer, reply, `answer should carry the ack (${i})`);
            }
          });

          it("binary with ack round-trips", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const a = bytes(16, 1);
            const b = bytes(1024, 2);
            const c = bytes(3, 3);

            let reply = await emitWithAck(socket, "echo", [a]);
            assert.equal(reply.length, 1);
            assertBinary(reply[0]);
            assertSamePayload(reply, [a], "single buffer");

            reply = await emitWithAck(socket, "echo", [{ name: "file.bin", data: b, size: 1024 }]);
            assertBinary(reply[0].data);
            assertSamePayload(reply, [{ name: "file.bin", data: b, size: 1024 }], "nested buffer");

            const several = [a, "between", b, { list: [c, { deep: a }] }, 7];
            reply = await emitWithAck(socket, "echo", several);
            assertBinary(reply[0]);
            assertBinary(reply[2]);
            assertBinary(reply[3].list[0]);
            assertBinary(reply[3].list[1].deep);
            assertSamePayload(reply, several, "several buffers");
          });

          it("binary without ack comes back as an echo event", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const a = bytes(64, 4);
            const b = bytes(2048, 5);

            let back = waitFor(socket, "echo");
            socket.emit("echo", a);
            let got = await back;
            assertBinary(got[0]);
            assertSamePayload(got, [a], "single buffer");

            const nested = [{ meta: { kind: "blob" }, parts: [a, b] }, "tail"];
            back = waitFor(socket, "echo");
            socket.emit("echo", ...nested);
            got = await back;
            assertBinary(got[0].parts[0]);
            assertBinary(got[0].parts[1]);
            assertSamePayload(got, nested, "nested buffers");
          });

          it("binary in a server-to-client ack (ask)", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const sent = bytes(100, 6);
            const replied = bytes(200, 7);
            const received = withDeadline('"bin-q"', WAIT_MS, (resolve, reject, onCleanup) => {
              const handler = (...args) => {
                const ack = args.pop();
                if (typeof ack !== "function") {
                  reject(new Error('"bin-q" arrived without an ack callback'));
                  return;
                }
                resolve(args);
                ack({ file: replied }, "ok");
              };
              socket.on("bin-q", handler);
              onCleanup(() => socket.off("bin-q", handler));
            });
            const answer = waitFor(socket, "answer");
            socket.emit("ask", "bin-q", { file: sent }, sent);
            const args = await received;
            assertBinary(args[0].file);
            assertBinary(args[1]);
            assertSamePayload(args, [{ file: sent }, sent]);
            const got = await answer;
            assertBinary(got[0].file);
            assertSamePayload(got, [{ file: replied }, "ok"]);
          });

          it("large messages (100 KB) round-trip", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const chunk = "abcdefghijklmnopqrstuvwxyz0123456789-éß€😀";
            let big = "";
            while (big.length < 100 * 1024) big += chunk;

            const reply = await emitWithAck(socket, "echo", [big]);
            assert.equal(reply.length, 1);
            assert.equal(reply[0].length, big.length);
            assert.ok(reply[0] === big, "100 KB string should come back unchanged");

            const back = waitFor(socket, "echo");
            socket.emit("echo", { big });
            const [obj] = await back;
            assert.ok(obj.big === big, "100 KB string (event) should come back unchanged");

            const blob = bytes(100 * 1024, 8);
            const binReply = await emitWithAck(socket, "echo", [blob]);
            assertBinary(binReply[0]);
            assertSamePayload(binReply, [blob], "100 KB buffer");
          });

          if (mode.name === "upgrade") {
            it("messages emitted right after connect, across the upgrade, are delivered", TEST, async (t) => {
              const socket = newSocket(mode, nsp);
              const engine = socket.io.engine;
              let upgradeDone = false;
              const upgraded = waitFor(engine, "upgrade", WAIT_MS, "transport upgrade");
              upgraded.then(
                () => (upgradeDone = true),
                () => {},
              );
              await waitFor(socket, "connect");

              // Keep emitting, one message per event-loop turn, until the
              // upgrade has completed, then a few more over WebSocket.
              const acks = [];
              let beforeUpgrade = 0;
              for (let i = 0; i < 2_000 && !upgradeDone; i++) {
                acks.push(emitWithAck(socket, "echo", [i, bytes(8, i + 1)]));
                beforeUpgrade++;
                await new Promise((resolve) => setImmediate(resolve));
              }
              await upgraded;
              assert.equal(engine.transport.name, "websocket");
              for (let i = acks.length, end = acks.length + 5; i < end; i++) {
                acks.push(emitWithAck(socket, "echo", [i, bytes(8, i + 1)]));
              }
              const replies = await Promise.all(acks);
              replies.forEach((reply, i) => assertSamePayload(reply, [i, bytes(8, i + 1)], `message ${i}`));
              t.diagnostic(`${beforeUpgrade} message(s) emitted before the upgrade completed`);
            });
          }

          it("server-initiated disconnect (kick) does not auto-reconnect; manual connect works", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const disconnected = waitFor1(socket, "disconnect");
            socket.emit("kick");
            assert.equal(await disconnected, "io server disconnect");
            assert.equal(socket.connected, false);

            await Promise.all([
              expectNo(socket.io, "reconnect_attempt", NO_RECONNECT_WINDOW_MS),
              expectNo(socket, "connect", NO_RECONNECT_WINDOW_MS),
            ]);
            assert.equal(socket.connected, false);
            assert.equal(adapter.isReconnecting(socket.io), false);

            const welcome = waitFor1(socket, "welcome");
            const connected = waitFor(socket, "connect");
            socket.connect();
            await connected;
            assert.equal((await welcome).nsp, nsp);
            assert.equal(socket.connected, true);
            await assertEchoWorks(socket, "echo after manual reconnect");
          });

          it("reconnects automatically after the transport is closed", TEST, async () => {
            const { socket } = await connect(mode, nsp);
            const firstId = socket.id;
            const disconnected = waitFor1(socket, "disconnect");
            const reconnected = waitFor(socket.io, "reconnect", WAIT_MS, "manager reconnect");
            const welcome = waitFor1(socket, "welcome", WAIT_MS, "welcome after reconnect");
            socket.emit("close-transport");

            assert.equal(await disconnected, "transport close");
            await reconnected;
            assert.equal((await welcome).nsp, nsp);
            assert.equal(socket.connected, true);
            assert.notEqual(socket.id, firstId, "a new session should have been created");
            await assertEchoWorks(socket);
          });
        });
      }

      it("unknown namespace is rejected with 'Invalid namespace'", TEST, async () => {
        const socket = newSocket(mode, "/nope");
        const message = await adapter.expectNamespaceError(socket);
        assert.equal(message, "Invalid namespace");
        assert.equal(socket.connected, false);
      });
    });
  }
}
