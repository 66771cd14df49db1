//! The socket layer's lifetimes: a socket authorized while its session closes, and a
//! session closed outside the runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::protocol::ConnectError;
use crate::transport::packet::Packet;
use crate::transport::{Engine, EngineConfig, OpenRequest};

type Hook = Box<dyn Fn(&Socket) + Send + Sync>;

/// Counts disconnects; its `authorize` can run a hook first.
#[derive(Default)]
struct Counting {
    left: AtomicUsize,
    /// Held while a test closes a session: `on_disconnect` takes it too.
    lock: Mutex<()>,
    during_authorize: Option<Hook>,
}

impl Handler for Counting {
    fn authorize(&self, socket: &Socket, _hs: &Handshake<'_>) -> Result<(), ConnectError> {
        if let Some(hook) = &self.during_authorize {
            hook(socket);
        }
        Ok(())
    }
    fn on_disconnect(&self, _socket: &Socket, _reason: DisconnectReason) {
        let _held = self.lock.lock();
        self.left.fetch_add(1, Ordering::SeqCst);
    }
}

/// A v4 session of `sio` with no client behind it.
fn session(engine: &Engine, sio: &SocketIo) -> Arc<Session> {
    let session = Session::new(engine.inner.clone(), Eio::V4, false, 0, false, None);
    let remote = "127.0.0.1:1".parse().unwrap();
    let conn = sio.on_open(&session, &OpenRequest { query: "", remote });
    session.set_connection(conn);
    session
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_closes_while_its_socket_is_authorized_leaves_nothing() {
    let handler = Arc::new(Counting {
        during_authorize: Some(Box::new(|socket: &Socket| {
            socket.session().close(CloseReason::TransportError);
            // Let the close run to its end (on another worker) before the socket is
            // registered: the window in which a dead member used to stay behind.
            std::thread::sleep(Duration::from_millis(100));
        })),
        ..Counting::default()
    });
    let engine = Engine::new(EngineConfig::default(), Vec::new());
    let sio = SocketIo::new(SocketIoConfig::default()).namespace("/", handler.clone());
    let s = session(&engine, &sio);
    s.receive(Packet::Text("0".into()));
    eventually("the socket authorized during the close left", || {
        handler.left.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handler.left.load(Ordering::SeqCst), 1, "left exactly once");
}

#[test]
fn a_close_outside_the_runtime_never_runs_the_handler_inline() {
    let handler = Arc::new(Counting::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async { Engine::new(EngineConfig::default(), Vec::new()) });
    let sio = SocketIo::new(SocketIoConfig::default()).namespace("/", handler.clone());
    let s = rt.block_on(async {
        let s = session(&engine, &sio);
        s.receive(Packet::Text("0".into()));
        s
    });
    // Outside the runtime, holding the lock that `on_disconnect` takes: an inline
    // `on_close` would deadlock here.
    let held = handler.lock.lock();
    s.close(CloseReason::TransportError);
    assert_eq!(handler.left.load(Ordering::SeqCst), 0);
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while handler.left.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "on_close never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Socket {
    /// A socket in `/` on a long-polling session of `engine` that no client polls: what
    /// it is sent stays queued, for a test to take with `Session::take_queued`.
    pub(crate) fn detached(engine: &crate::transport::Engine) -> Socket {
        struct Nobody;
        impl Handler for Nobody {}
        let session = Session::new(engine.inner.clone(), Eio::V4, false, 0, false, None);
        let nsp = Arc::new(Namespace {
            name: "/".into(),
            handler: Arc::new(Nobody),
            config: Arc::default(),
        });
        Socket(Arc::new(SocketInner {
            id: Sid::random(),
            connected_at: 0,
            nsp,
            session,
            conn: Weak::new(),
            acks: Mutex::new(Acks::default()),
            data: OnceLock::new(),
        }))
    }
}
