//! The admin listener (`[admin] listen`, default `127.0.0.1:9100`): `/metrics`,
//! `/healthz`, `/readyz`, and the admin page with its API, which call the same services
//! as the public API. Its credential is `[admin] password`, given as HTTP Basic (any
//! user name) or as a bearer token; required off loopback, and whenever it is set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::{delete, get, post};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;

use super::keys::{bearer, constant_time_eq};
use super::service::HttpService;
use super::{healthz, readyz, user_id, ApiError, ApiJson, ApiState};
use crate::push::PushRequest;
use crate::transport::Fallback;

/// Admin settings (`[admin]`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (metrics, health, admin page); empty turns it off.
    /// Default `127.0.0.1:9100`.
    pub listen: String,
    /// The admin credential (HTTP Basic password with any user name, or a bearer token).
    /// Required when `listen` is not a loopback address. Default: none.
    pub password: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9100".into(),
            password: String::new(),
        }
    }
}

impl AdminConfig {
    /// Refuses an admin listener open to the network without a password.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Ok(());
        }
        let addrs: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&self.listen)
                .map_err(|e| {
                    format!(
                "admin.listen must be HOST:PORT or ADDRESS:PORT (or empty for none), got `{}`: {e}",
                self.listen
            )
                })?
                .collect();
        if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            if self.password.is_empty() {
                return Err(format!(
                    "admin.listen {open} is not a loopback address: set admin.password (metrics, the admin page and its controls would be open to the network), or listen on 127.0.0.1"
                ));
            }
        }
        Ok(())
    }
}

