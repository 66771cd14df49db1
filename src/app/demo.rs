//! The seed's demo: every second, event `hello` with two random whole numbers below 100
//! to every connected client, and a page at `/demo` that shows them live.

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
    let (has_v4, has_v2) = (v4.is_some(), v2.is_some());
    let page = move |Query(q): Query<PageQuery>| async move {
        let two = q.client.as_deref() == Some("2");
        let src = match (two, has_v2, has_v4) {
            (true, true, _) => "/demo/socket.io.js?v=2",
            (true, false, _) => CDN_V2,
            (false, _, true) => "/demo/socket.io.js?v=4",
            (false, _, false) => CDN_V4,
        };
        Html(PAGE.replace("{{CLIENT_SRC}}", src))
    };
    let lib = move |Query(q): Query<LibQuery>| {
        let body = if q.v.as_deref() == Some("2") {
            v2.clone()
        } else {
            v4.clone()
        };
        async move {
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
    };
    Ok(axum::Router::new()
        .route("/demo", get(page))
        .route("/demo/socket.io.js", get(lib)))
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>herald demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 3rem; }
  #xy { font-size: 3rem; font-variant-numeric: tabular-nums; }
  #status { color: #666; }
</style>
</head>
<body>
<h1>herald demo</h1>
<p id="status">connecting…</p>
<p id="xy">x=.., y=..</p>
<script src="{{CLIENT_SRC}}"></script>
<script>
(function () {
  // Development mode takes a user id unverified; a real page passes a JWT as auth.token.
  var userId = "demo-" + Math.random().toString(36).slice(2, 10);
  var socket = io(location.origin, { auth: { userId: userId }, query: { userId: userId } });
  var statusLine = document.getElementById("status");
  socket.on("connect", function () { statusLine.textContent = "connected as " + userId; });
  socket.on("disconnect", function () { statusLine.textContent = "disconnected"; });
  socket.on("connect_error", function (e) { statusLine.textContent = "error: " + e.message; });
  socket.on("error", function (e) { statusLine.textContent = "error: " + e; });
  socket.on("hello", function (data) {
    document.getElementById("xy").textContent = "x=" + data.x + ", y=" + data.y;
  });
})();
</script>
</body>
</html>
"#;
