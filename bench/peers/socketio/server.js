// socket.io 4.8 behind the benchmark's push endpoint.
//
// Clients connect to `/` with `auth: {userId}` and join the rooms `user:<userId>` and
// `all`. `POST /push` with `{"users": ["u1", ...] | null, "event": "e", "data": <json>,
// "times": N}` emits `event(data, {id, ts})` N times to the users' rooms (or to `all`
// when `users` is null) and answers `{"id", "ts", "emits"}`.
//
// PORT sets the port (default 3000); prints `listening on 127.0.0.1:<port>`.
"use strict";

const http = require("http");
const { randomUUID } = require("crypto");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 3000);

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/push") {
    return reply(res, 404, { error: "not found" });
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let p;
    try {
      p = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch (e) {
      return reply(res, 400, { error: "invalid JSON" });
    }
    const rooms = Array.isArray(p.users) ? p.users.map((u) => "user:" + u) : ["all"];
    const times = Math.max(1, p.times | 0);
    let meta = null;
    for (let i = 0; i < times; i++) {
      meta = { id: randomUUID(), ts: Date.now() };
      io.to(rooms).emit(p.event, p.data, meta);
    }
    reply(res, 200, { id: meta.id, ts: meta.ts, emits: times });
  });
});
// Keep-alive connections from the load generator stay open across a run.
server.keepAliveTimeout = 120000;

const io = new Server(server, { serveClient: false });

io.on("connection", (socket) => {
  const user = socket.handshake.auth && socket.handshake.auth.userId;
  socket.join(user ? ["user:" + user, "all"] : ["all"]);
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});

process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
