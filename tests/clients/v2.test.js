// herald against socket.io-client 2.x (Engine.IO protocol v3).
import assert from "node:assert/strict";
import io from "socket.io-client-v2";

import { clientSuite } from "./lib/suite.js";
import { waitFor1 } from "./lib/util.js";

clientSuite({
  label: "socket.io-client 2.x",
  eio: "3",
  connect: (url, opts) => io(url, opts),
  // 2.x has no `auth`; credentials travel in the handshake query string.
  credentials: { query: { token: "abc" } },
  checkCredentials(welcome) {
    assert.equal(welcome.query.token, "abc");
  },
  async expectNamespaceError(socket) {
    // 2.x reports a refused namespace as an `error` event carrying the
    // packet's data verbatim. A socket.io 2.x server sends the plain string
    // "Invalid namespace"; socket.io 3+/4 servers (allowEIO3) send
    // {message: "Invalid namespace"}. Clients in the wild cope with both.
    const data = await waitFor1(socket, "error");
    if (typeof data === "string") return data;
    assert.equal(typeof data, "object", `unexpected error payload: ${JSON.stringify(data)}`);
    return data?.message;
  },
  isReconnecting: (manager) => !!manager.reconnecting,
});
