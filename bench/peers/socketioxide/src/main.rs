//! socketioxide 0.18 behind the benchmark's push endpoint.
//!
//! Clients connect to `/` with `auth: {userId}` and join the rooms `user:<userId>` and
//! `all`. `POST /push` with `{"users": ["u1", ...] | null, "event": "e", "data": <json>,
//! "times": N}` emits `event(data, {id, ts})` N times to the users' rooms (or to `all`
//! when `users` is null) and answers `{"id", "ts", "emits"}`.
//!
//! `PORT` sets the port (default 3000); prints `listening on 127.0.0.1:<port>`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::SocketIo;

#[derive(Deserialize)]
struct Auth {
    #[serde(rename = "userId")]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct Push {
    users: Option<Vec<String>>,
    event: String,
    data: Value,
    #[serde(default)]
    times: Option<usize>,
}

#[derive(serde::Serialize)]
struct Meta {
    id: String,
    ts: u64,
}

async fn push(State(io): State<SocketIo>, Json(p): Json<Push>) -> Json<Value> {
    let rooms: Vec<String> = match &p.users {
        Some(users) => users.iter().map(|u| format!("user:{u}")).collect(),
        None => vec!["all".to_owned()],
    };
    let times = p.times.unwrap_or(1).max(1);
    let mut last = Meta {
        id: String::new(),
        ts: 0,
    };
    for _ in 0..times {
        let meta = Meta {
            id: uuid::Uuid::now_v7().to_string(),
            ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        // A tuple is sent as separate arguments: event(data, meta).
        let _ = io.to(rooms.clone()).emit(&p.event, &(&p.data, &meta)).await;
        last = meta;
    }
    Json(serde_json::json!({"id": last.id, "ts": last.ts, "emits": times}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    // Queue bound per socket set to herald's default (4096 packets) so that a burst is
    // not dropped by a smaller queue than herald has.
    let (layer, io) = SocketIo::builder().max_buffer_size(4096).build_layer();
    io.ns(
        "/",
        async |socket: SocketRef, Data(auth): Data<Auth>| match auth.user_id {
            Some(u) => socket.join([format!("user:{u}"), "all".to_owned()]),
            None => socket.join("all"),
        },
    );
    let app = axum::Router::new()
        .route("/push", post(push))
        .with_state(io)
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
