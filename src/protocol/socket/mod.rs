//! The Socket.IO server: namespaces, the sockets of each Engine.IO session, events and
//! acks in both directions, binary attachments, connect timeout.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::handler::{AckError, DisconnectReason, Event, Handler, Handshake, SocketIoConfig};
use super::packet::{self, Args, PacketType, ParseError};
use crate::transport::{
    CloseReason, Connection, Eio, EngineHandler, Message, MessageError, OpenRequest, Outbound,
    SendError, Session, Sid,
};

/// First ack id of [`Socket::emit_with_ack`]; smaller ids are left to the application.
/// Every id stays far below 2^53, which JavaScript numbers hold exactly.
pub const FIRST_ACK_ID: u64 = 1 << 40;

type AckFn = Box<dyn FnOnce(Result<Args, AckError>) + Send>;

/// Acks this server awaits from the client.
struct Acks {
    next: u64,
    pending: Vec<(u64, AckFn)>,
}

impl Default for Acks {
    fn default() -> Self {
        Acks {
            next: FIRST_ACK_ID,
            pending: Vec::new(),
        }
    }
}

struct SocketInner {
    id: Sid,
    /// Unix seconds at which the client joined the namespace (beside `id`, where it
    /// takes no room of its own).
    connected_at: u32,
    nsp: Arc<Namespace>,
    session: Arc<Session>,
    /// The connection, to leave it on [`Socket::disconnect`]; weak to avoid a cycle.
    conn: Weak<ConnInner>,
    /// Server-to-client acks awaiting an answer; allocated on first use.
    acks: Mutex<Acks>,
    /// Application data attached at connect (the user id, for example).
    data: OnceLock<Box<dyn Any + Send + Sync>>,
}

/// A client's connection to one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Socket(Arc<SocketInner>);

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("nsp", &self.0.nsp.name)
            .finish()
    }
}

