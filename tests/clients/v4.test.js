// herald against socket.io-client 4.x (Engine.IO protocol v4).
import assert from "node:assert/strict";
import { io } from "socket.io-client";

import { clientSuite } from "./lib/suite.js";
import { waitFor1 } from "./lib/util.js";

clientSuite({
  label: "socket.io-client 4.x",
  eio: "4",
  connect: (url, opts) => io(url, opts),
  credentials: { auth: { token: "abc" }, query: { room: "lobby" } },
  checkCredentials(welcome) {
    assert.deepStrictEqual(welcome.auth, { token: "abc" });
    assert.equal(welcome.query.room, "lobby");
  },
  async expectNamespaceError(socket) {
    const err = await waitFor1(socket, "connect_error");
    assert.ok(err instanceof Error, "connect_error should carry an Error");
    // A namespace refusal is final: the client must not retry on its own.
    assert.equal(socket.active, false);
    return err.message;
  },
  isReconnecting: (manager) => !!manager._reconnecting,
});
