//! The server the client integration tests drive (`tests/clients/`).
//!
//! Listens on 127.0.0.1:`PORT` (0 picks a free port) and prints
//! `listening on 127.0.0.1:<port>`. Namespaces `/` and `/custom` behave alike:
//! - on connect: emits `welcome` with `{nsp, auth, query}`;
//! - `echo`: acks with the same arguments, or emits `echo` back if no ack was asked;
//! - `ask` (`name`, ...args): emits `name` with args and an ack, then emits `answer`
//!   with what the client acknowledged;
//! - `kick`: disconnects the socket from the namespace;
//! - `close-transport`: closes the whole connection.

use std::sync::Arc;

use herald::protocol::{Args, Event, Handler, Handshake, Socket, SocketIo, SocketIoConfig};
use herald::transport::{self, http, Engine, EngineConfig, EngineHandler};
use serde_json::value::RawValue;

struct Testbed;

impl Handler for Testbed {
    fn on_connect(&self, socket: &Socket, hs: &Handshake<'_>) {
        let mut query = serde_json::Map::new();
        for q in [Some(hs.query), hs.connect_query].into_iter().flatten() {
            for (k, v) in http::query_pairs(q) {
                query.insert(k.into_owned(), v.into_owned().into());
            }
        }
        let auth: serde_json::Value = hs
            .auth
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        let welcome = serde_json::json!({"nsp": socket.nsp(), "auth": auth, "query": query});
        let _ = socket.emit("welcome", &Args::one(&welcome));
    }

    fn on_event(&self, socket: &Socket, event: Event) {
        match event.name.as_str() {
            "echo" => {
                let _ = match event.ack {
                    Some(id) => socket.ack(id, &event.args),
                    None => socket.emit("echo", &event.args),
                };
            }
            "ask" => {
                let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(event.args.json())
                else {
                    return;
                };
                let Some(name) = items
                    .first()
                    .and_then(|n| serde_json::from_str::<String>(n.get()).ok())
                else {
                    return;
                };
                let rest = serde_json::to_string(&items[1..]).unwrap_or_else(|_| "[]".into());
                let args = Args::from_raw(rest, event.args.attachments().to_vec());
                let reply_to = socket.clone();
                socket.emit_with_ack(&name, &args, move |answer| {
                    if let Ok(answer) = answer {
                        let _ = reply_to.emit("answer", &answer);
                    }
                });
            }
            "kick" => socket.disconnect(),
            "close-transport" => socket.close_transport(),
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let handler: Arc<dyn Handler> = Arc::new(Testbed);
    let sio = SocketIo::new(SocketIoConfig::default())
        .namespace("/", handler.clone())
        .namespace("/custom", handler);
    let engine = Engine::new(
        EngineConfig::default(),
        vec![(
            "/socket.io/".to_owned(),
            Arc::new(sio) as Arc<dyn EngineHandler>,
        )],
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    transport::serve(listener, engine, None, shutdown).await;
}
