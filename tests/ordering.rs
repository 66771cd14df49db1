//! Requests a client sends together, which a single-threaded server answers in arrival
//! order, get the same answers from herald whichever of its workers handles one first:
//! a polling `GET` sent with the client's close packet, and a polling `GET` sent right
//! after a WebSocket's probe and upgrade packets. Each case runs in both orders.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::protocol::{Handler, SocketIo, SocketIoConfig};
use herald::transport::{self, Engine, EngineConfig, EngineHandler};
use tokio::sync::oneshot;

mod common;
use common::{get, http, Ws};

struct Nothing;
impl Handler for Nothing {}

async fn server() -> (SocketAddr, oneshot::Sender<()>) {
    let sio = SocketIo::new(SocketIoConfig::default()).namespace("/", Arc::new(Nothing));
    let engine = Engine::new(
        EngineConfig::default(),
        vec![(
            "/socket.io/".into(),
            Arc::new(sio) as Arc<dyn EngineHandler>,
        )],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(transport::serve(listener, engine, None, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

async fn sid(addr: SocketAddr, eio: u8) -> String {
    let (status, body) = http(
        addr,
        &get(&format!("/socket.io/?EIO={eio}&transport=polling")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    let open: serde_json::Value = serde_json::from_str(&body[start..=end]).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

fn poll(eio: u8, sid: &str) -> Vec<u8> {
    get(&format!(
        "/socket.io/?EIO={eio}&transport=polling&sid={sid}"
    ))
}

async fn post(addr: SocketAddr, eio: u8, sid: &str, body: &str) -> (u16, String) {
    let req = format!(
        "POST /socket.io/?EIO={eio}&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(addr, req.as_bytes()).await
}

/// Waits until the server holds a `GET` (it answers nothing for a moment).
async fn pending(get: &tokio::task::JoinHandle<(u16, String)>) {
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!get.is_finished(), "the GET was answered at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_sent_with_the_close_gets_its_noop_in_either_order() {
    let (addr, _stop) = server().await;
    for (eio, close, noop) in [(4u8, "1", "6"), (3, "1:1", "1:6")] {
        // The close handled first: the GET sent with it still gets its noop, once.
        let s = sid(addr, eio).await;
        assert_eq!(post(addr, eio, &s, close).await.0, 200);
        assert_eq!(http(addr, &poll(eio, &s)).await, (200, noop.to_owned()));
        assert_eq!(http(addr, &poll(eio, &s)).await.0, 400);
        // The GET handled first: it waits, and the close answers it.
        let s = sid(addr, eio).await;
        let req = poll(eio, &s);
        let waiting = tokio::spawn(async move { http(addr, &req).await });
        pending(&waiting).await;
        assert_eq!(post(addr, eio, &s, close).await.0, 200);
        assert_eq!(waiting.await.unwrap(), (200, noop.to_owned()));
        assert_eq!(http(addr, &poll(eio, &s)).await.0, 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_the_upgrade_is_refused_in_either_order() {
    let (addr, _stop) = server().await;
    // The upgrade handled first.
    let s = sid(addr, 4).await;
    let mut ws = Ws::connect(addr, &format!("EIO=4&transport=websocket&sid={s}")).await;
    ws.send_text("2probe").await;
    assert_eq!(ws.text().await, "3probe");
    ws.send_text("5").await;
    ws.send_text("2").await;
    assert_eq!(ws.text().await, "3");
    assert_eq!(http(addr, &poll(4, &s)).await.0, 400);
    // The GET handled first, while the WebSocket is open but has not probed yet: the
    // probe and upgrade that follow still make it a GET after the upgrade.
    let s = sid(addr, 4).await;
    let mut ws = Ws::connect(addr, &format!("EIO=4&transport=websocket&sid={s}")).await;
    let req = poll(4, &s);
    let get = tokio::spawn(async move { http(addr, &req).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    ws.send_text("2probe").await;
    ws.send_text("5").await;
    assert_eq!(get.await.unwrap().0, 400);
    assert_eq!(ws.text().await, "3probe");
    ws.send_text("2").await;
    assert_eq!(ws.text().await, "3");
}
