//! The root namespace: admits a client (who it is, where it resumes from), joins it to
//! its user's room, and passes its acks and reads to the delivery rules.

use std::sync::Arc;

use super::{Delivery, Resume};
use crate::auth::{AuthError, Authenticator, OnExpiry};
use crate::hub::ANONYMOUS;
use crate::protocol::{Args, ConnectError, DisconnectReason, Event, Handler, Handshake, Socket};

/// Whether the handshake carries a credential field (`token` or `userId`), even empty.
fn shows_credentials(hs: &Handshake<'_>) -> bool {
    let in_auth = hs.auth.is_some_and(|a| {
        serde_json::from_str::<serde_json::Value>(a)
            .is_ok_and(|v| v.get("token").is_some() || v.get("userId").is_some())
    });
    in_auth || hs.query_param("token").is_some() || hs.query_param("userId").is_some()
}

/// Counts a refused connect by `label`, and logs it with its reason, the user when
/// known and the client's address (never a token), at most once a second.
fn refused(
    delivery: &Delivery,
    socket: &Socket,
    label: &'static str,
    reason: &str,
    user: Option<&str>,
) {
    delivery
        .metrics
        .connects_refused
        .with_label_values(&[label])
        .inc();
    static EVERY: crate::vocab::LogEvery = crate::vocab::LogEvery::new();
    if let Some(held) = EVERY.allow(1000) {
        let session = socket.session();
        tracing::warn!(
            reason,
            user,
            remote = %session
                .counted_ip()
                .map_or_else(|| "exempt".to_owned(), |ip| ip.to_string()),
            eio = ?session.eio(),
            similar_since = held,
            "client connect refused"
        );
    }
}

/// The device id a connection gave at connect, if any (for the admin page).
pub fn device_of(socket: &Socket) -> Option<String> {
    socket
        .data::<Client>()
        .and_then(|c| c.device.as_deref().map(str::to_owned))
}

/// Longest device id accepted.
const MAX_DEVICE_ID: usize = 128;

/// Who a socket is and where it resumes from, read from its handshake once, at connect.
/// Kept for the connection's life, so kept small: 64 bytes.
struct Client {
    user: Box<str>,
    device: Option<Box<str>>,
    resume: Resume,
    /// This connection's `read` events (none until its first).
    reads: parking_lot::Mutex<Option<Box<Reads>>>,
}

/// `read` events that arrive while one is being stored are folded into the next write
/// (the highest position wins), so a client flooding reads costs one write at a time,
/// not a task and a queued write each.
#[derive(Default)]
struct Reads {
    in_flight: bool,
    /// The highest position asked for meanwhile.
    next: Option<u64>,
    /// Their ack ids, answered with the next write's result.
    acks: Vec<u64>,
}

/// Reads waiting for an answer per connection; more are answered with an error.
const MAX_WAITING_READS: usize = 16;

/// The root namespace: every socket joins its user's room.
pub struct Devices {
    auth: Authenticator,
    /// What happens when a connected client's token expires, and the leeway on `exp`.
    on_expiry: (OnExpiry, u64),
    delivery: Arc<Delivery>,
    /// Clients with no credentials are admitted, to broadcasts only (`auth.anonymous`).
    anonymous: bool,
}

impl Devices {
    /// Admits clients that show no credentials to broadcasts only.
    pub fn with_anonymous(mut self, anonymous: bool) -> Devices {
        self.anonymous = anonymous;
        self
    }

    pub fn new(
        auth: Authenticator,
        on_expiry: (OnExpiry, u64),
        delivery: Arc<Delivery>,
    ) -> Devices {
        Devices {
            auth,
            on_expiry,
            delivery,
            anonymous: false,
        }
    }
}

