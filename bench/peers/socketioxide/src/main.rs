//! socketioxide 0.18 behind the benchmark's push endpoint.
//!
//! Clients connect to `/` with `auth: {userId}` and join the rooms `user:<userId>` and
//! `all`. `POST /push` with `{"users": ["u1", ...] | null, "event": "e", "data": <json>,
//! "times": N}` emits `event(data, {id, ts})` N times to the users' rooms (or to `all`
//! when `users` is null) and answers `{"id", "ts", "emits"}`.
//!
//! `PORT` sets the port (default 3000); prints `listening on 127.0.0.1:<port>`.
//!
//! With `REDIS_URL` set (e.g. `redis://127.0.0.1:6379`), the server is one node of a
//! cluster through the socketioxide-redis adapter (redis-rs driver, RESP3): an emit
//! entering any node reaches the users' sockets on every node. Without it, it runs alone
//! with the default in-memory adapter. In cluster mode warnings (such as the adapter
//! dropping a message because its receive buffer is full) go to stderr.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::SocketIo;
use socketioxide_redis::drivers::redis::redis_client as redis;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

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

async fn push<A: Adapter>(State(io): State<SocketIo<A>>, Json(p): Json<Push>) -> Json<Value> {
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

async fn on_connect<A: Adapter>(socket: SocketRef<A>, Data(auth): Data<Auth>) {
    match auth.user_id {
        Some(u) => socket.join([format!("user:{u}"), "all".to_owned()]),
        None => socket.join("all"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    // Queue bound per socket set to herald's default (4096 packets) so that a burst is
    // not dropped by a smaller queue than herald has.
    let builder = SocketIo::builder().max_buffer_size(4096);
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
                .with_writer(std::io::stderr)
                .init();
            // The adapter's driver speaks RESP3 (pushes on the same connection).
            let client = redis::Client::open(format!("{url}?protocol=resp3"))?;
            let adapter = RedisAdapterCtr::new_with_redis(&client).await?;
            let (layer, io) = builder
                .with_adapter::<RedisAdapter<_>>(adapter)
                .build_layer();
            io.ns("/", on_connect).await?;
            serve(layer, io, port).await
        }
        Err(_) => {
            let (layer, io) = builder.build_layer();
            io.ns("/", on_connect);
            serve(layer, io, port).await
        }
    }
}

async fn serve<A: Adapter>(
    layer: socketioxide::layer::SocketIoLayer<A>,
    io: SocketIo<A>,
    port: u16,
) -> Result<(), Box<dyn std::error::Error>> {
    let app = axum::Router::new()
        .route("/push", post(push::<A>))
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