impl PartialEq for Socket {
    fn eq(&self, other: &Socket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Socket {}

impl Socket {
    /// The socket id (distinct from the Engine.IO session id).
    pub fn id(&self) -> Sid {
        self.0.id
    }

    /// Unix ms (to the second) at which the client joined the namespace.
    pub fn connected_at(&self) -> u64 {
        u64::from(self.0.connected_at) * 1000
    }

    /// The namespace name.
    pub fn nsp(&self) -> &str {
        &self.0.nsp.name
    }

    /// The underlying Engine.IO session.
    pub fn session(&self) -> &Arc<Session> {
        &self.0.session
    }

    /// Attaches application data; only the first call takes effect.
    pub fn set_data<T: Any + Send + Sync>(&self, data: T) {
        let _ = self.0.data.set(Box::new(data));
    }

    /// The data attached with [`Socket::set_data`].
    pub fn data<T: Any>(&self) -> Option<&T> {
        self.0.data.get().and_then(|d| d.downcast_ref())
    }

    /// Emits an event.
    pub fn emit(&self, event: &str, args: &Args) -> Result<(), SendError> {
        self.send(&packet::encode_event(self.nsp(), event, args, None))
    }

    /// Emits an event and calls `callback` with the client's answer (or an error if the
    /// socket goes away first).
    pub fn emit_with_ack(
        &self,
        event: &str,
        args: &Args,
        callback: impl FnOnce(Result<Args, AckError>) + Send + 'static,
    ) {
        let id = {
            let mut acks = self.0.acks.lock();
            if acks.pending.len() >= self.0.nsp.config.max_pending_acks {
                drop(acks);
                return callback(Err(AckError::TooMany));
            }
            let id = acks.next;
            acks.next += 1;
            acks.pending.push((id, Box::new(callback)));
            id
        };
        if let Err(e) = self.send(&packet::encode_event(self.nsp(), event, args, Some(id))) {
            if let Some(cb) = self.take_ack(id) {
                cb(Err(AckError::Send(e)));
            }
        }
    }

    /// Answers a client's event that asked for an ack.
    pub fn ack(&self, id: u64, args: &Args) -> Result<(), SendError> {
        self.send(&packet::encode_ack(self.nsp(), id, args))
    }

    /// Queues packets already encoded for this socket's namespace (see
    /// [`packet::encode_event`]): a broadcast encodes once and sends to many.
    pub fn send(&self, packets: &[Outbound]) -> Result<(), SendError> {
        self.0.session.send_all(packets)
    }

    /// Queues several messages' packets at once (see `Session::send_each`); returns
    /// how many messages were queued.
    pub fn send_each(&self, messages: &[Vec<Outbound>]) -> usize {
        self.0
            .session
            .send_each(messages.iter().map(Vec::as_slice))
            .0
    }

    /// Disconnects the socket from its namespace (the client sees
    /// "io server disconnect" and does not reconnect by itself).
    pub fn disconnect(&self) {
        let _ = self.0.session.send(packet::encode_disconnect(self.nsp()));
        if let Some(conn) = self.0.conn.upgrade() {
            if conn.remove(self) {
                self.left(DisconnectReason::ServerNamespaceDisconnect);
            }
        }
    }

    /// Closes the whole underlying connection after what is queued has been sent (the
    /// client sees a transport close and reconnects). A polling client gets a close
    /// packet on its next request rather than an unknown session.
    pub fn close_transport(&self) {
        self.0.session.disconnect();
    }

    fn take_ack(&self, id: u64) -> Option<AckFn> {
        let mut acks = self.0.acks.lock();
        let i = acks.pending.iter().position(|(k, _)| *k == id)?;
        Some(acks.pending.swap_remove(i).1)
    }

    /// The socket left: fail its pending acks and tell the handler.
    fn left(&self, reason: DisconnectReason) {
        let pending = std::mem::take(&mut self.0.acks.lock().pending);
        for (_, cb) in pending {
            cb(Err(AckError::Disconnected));
        }
        self.0.nsp.handler.on_disconnect(self, reason);
    }
}

/// A namespace and its handler.
pub struct Namespace {
    name: String,
    handler: Arc<dyn Handler>,
    config: Arc<SocketIoConfig>,
}

/// The Socket.IO layer: an Engine.IO handler that serves namespaces.
pub struct SocketIo {
    config: Arc<SocketIoConfig>,
    /// Registered namespaces; shared by every connection.
    namespaces: Arc<HashMap<String, Arc<Namespace>>>,
}

impl SocketIo {
    pub fn new(config: SocketIoConfig) -> SocketIo {
        SocketIo {
            config: Arc::new(config),
            namespaces: Arc::new(HashMap::new()),
        }
    }

    /// Registers a namespace (`/` for the root one).
    pub fn namespace(mut self, name: &str, handler: Arc<dyn Handler>) -> SocketIo {
        let ns = Arc::new(Namespace {
            name: name.to_owned(),
            handler,
            config: self.config.clone(),
        });
        Arc::make_mut(&mut self.namespaces).insert(name.to_owned(), ns);
        self
    }
}

/// A binary packet waiting for its attachments.
struct PendingBinary {
    kind: PacketType,
    nsp: String,
    id: Option<u64>,
    json: String,
    expected: usize,
    bytes: usize,
    attachments: Vec<Bytes>,
}

struct ConnInner {
    namespaces: Arc<HashMap<String, Arc<Namespace>>>,
    config: Arc<SocketIoConfig>,
    /// The handshake query string, for namespace handshakes.
    query: Box<str>,
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    /// Connected namespaces (usually one).
    sockets: Vec<Socket>,
    /// A binary packet waiting for its attachments (boxed: rare, and large).
    pending: Option<Box<PendingBinary>>,
    /// CONNECTs refused so far (bad credentials, unknown namespace).
    refused: u8,
    /// The session has ended: a socket authorized now is not registered, and leaves at
    /// once.
    closed: bool,
}

/// CONNECTs a session may have refused before it is closed: a client retrying bad
/// credentials makes herald verify them over and over.
const MAX_REFUSED_CONNECTS: u8 = 3;

impl ConnInner {
    fn socket(&self, nsp: &str) -> Option<Socket> {
        self.state
            .lock()
            .sockets
            .iter()
            .find(|s| s.nsp() == nsp)
            .cloned()
    }

    fn remove(&self, socket: &Socket) -> bool {
        let mut st = self.state.lock();
        let before = st.sockets.len();
        st.sockets.retain(|s| s != socket);
        st.sockets.len() != before
    }
}

/// The per-session state as the transport sees it.
struct Conn(Arc<ConnInner>);

impl EngineHandler for SocketIo {
    fn on_open(&self, session: &Arc<Session>, req: &OpenRequest<'_>) -> Box<dyn Connection> {
        let inner = Arc::new(ConnInner {
            namespaces: self.namespaces.clone(),
            config: self.config.clone(),
            query: req.query.into(),
            state: Mutex::new(ConnState::default()),
        });
        // A session must join a namespace within the connect timeout, whatever its
        // protocol: one that never shows valid credentials is closed then.
        session.set_app_deadline(Some(self.config.connect_timeout));
        Box::new(Conn(inner))
    }
}

/// Connects the session to `nsp`; an error closes the session.
fn connect(
    conn: &Arc<ConnInner>,
    session: &Arc<Session>,
    nsp: &str,
    auth: Option<&str>,
    connect_query: Option<&str>,
) -> Result<(), MessageError> {
    let v5 = session.eio() == Eio::V4;
    let Some(ns) = conn.namespaces.get(nsp).cloned() else {
        let _ = session.send(packet::encode_connect_error(
            nsp,
            "Invalid namespace",
            None,
            v5,
        ));
        refused(conn, session);
        return Ok(());
    };
    if conn.socket(nsp).is_some() {
        return Err(MessageError(format!("duplicate CONNECT to {nsp}")));
    }
    let socket = Socket(Arc::new(SocketInner {
        id: Sid::random(),
        connected_at: u32::try_from(crate::vocab::now_ms() / 1000).unwrap_or(u32::MAX),
        nsp: ns.clone(),
        session: session.clone(),
        conn: Arc::downgrade(conn),
        acks: Mutex::new(Acks::default()),
        data: OnceLock::new(),
    }));
    let hs = Handshake {
        auth,
        query: &conn.query,
        connect_query,
    };
    if let Err(e) = ns.handler.authorize(&socket, &hs) {
        let _ = session.send(packet::encode_connect_error(
            nsp,
            &e.message,
            e.data.as_deref(),
            v5,
        ));
        refused(conn, session);
        return Ok(());
    }
    {
        let mut st = conn.state.lock();
        if st.closed {
            // The session ended while the handler authorized the socket: its close has
            // already let go of the sockets registered, so this one leaves here.
            drop(st);
            ns.handler.on_disconnect(
                &socket,
                DisconnectReason::Transport(CloseReason::TransportClose),
            );
            return Ok(());
        }
        st.sockets.push(socket.clone());
    }
    session.admit();
    session.clear_connect_deadline();
    let id = socket.id();
    let _ = session.send(packet::encode_connect(nsp, v5.then_some(id.as_str())));
    ns.handler.on_connect(&socket, &hs);
    Ok(())
}

/// Counts a refused CONNECT; past [`MAX_REFUSED_CONNECTS`] the session ends (after the
/// refusal is sent, so the client sees why).
fn refused(conn: &ConnInner, session: &Arc<Session>) {
    let mut st = conn.state.lock();
    st.refused = st.refused.saturating_add(1);
    if st.refused >= MAX_REFUSED_CONNECTS {
        drop(st);
        session.disconnect();
    }
}

fn bad(e: ParseError) -> MessageError {
    MessageError(e.to_string())
}

impl Conn {
    fn on_text(&self, session: &Arc<Session>, text: &str) -> Result<(), MessageError> {
        let conn = &self.0;
        if conn.state.lock().pending.is_some() {
            return Err(MessageError(
                "text packet while awaiting attachments".into(),
            ));
        }
        if !matches!(text.as_bytes().first(), Some(b'0' | b'1'))
            && conn.state.lock().sockets.is_empty()
        {
            // As the reference server does: anything but a CONNECT (or a DISCONNECT)
            // before the client has joined a namespace ends the session, before its data
            // costs a parse.
            return Err(MessageError("packet before joining a namespace".into()));
        }
        let p = packet::decode(text, conn.config.max_attachments).map_err(bad)?;
        match p.kind {
            PacketType::Connect => {
                let auth = if session.eio() == Eio::V4 {
                    p.data
                } else {
                    None
                };
                connect(conn, session, p.nsp, auth, p.query)
            }
            PacketType::Disconnect => {
                let Some(s) = conn.socket(p.nsp) else {
                    // Not in that namespace: nothing to leave (and no timer to restart).
                    return Ok(());
                };
                if conn.remove(&s) {
                    s.left(DisconnectReason::ClientNamespaceDisconnect);
                    if conn.state.lock().sockets.is_empty() {
                        // In no namespace any more: it is held to the limits of a client
                        // that has shown nothing, and must join one within the connect
                        // timeout or the session ends.
                        session.unadmit();
                        session.set_app_deadline(Some(conn.config.connect_timeout));
                    }
                }
                Ok(())
            }
            PacketType::Event | PacketType::Ack => dispatch(
                conn,
                p.kind,
                p.nsp,
                p.id,
                p.data.unwrap_or("[]"),
                Vec::new(),
            ),
            PacketType::BinaryEvent | PacketType::BinaryAck => {
                if conn.socket(p.nsp).is_none() {
                    // Attachments are not held for a namespace the client has not joined.
                    return Err(MessageError(format!(
                        "binary packet for {}, which this client has not joined",
                        p.nsp
                    )));
                }
                let data = p.data.unwrap_or("[]");
                packet::check_placeholders(data, p.attachments).map_err(bad)?;
                if p.attachments == 0 {
                    return dispatch(conn, p.kind, p.nsp, p.id, data, Vec::new());
                }
                conn.state.lock().pending = Some(Box::new(PendingBinary {
                    kind: p.kind,
                    nsp: p.nsp.to_owned(),
                    id: p.id,
                    json: data.to_owned(),
                    expected: p.attachments,
                    bytes: 0,
                    attachments: Vec::with_capacity(p.attachments),
                }));
                Ok(())
            }
            PacketType::ConnectError => Err(bad(ParseError::Unexpected)),
        }
    }

    fn on_binary(&self, data: &[u8]) -> Result<(), MessageError> {
        let conn = &self.0;
        let done = {
            let mut st = conn.state.lock();
            let Some(p) = st.pending.as_mut() else {
                return Err(MessageError("binary data without a binary packet".into()));
            };
            p.bytes += data.len();
            if p.bytes > conn.config.max_attachment_bytes {
                return Err(MessageError("attachments exceed the size limit".into()));
            }
            p.attachments.push(Bytes::copy_from_slice(data));
            if p.attachments.len() == p.expected {
                st.pending.take()
            } else {
                None
            }
        };
        match done {
            Some(p) => dispatch(conn, p.kind, &p.nsp, p.id, &p.json, p.attachments),
            None => Ok(()),
        }
    }
}

/// Hands a complete event or ack to its socket. Packets for a namespace the client has
/// not joined are ignored, as in the reference server.
fn dispatch(
    conn: &ConnInner,
    kind: PacketType,
    nsp: &str,
    id: Option<u64>,
    data: &str,
    attachments: Vec<Bytes>,
) -> Result<(), MessageError> {
    let Some(socket) = conn.socket(nsp) else {
        return Ok(());
    };
    match kind {
        PacketType::Event | PacketType::BinaryEvent => {
            let (name, args) = packet::split_event(data).map_err(bad)?;
            let event = Event {
                name,
                args: Args::from_raw(args, attachments),
                ack: id,
            };
            socket.0.nsp.handler.on_event(&socket, event);
        }
        _ => {
            let id = id.ok_or_else(|| bad(ParseError::AckId))?;
            let args = Args::from_raw(data.trim().to_owned(), attachments);
            match socket.take_ack(id) {
                Some(cb) => cb(Ok(args)),
                None => socket.0.nsp.handler.on_ack(&socket, id, args),
            }
        }
    }
    Ok(())
}

impl Connection for Conn {
    fn on_opened(&self, session: &Arc<Session>) {
        if session.eio() == Eio::V3 {
            // Protocol v4 connects the root namespace implicitly.
            let _ = connect(&self.0, session, "/", None, None);
        }
    }

    fn on_message(&self, session: &Arc<Session>, msg: Message<'_>) -> Result<(), MessageError> {
        match msg {
            Message::Text(t) => self.on_text(session, t),
            Message::Binary(b) => self.on_binary(b),
        }
    }

    fn on_close(&self, _session: &Arc<Session>, reason: CloseReason) {
        let sockets = {
            let mut st = self.0.state.lock();
            st.pending = None;
            st.closed = true;
            std::mem::take(&mut st.sockets)
        };
        for s in sockets {
            s.left(DisconnectReason::Transport(reason));
        }
    }
}

#[cfg(test)]
mod tests;