/// A resume parameter from the `auth` object (v5 clients, parsed once by the caller),
/// else the query (v4 clients): a string, or any other JSON value as its text (`Err`).
/// JSON `null` counts as absent.
fn param(
    auth: Option<&mut serde_json::Map<String, serde_json::Value>>,
    hs: &Handshake<'_>,
    name: &str,
) -> Option<Result<String, String>> {
    if let Some(fields) = auth {
        return match fields.remove(name)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(Ok(s)),
            other => Some(Err(other.to_string())),
        };
    }
    hs.query_param(name).map(Ok)
}

fn resume_of(hs: &Handshake<'_>) -> Result<(Resume, Option<String>), ConnectError> {
    let mut auth = match hs.auth.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(serde_json::Value::Object(fields))) => Some(fields),
        _ => None,
    };
    let device = match param(auth.as_mut(), hs, "deviceId") {
        None => None,
        Some(Err(other)) => {
            return Err(ConnectError::new(format!(
                "invalid deviceId: expected a string, got `{}`",
                shorten(&other)
            )))
        }
        Some(Ok(d)) if d.is_empty() => {
            return Err(ConnectError::new(
                "invalid deviceId: empty (leave it out for no device)",
            ))
        }
        Some(Ok(d)) if d.len() > MAX_DEVICE_ID => {
            return Err(ConnectError::new(format!(
                "invalid deviceId: longer than {MAX_DEVICE_ID} bytes (UTF-8)"
            )))
        }
        Some(Ok(d)) => Some(d),
    };
    let resume = match param(auth.as_mut(), hs, "since") {
        // A number in `auth` arrives as its JSON text, a string as itself.
        Some(Ok(s) | Err(s)) => match s.parse::<u64>() {
            Ok(n) => Resume::Since(n),
            Err(_) => {
                return Err(ConnectError::new(format!(
                    "invalid since: expected a whole number from 0 up, got `{}`",
                    shorten(&s)
                )))
            }
        },
        None if device.is_some() => Resume::Device,
        None => Resume::Live,
    };
    Ok((resume, device))
}