/// Paths served without the credential: probes.
fn open_path(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// The one admin route that takes a body.
const WITH_BODY: &str = "/admin/api/push";

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1`,
/// `[::1]`, with any port). Without a password the admin listener answers only such
/// names: a web page whose own name was rebound to 127.0.0.1 (DNS rebinding) sends its
/// own name, and is refused.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error answer of the admin listener.
fn refusal(status: StatusCode, code: &str, message: &str) -> http::Response<Bytes> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut b = http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if status == StatusCode::UNAUTHORIZED {
        b = b.header(header::WWW_AUTHENTICATE, "Basic realm=\"herald admin\"");
    }
    b.body(Bytes::from(body.to_string())).unwrap_or_default()
}

/// Logs a refused admin request, at most once a second.
fn log_refused(path: &str, why: &'static str) {
    static EVERY: crate::vocab::LogEvery = crate::vocab::LogEvery::new();
    if let Some(held) = EVERY.allow(1000) {
        tracing::warn!(
            path,
            reason = why,
            similar_since = held,
            "admin request refused"
        );
    }
}

/// The admin routes.
pub fn routes(state: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/metrics", get(super::metrics::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/api/stats", get(super::metrics::stats))
        .route("/admin/api/nodes", get(nodes))
        .route("/admin/api/users/{id}", get(lookup))
        .route("/admin/api/users/{id}/connections", delete(disconnect))
        .route("/admin/api/push", post(push))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            // Never framed (its buttons act), and nothing loaded from elsewhere.
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        Html(include_str!("admin.html")),
    )
}

async fn nodes(State(state): State<ApiState>) -> impl IntoResponse {
    Json(super::node_list(&state).await)
}

async fn disconnect(
    State(state): State<ApiState>,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = user_id(user)?;
    let kicked = state.delivery.disconnect_user(&user, None).await?;
    tracing::info!(user = %user, disconnected = kicked.disconnected, "user disconnected from the admin page");
    Ok(Json(kicked))
}

async fn push(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(state.push.push(req).await?))
}

/// Everything about one user: their connections here (and counts on the other nodes),
/// their inbox's counters, and their latest messages with each device's state.
async fn lookup(
    State(state): State<ApiState>,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = user_id(user)?;
    let here: Vec<serde_json::Value> = state
        .hub
        .user_sockets(&user)
        .iter()
        .map(|socket| {
            let s = socket.session();
            serde_json::json!({
                "sid": s.sid().as_str(),
                "transport": s.transport().unwrap_or("closing"),
                "eio": if s.eio() == crate::transport::Eio::V4 { 4 } else { 3 },
                "remote": s.counted_ip().map(|ip| ip.to_string()),
                "connectedAt": socket.connected_at(),
                "device": crate::delivery::devices::device_of(socket),
            })
        })
        .collect();
    let (node, _) = &*state.node;
    let mut presence = vec![serde_json::json!({"node": node, "connections": here.len()})];
    if let Some(c) = &state.cluster {
        for (n, count) in c.presence_by_node(&user).await {
            presence.push(serde_json::json!({"node": n, "connections": count}));
        }
    }
    let unread = state.store.unread(&user).await?;
    let after = unread.last_seq.saturating_sub(10);
    let mut recent = Vec::new();
    for m in state.store.messages(&user, after, 10).await? {
        let devices = state
            .store
            .message_state(&m.id)
            .await?
            .and_then(|s| s.recipients.into_iter().find(|r| r.user == user))
            .map(|r| serde_json::to_value(r).unwrap_or_default());
        recent.push(serde_json::json!({
            "id": m.id,
            "seq": m.seq,
            "event": m.event,
            "ts": m.ts,
            "deliveredAt": m.delivered_at,
            "readAt": m.read_at,
            "state": devices,
        }));
    }
    recent.reverse();
    Ok(Json(serde_json::json!({
        "user": user,
        "presence": presence,
        "connections": here,
        "inbox": unread,
        "recent": recent,
    })))
}

/// Serves the admin routes behind the admin credential.
pub struct AdminService {
    inner: HttpService,
    password: Option<String>,
}

impl AdminService {
    pub fn new(router: axum::Router, password: &str) -> AdminService {
        AdminService {
            inner: HttpService::new(router, 1 << 20),
            password: (!password.is_empty()).then(|| password.to_owned()),
        }
    }

    fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(password) = &self.password else {
            return true;
        };
        let presented = bearer(headers).map(str::to_owned).or_else(|| {
            let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, b64) = v.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            text.split_once(':').map(|(_, p)| p.to_owned())
        });
        presented.is_some_and(|p| constant_time_eq(p.as_bytes(), password.as_bytes()))
    }
}

impl Fallback for AdminService {
    fn precheck(&self, request: &http::request::Parts) -> Option<http::Response<Bytes>> {
        let path = request.uri.path();
        // Probes answer anyone (a load balancer names the node by its address).
        if self.password.is_none() && !open_path(path) {
            // Exactly one Host, readable, naming loopback; an absolute-form target's
            // authority too. Anything else is refused rather than guessed at.
            let mut hosts = request.headers.get_all(header::HOST).iter();
            let host = match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.to_str().ok(),
                _ => None,
            };
            let target = request.uri.authority().map(|a| a.as_str());
            if !host.is_some_and(loopback_host) || !target.is_none_or(loopback_host) {
                log_refused(path, "a Host other than localhost and no admin.password");
                return Some(refusal(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "without admin.password the admin listener answers only requests for localhost, 127.0.0.1 or [::1]",
                ));
            }
        }
        if !open_path(path) && !self.authorized(&request.headers) {
            log_refused(path, "no or a wrong admin.password");
            return Some(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin listener needs admin.password (HTTP Basic, any user name, or Bearer)",
            ));
        }
        // Only the test push takes a body: none is read (or held) for anything else.
        let has_body = request.headers.contains_key(header::TRANSFER_ENCODING)
            || request
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        (has_body && !(path == WITH_BODY && request.method == http::Method::POST)).then(|| {
            refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "this endpoint takes no request body",
            )
        })
    }

    fn call(
        &self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = http::Response<Bytes>> + Send>> {
        self.inner.call(request)
    }

    fn max_body(&self) -> usize {
        self.inner.max_body()
    }

    fn too_large(&self) -> http::Response<Bytes> {
        self.inner.too_large()
    }
}

/// The admin router behind its credential, ready for the transport.
pub fn service(state: ApiState, password: &str) -> Arc<dyn Fallback> {
    Arc::new(AdminService::new(routes(state), password))
}
