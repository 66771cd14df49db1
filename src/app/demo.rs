//! The seed's demo: every second, event `hello` with two random whole numbers below 100
//! to every connected client, and a page at `/demo` that shows them live, and what herald
//! adds: the demo user's inbox (stored messages with their seq, an unread badge kept in
//! step across tabs), a box that pushes to that user through the API, and the same push
//! as a curl line.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Query;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use rand::Rng;
use serde_json::value::RawValue;

use super::config::DemoSection;
use crate::push::{PushRequest, PushService, To};

/// Pushes `hello` {x, y} to everyone, every second, through the push service.
pub(crate) async fn ticker(push: Arc<PushService>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let (x, y) = {
            let mut rng = rand::thread_rng();
            (rng.gen_range(0..100u32), rng.gen_range(0..100u32))
        };
        let Ok(data) = RawValue::from_string(format!("{{\"x\":{x},\"y\":{y}}}")) else {
            continue;
        };
        let req = PushRequest {
            to: To {
                users: None,
                all: Some(true),
            },
            event: "hello".into(),
            data,
            volatile: Some(true),
            idempotency_key: None,
        };
        if let Err(e) = push.push(req).await {
            tracing::warn!(error = %e, "demo push failed");
        }
    }
}

const CDN_V4: &str = "https://cdn.socket.io/4.8.1/socket.io.min.js";
const CDN_V2: &str = "https://cdn.jsdelivr.net/npm/socket.io-client@2.3.0/dist/socket.io.js";

#[derive(serde::Deserialize)]
struct PageQuery {
    client: Option<String>,
}

#[derive(serde::Deserialize)]
struct LibQuery {
    v: Option<String>,
}

