//! The server the official Engine.IO and Socket.IO protocol test suites expect.
//!
//! `cargo run --release --example conformance` listens on `PORT` (default 3000):
//! `/engine.io/` echoes every message; `/socket.io/` serves `/` and `/custom`, emits
//! `auth` on connect, answers `message` with `message-back` and acks
//! `message-with-ack`.

use std::sync::Arc;
use std::time::Duration;

use herald::protocol::{Args, Event, Handler, Handshake, Socket, SocketIo, SocketIoConfig};
use herald::transport::{
    self, CloseReason, Connection, Engine, EngineConfig, EngineHandler, Message, MessageError,
    OpenRequest, Outbound, Session,
};

/// Raw Engine.IO echo.
struct Echo;

impl EngineHandler for Echo {
    fn on_open(&self, _: &Arc<Session>, _: &OpenRequest<'_>) -> Box<dyn Connection> {
        Box::new(Echo)
    }
}

impl Connection for Echo {
    fn on_message(&self, s: &Arc<Session>, msg: Message<'_>) -> Result<(), MessageError> {
        let _ = s.send(match msg {
            Message::Text(t) => Outbound::message(t),
            Message::Binary(b) => Outbound::Binary(b.to_vec().into()),
        });
        Ok(())
    }
    fn on_close(&self, _: &Arc<Session>, _: CloseReason) {}
}

/// The Socket.IO behaviour of the suite.
struct Suite;

impl Handler for Suite {
    fn on_connect(&self, socket: &Socket, hs: &Handshake<'_>) {
        let auth = hs.auth.unwrap_or("{}");
        let _ = socket.emit("auth", &Args::from_raw(format!("[{auth}]"), vec![]));
    }

    fn on_event(&self, socket: &Socket, event: Event) {
        match event.name.as_str() {
            "message" => {
                let _ = socket.emit("message-back", &event.args);
            }
            "message-with-ack" => {
                if let Some(id) = event.ack {
                    let _ = socket.ack(id, &event.args);
                }
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let config = EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        // The suites open sessions back to back from one address.
        max_handshakes_per_ip_per_sec: 0,
        ..EngineConfig::default()
    };
    let suite: Arc<dyn Handler> = Arc::new(Suite);
    let sio = SocketIo::new(SocketIoConfig {
        connect_timeout: Duration::from_millis(1000),
        ..SocketIoConfig::default()
    })
    .namespace("/", suite.clone())
    .namespace("/custom", suite);
    let engine = Engine::new(
        config,
        vec![
            (
                "/engine.io/".to_owned(),
                Arc::new(Echo) as Arc<dyn EngineHandler>,
            ),
            ("/socket.io/".to_owned(), Arc::new(sio)),
        ],
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("listening on {}", listener.local_addr().expect("addr"));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    transport::serve(listener, engine, None, shutdown).await;
}