/// At most 64 bytes of a bad value, for an error message.
fn shorten(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Handler for Devices {
    fn authorize(&self, socket: &Socket, hs: &Handshake<'_>) -> Result<(), ConnectError> {
        let identity = match self.auth.identify(hs) {
            Ok(identity) => identity,
            // Anonymous only with no credential at all: an empty token, or a userId
            // outside development mode, is a client that meant to sign in.
            Err(AuthError::Missing) if self.anonymous && !shows_credentials(hs) => {
                // No credentials at all: broadcasts only, no inbox, no user room.
                self.delivery
                    .join(ANONYMOUS, socket, Resume::Live)
                    .map_err(|e| {
                        let d = &self.delivery;
                        refused(d, socket, "too_many_connections", &e.to_string(), None);
                        ConnectError::new(e.to_string())
                    })?;
                socket.set_data(Client {
                    user: ANONYMOUS.into(),
                    device: None,
                    resume: Resume::Live,
                    reads: parking_lot::Mutex::new(None),
                });
                return Ok(());
            }
            Err(e) => {
                let reason = format!("unauthorized: {e}");
                refused(&self.delivery, socket, e.label(), &reason, None);
                return Err(ConnectError::new(reason));
            }
        };
        let user = identity.user;
        if self.delivery.is_revoked(&user, identity.issued) {
            let reason = "unauthorized: token revoked (issued before the user's revokeBefore)";
            refused(&self.delivery, socket, "revoked", reason, Some(&user));
            return Err(ConnectError::new(reason));
        }
        let (resume, device) = resume_of(hs).inspect_err(|e| {
            refused(
                &self.delivery,
                socket,
                "bad_request",
                &e.message,
                Some(&user),
            )
        })?;
        self.delivery.join(&user, socket, resume).map_err(|e| {
            let d = &self.delivery;
            refused(
                d,
                socket,
                "too_many_connections",
                &e.to_string(),
                Some(&user),
            );
            ConnectError::new(e.to_string())
        })?;
        tracing::debug!(user = %user, socket = %socket.id(), ?resume, "connected");
        if let (OnExpiry::Disconnect, leeway, Some(exp)) =
            (self.on_expiry.0, self.on_expiry.1, identity.expires)
        {
            // A token is good through its `exp` second (as the check at connect counts
            // it), so the connection ends as the next one begins.
            let end_ms = exp
                .saturating_add(leeway)
                .saturating_add(1)
                .saturating_mul(1000);
            let left = end_ms.saturating_sub(crate::vocab::now_ms());
            socket
                .session()
                .expire_after(std::time::Duration::from_millis(left));
        }
        socket.set_data(Client {
            user: user.into(),
            device: device.map(String::into_boxed_str),
            resume,
            reads: parking_lot::Mutex::new(None),
        });
        Ok(())
    }

    fn on_connect(&self, socket: &Socket, _hs: &Handshake<'_>) {
        let Some(client) = socket.data::<Client>() else {
            return;
        };
        if &*client.user == ANONYMOUS {
            return;
        }
        self.delivery.start(
            socket,
            &client.user,
            client.device.as_deref(),
            client.resume,
        );
    }

    fn on_event(&self, socket: &Socket, event: Event) {
        if event.name != "read" {
            return;
        }
        let Some(client) = socket.data::<Client>() else {
            return;
        };
        if &*client.user == ANONYMOUS {
            if let Some(id) = event.ack {
                let error = serde_json::json!({"error": "an anonymous connection has no inbox"});
                let _ = socket.ack(id, &Args::one(&error));
            }
            return;
        }
        let up_to = event
            .args
            .parse::<Vec<serde_json::Value>>()
            .ok()
            .and_then(|a| {
                a.first()
                    .and_then(|v| v.get("upTo"))
                    .and_then(|v| v.as_u64())
            });
        let Some(up_to) = up_to else {
            if let Some(id) = event.ack {
                let error = serde_json::json!({"error": "read needs {upTo: seq}, a whole number"});
                let _ = socket.ack(id, &Args::one(&error));
            }
            return;
        };
        {
            let mut reads = client.reads.lock();
            let reads = reads.get_or_insert_with(Box::default);
            if reads.in_flight {
                reads.next = Some(reads.next.map_or(up_to, |n| n.max(up_to)));
                if let Some(id) = event.ack {
                    if reads.acks.len() < MAX_WAITING_READS {
                        reads.acks.push(id);
                    } else {
                        let busy = serde_json::json!({"error": "too many reads waiting; retry"});
                        let _ = socket.ack(id, &Args::one(&busy));
                    }
                }
                return;
            }
            reads.in_flight = true;
        }
        let (delivery, socket) = (self.delivery.clone(), socket.clone());
        tokio::spawn(async move {
            let Some(client) = socket.data::<Client>() else {
                return;
            };
            let (mut up_to, mut acks): (u64, Vec<u64>) = (up_to, event.ack.into_iter().collect());
            loop {
                let reply = match delivery.read(&client.user, up_to, Some(&socket)).await {
                    Ok(stored) => serde_json::json!({"upTo": stored}),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                };
                for id in acks.drain(..) {
                    let _ = socket.ack(id, &Args::one(&reply));
                }
                let mut reads = client.reads.lock();
                let Some(reads) = reads.as_mut() else { return };
                match reads.next.take() {
                    Some(next) => {
                        up_to = next;
                        acks = std::mem::take(&mut reads.acks);
                    }
                    None => {
                        reads.in_flight = false;
                        return;
                    }
                }
            }
        });
    }

    fn on_ack(&self, socket: &Socket, seq: u64, _args: Args) {
        if let Some(client) = socket.data::<Client>().filter(|c| &*c.user != ANONYMOUS) {
            self.delivery
                .ack(&client.user, socket, seq, client.device.as_deref());
        }
    }

    fn on_disconnect(&self, socket: &Socket, reason: DisconnectReason) {
        if let Some(client) = socket.data::<Client>() {
            self.delivery.leave(&client.user, socket);
            tracing::debug!(user = %client.user, socket = %socket.id(), reason = reason.as_str(), "disconnected");
        }
    }
}