/// The demo page and the client libraries it loads.
pub(crate) fn routes(cfg: &DemoSection) -> anyhow::Result<axum::Router> {
    let load = |path: &str| -> anyhow::Result<Option<Bytes>> {
        if path.is_empty() {
            return Ok(None);
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read demo client library {path}"))?;
        Ok(Some(Bytes::from(bytes)))
    };
    let v4 = load(&cfg.client_v4)?;
    let v2 = load(&cfg.client_v2)?;
    let herald = load(&cfg.client_herald)?;
    let (has_v4, has_v2, has_herald) = (v4.is_some(), v2.is_some(), herald.is_some());
    let page = move |Query(q): Query<PageQuery>| async move {
        let two = q.client.as_deref() == Some("2");
        let src = match (two, has_v2, has_v4) {
            (true, true, _) => "/demo/socket.io.js?v=2",
            (true, false, _) => CDN_V2,
            (false, _, true) => "/demo/socket.io.js?v=4",
            (false, _, false) => CDN_V4,
        };
        // herald-client is built on socket.io-client 4.x: not for the 2.x page.
        let herald_src = if has_herald && !two {
            "/demo/herald-client.js"
        } else {
            ""
        };
        Html(
            PAGE.replace("{{CLIENT_SRC}}", src)
                .replace("{{HERALD_SRC}}", herald_src),
        )
    };
    let herald_lib = move || {
        let body = herald.clone();
        async move { script(body) }
    };
    let lib = move |Query(q): Query<LibQuery>| {
        let body = match q.v.as_deref() {
            Some("2") => v2.clone(),
            _ => v4.clone(),
        };
        async move { script(body) }
    };
    Ok(axum::Router::new()
        .route("/demo", get(page))
        .route("/demo/socket.io.js", get(lib))
        .route("/demo/herald-client.js", get(herald_lib)))
}

/// A configured script, or 404 when it is not.
fn script(body: Option<Bytes>) -> Response {
    match body {
        Some(b) => (
            [(
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            )],
            b,
        )
            .into_response(),
        None => Response::builder()
            .status(404)
            .body(axum::body::Body::from("not configured"))
            .unwrap_or_default(),
    }
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>herald demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem 3rem; max-width: 48rem; }
  #xy { font-size: 3rem; font-variant-numeric: tabular-nums; margin: .5rem 0; }
  #status { color: #666; }
  #status.problem { color: #b00; }
  h2 { margin-top: 2rem; }
  #badge { display: inline-block; min-width: 1.5rem; padding: 0 .4rem; border-radius: 1rem;
           background: #d33; color: #fff; text-align: center; font-size: .9rem; }
  #badge.zero { background: #aaa; }
  #messages { list-style: none; padding: 0; }
  #messages li { padding: .3rem 0; border-bottom: 1px solid #eee; }
  #messages li.unread { font-weight: bold; }
  #messages .seq { color: #888; font-variant-numeric: tabular-nums; margin-right: .5rem; }
  code { background: #f4f4f4; padding: .1rem .3rem; word-break: break-all; }
</style>
</head>
<body>
<h1>herald demo</h1>
<p id="status">loading the Socket.IO client…</p>
<p>The seed's live feed, <code>hello</code> to everyone every second:</p>
<p id="xy">x=.., y=..</p>

<h2>The inbox of <span id="user">…</span> <span id="badge" class="zero">0</span></h2>
<p>Messages to this user are stored, numbered (seq), and shown here once, in order, also
after a reload. Open this page in a second tab: it is the same user, and reading in one
tab clears the badge in the other.</p>
<form id="send" onsubmit="return false">
  <input id="text" placeholder="a message to this user" autocomplete="off">
  <button>Push</button>
  <button type="button" id="read">Mark all read</button>
</form>
<p>Or from a terminal: <code id="curl"></code></p>
<ul id="messages"></ul>

<script src="{{CLIENT_SRC}}"></script>
<script>
  // herald-client, when the server has its bundle (demo.client_herald).
  if ("{{HERALD_SRC}}") document.write('<script src="{{HERALD_SRC}}"><\/script>');
</script>
<script>
(function () {
  var statusLine = document.getElementById("status");
  function problem(text) { statusLine.textContent = text; statusLine.className = "problem"; }
  if (typeof io === "undefined" && !(window.Herald && window.Herald.HeraldClient)) {
    problem("The Socket.IO client could not be loaded from {{CLIENT_SRC}}" +
      " (offline?). Start herald with [demo] client_v4 (and client_v2 for ?client=2) naming" +
      " local copies, e.g. HERALD_DEMO_CLIENT_V4=node_modules/socket.io-client/dist/socket.io.min.js" +
      " and HERALD_DEMO_CLIENT_V2=node_modules/socket.io-client-v2/dist/socket.io.js.");
    return;
  }
  // One demo user per browser, shared by its tabs. Development mode takes the user id
  // unverified; a real page passes a JWT as auth.token.
  var userId = localStorage.getItem("herald-demo-user");
  if (!userId) {
    userId = "demo-" + Math.random().toString(36).slice(2, 10);
    localStorage.setItem("herald-demo-user", userId);
  }
  var seqKey = "herald-demo-seq:" + userId;
  var shown = [];
  var lastSeq = 0, readUpTo = 0;
  document.getElementById("user").textContent = userId;
  document.getElementById("curl").textContent = "curl -s " + location.origin +
    "/api/v1/push -H 'Content-Type: application/json' -d '{\"to\":{\"users\":[\"" + userId +
    "\"]},\"event\":\"note\",\"data\":{\"text\":\"hi from curl\"}}'";

  function badge() {
    var unread = shown.filter(function (m) { return m.seq > readUpTo; }).length;
    var b = document.getElementById("badge");
    b.textContent = String(Math.max(unread, lastSeq - readUpTo, 0));
    b.className = b.textContent === "0" ? "zero" : "";
    var items = document.querySelectorAll("#messages li");
    for (var i = 0; i < items.length; i++) {
      items[i].className = Number(items[i].dataset.seq) > readUpTo ? "unread" : "";
    }
  }
  function show(seq, data) {
    if (shown.some(function (m) { return m.seq === seq; })) return;
    shown.push({ seq: seq });
    var li = document.createElement("li");
    li.dataset.seq = String(seq);
    var s = document.createElement("span");
    s.className = "seq";
    s.textContent = "#" + seq;
    li.appendChild(s);
    li.appendChild(document.createTextNode(data && data.text !== undefined ? String(data.text) : JSON.stringify(data)));
    // Newest first, wherever it comes from (live, a replay, the inbox API).
    var list = document.getElementById("messages");
    var before = null;
    for (var i = 0; i < list.children.length; i++) {
      if (Number(list.children[i].dataset.seq) < seq) { before = list.children[i]; break; }
    }
    list.insertBefore(li, before);
    if (seq > lastSeq) lastSeq = seq;
  }

  function hello(data) {
    document.getElementById("xy").textContent = "x=" + data.x + ", y=" + data.y;
  }
  function connected() { statusLine.textContent = "connected as " + userId; statusLine.className = ""; }

  if (window.Herald && window.Herald.HeraldClient) {
    // With herald-client: it keeps this tab's position, drops duplicates, acks each
    // message once shown, and keeps the badge.
    var tab = sessionStorage.getItem("herald-demo-tab");
    if (!tab) {
      tab = Math.random().toString(36).slice(2, 8);
      sessionStorage.setItem("herald-demo-tab", tab);
    }
    var client = new Herald.HeraldClient(location.origin, {
      userId: userId, deviceId: "demo-tab-" + tab, storage: localStorage
    });
    client.on("connect", connected);
    client.on("disconnect", function () { statusLine.textContent = "disconnected; reconnecting…"; });
    client.on("error", function (e) { problem("error: " + e.message); });
    client.on("message", function (m) {
      if (m.event === "hello") return hello(m.data);
      if (m.seq) { show(m.seq, m.data); badge(); }
    });
    client.on("unread", function (u) {
      lastSeq = Math.max(lastSeq, u.lastSeq);
      readUpTo = u.readUpTo;
      badge();
    });
    document.getElementById("read").addEventListener("click", function () {
      client.read(lastSeq).then(function (upTo) { readUpTo = Math.max(readUpTo, upTo); badge(); });
    });
    statusLine.dataset.client = "herald-client";
    // What this tab handled before a reload is not delivered again: the last 50 stored
    // messages come from the inbox API (open in development mode).
    fetch("/api/v1/users/" + encodeURIComponent(userId) + "/unread").then(function (r) { return r.json(); })
      .then(function (u) {
        var after = Math.max(0, u.lastSeq - 50);
        return fetch("/api/v1/users/" + encodeURIComponent(userId) + "/messages?after=" + after + "&limit=50");
      })
      .then(function (r) { return r.json(); })
      .then(function (page) {
        (page.messages || []).forEach(function (m) { show(m.seq, m.data); });
        badge();
      })
      .catch(function () {});
    return pushBox();
  }

  // With socket.io-client alone. Replay the last 50 stored messages on every
  // (re)connect; the page keeps nothing else.
  var since = function () { return Math.max(0, Number(localStorage.getItem(seqKey) || 0) - 50); };
  var socket = io(location.origin, {
    auth: function (cb) { cb({ userId: userId, since: since() }); },
    query: { userId: userId, since: String(since()) }
  });
  socket.on("connect", connected);
  socket.on("disconnect", function () { statusLine.textContent = "disconnected; reconnecting…"; });
  socket.on("connect_error", function (e) { problem("cannot connect: " + e.message); });
  socket.on("error", function (e) { problem("error: " + e); });
  socket.on("hello", hello);
  socket.on("inbox", function (state) {
    lastSeq = Math.max(lastSeq, state.lastSeq);
    readUpTo = state.readUpTo;
    badge();
  });
  socket.on("read", function (r) { readUpTo = Math.max(readUpTo, r.upTo); badge(); });
  // Every stored message, whatever its event (socket.io-client 4.x sees them all; 2.x,
  // which has no onAny, the page's own `note`s).
  function stored(data, meta, ack) {
    if (meta && meta.seq) {
      show(meta.seq, data);
      localStorage.setItem(seqKey, String(lastSeq));
      badge();
    }
    if (typeof ack === "function") ack();
  }
  if (socket.onAny) {
    socket.onAny(function (event, data, meta, ack) {
      if (event !== "hello" && event !== "inbox" && event !== "read") stored(data, meta, ack);
    });
  } else {
    socket.on("note", stored);
  }

  document.getElementById("read").addEventListener("click", function () {
    socket.emit("read", { upTo: lastSeq }, function (r) {
      if (r && r.upTo !== undefined) { readUpTo = Math.max(readUpTo, r.upTo); badge(); }
    });
  });
  statusLine.dataset.client = "socket.io-client";
  pushBox();

  function pushBox() {
  document.getElementById("send").addEventListener("submit", function (e) {
    e.preventDefault();
    var text = document.getElementById("text").value || "hello from the page";
    fetch("/api/v1/push", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ to: { users: [userId] }, event: "note", data: { text: text } })
    }).then(function (r) {
      if (!r.ok) return r.json().then(function (b) { problem("push refused: " + b.error.message); });
      document.getElementById("text").value = "";
    });
  });
  }
})();
</script>
</body>
</html>
"##;
