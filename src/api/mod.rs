//! The public HTTP API for backends, under `/api/v1`: JSON in and out, bearer API keys
//! with scopes ([`keys`]), errors as `{"error": {"code", "message"}}`. Handlers are thin:
//! extract, call the service, answer. Served on the same port as Socket.IO through the
//! transport's fallback ([`service`]), so the demo page lives here too. The admin
//! listener ([`admin`]) serves `/metrics` ([`metrics`]) and the admin page, calling the
//! same services.

use std::sync::Arc;

use std::collections::HashMap;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use http_body_util::BodyExt;

use crate::broker::redis::RedisBroker;
use crate::delivery::Delivery;
use crate::hub::Hub;
use crate::push::{PushError, PushRequest, PushService};
use crate::store::{Store, StoreError};
use crate::transport::Engine;
use crate::vocab::UserId;
use crate::webhooks::WebhookMetrics;

pub mod admin;
pub mod keys;
pub mod metrics;
mod service;

pub use keys::{Keys, Scope, ScopedKey};
pub use service::HttpService;

/// API settings (`[api]` in the config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer keys that may call the whole API (logged as `keys[0]`, `keys[1]`, ...).
    /// Default: none (the API refuses every call, except with `--dev-auth` on loopback
    /// and no key at all, where it is open).
    pub keys: Vec<String>,
    /// Keys with a name and some scopes (`push`, `read`, `admin`), as
    /// `[[api.scoped_keys]]` tables of `name`, `key`, `scopes`. Default: none.
    pub scoped_keys: Vec<ScopedKey>,
    /// Largest request body, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest number of users in one push. Default 10,000.
    pub max_users_per_push: usize,
    /// Seconds an idempotency key is remembered. Default 86,400.
    pub idempotency_window_secs: u64,
    /// Deepest nesting of arrays and objects in a push's `data` (1 to 100); deeper
    /// pushes are refused with 400. Default 64.
    pub max_data_depth: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys: Vec::new(),
            scoped_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            max_users_per_push: 10_000,
            idempotency_window_secs: 86_400,
            max_data_depth: 64,
        }
    }
}

/// Everything the handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub push: Arc<PushService>,
    pub hub: Arc<Hub>,
    pub store: Store,
    pub delivery: Arc<Delivery>,
    pub engine: Engine,
    pub cluster: Option<RedisBroker>,
    /// The API keys and their scopes.
    pub keys: Arc<Keys>,
    /// The webhook sender's counters, when webhooks are on.
    pub webhooks: Option<Arc<WebhookMetrics>>,
    /// Every metric of the node, for `/metrics` and the admin page.
    pub metrics: Arc<metrics::NodeMetrics>,
    /// This node's id (the cluster's `node_id`, or `local`), and when it started (ms).
    pub node: Arc<(String, u64)>,
    /// Set once the node drains (SIGTERM): `/readyz` answers 503 `draining`.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Every way an API call fails, converted to the wire in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("the API key `{key}` lacks the `{needs}` scope")]
    Forbidden { key: String, needs: &'static str },
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("this endpoint takes no request body")]
    NoBodyHere,
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("not found")]
    NotFound,
    #[error("method not allowed for this endpoint")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the message store is unavailable; retry later")]
    Unavailable,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge | ApiError::NoBodyHere => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> ApiError {
        match e {
            PushError::Invalid(m) => ApiError::BadRequest(m),
            PushError::IdempotencyConflict => ApiError::Conflict(e.to_string()),
            PushError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::IdempotencyConflict => ApiError::Conflict(e.to_string()),
            other => {
                tracing::warn!(error = %other, "store unavailable");
                ApiError::Unavailable
            }
        }
    }
}

/// A request's whole body.
async fn body_bytes(body: axum::body::Body) -> Result<bytes::Bytes, ApiError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("unreadable request body: {e}")))?
        .to_bytes())
}

/// A JSON body whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // serde would also take a struct written as an array of its fields: the API
        // takes objects only.
        let (parts, body) = req.into_parts();
        let bytes = body_bytes(body).await?;
        if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            if *first != b'{' {
                return Err(ApiError::BadRequest(
                    "the request body must be a JSON object".into(),
                ));
            }
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
                _ => ApiError::BadRequest(plain_json_error(&rejection.body_text())),
            }),
        }
    }
}

/// A JSON body's rejection in the API's words: where it failed and what was expected,
/// with no Rust type names (`expected struct To` reads `expected an object`).
fn plain_json_error(text: &str) -> String {
    let (what, detail) = if let Some(d) =
        text.strip_prefix("Failed to deserialize the JSON body into the target type: ")
    {
        ("invalid request", d)
    } else if let Some(d) = text.strip_prefix("Failed to parse the request body as JSON: ") {
        ("invalid JSON", d)
    } else if let Some(d) = text.strip_prefix("Failed to buffer the request body: ") {
        ("unreadable request body", d)
    } else {
        ("invalid request", text)
    };
    let mut d = detail.to_owned();
    // `expected struct Name` → `expected an object`.
    while let Some(at) = d.find("struct ") {
        let name_len = d[at + 7..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(d.len() - at - 7);
        d.replace_range(at..at + 7 + name_len, "an object");
    }
    for (rust, json) in [
        ("a sequence", "an array"),
        ("a map", "an object"),
        ("u64", "a whole number"),
        ("u32", "a whole number"),
        ("usize", "a whole number"),
        ("i64", "a whole number"),
        ("a borrowed string", "a string"),
        ("a boolean", "true or false"),
    ] {
        d = d.replace(&format!("expected {rust}"), &format!("expected {json}"));
    }
    format!("{what}: {d}")
}

/// Checks the request's key for `scope`.
fn authorize(state: &ApiState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    state
        .keys
        .check(headers, scope)
        .map(drop)
        .map_err(ApiError::from)
}

impl From<keys::Refusal> for ApiError {
    fn from(r: keys::Refusal) -> ApiError {
        match r {
            keys::Refusal::Missing | keys::Refusal::Unknown => ApiError::Unauthorized,
            keys::Refusal::Scope { key, needs } => ApiError::Forbidden {
                key: key.into_owned(),
                needs: needs.as_str(),
            },
        }
    }
}

/// A JSON body that may be left out (an empty body is `T::default()`).
pub struct MaybeJson<T>(pub T);

impl<T: serde::de::DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = body_bytes(body).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(MaybeJson(T::default()));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        ApiJson::from_request(req, state)
            .await
            .map(|ApiJson(v)| MaybeJson(v))
    }
}

async fn push(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PushRequest>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Push)?;
    Ok(Json(state.push.push(req).await?))
}

/// A user id from a path, held to the rules every user id is ([`UserId`]).
pub(crate) fn user_id(raw: String) -> Result<String, ApiError> {
    UserId::parse(raw)
        .map(UserId::into_string)
        .map_err(|e| ApiError::BadRequest(format!("invalid user id: {e}")))
}

/// A query parameter that must be a whole number from 0 up, if present.
fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "{name} must be a whole number from 0 up, got `{v}`"
                ))
            })
        })
        .transpose()
}

async fn messages(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let user = user_id(user)?;
    let after = number(&q, "after")?.unwrap_or(0);
    let limit = number(&q, "limit")?.unwrap_or(100);
    if limit == 0 {
        return Err(ApiError::BadRequest("limit must be at least 1".into()));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let messages = state.store.messages(&user, after, limit).await?;
    // Serialized as stored: `data` is written out as the JSON text it was pushed as,
    // never parsed into a value again.
    Ok(Json(Page { messages }))
}

/// A page of a user's inbox.
#[derive(serde::Serialize)]
struct Page {
    messages: Vec<crate::vocab::StoredMessage>,
}

async fn unread(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let user = user_id(user)?;
    Ok(Json(state.store.unread(&user).await?))
}

/// `POST /users/{id}/read` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReadRequest {
    up_to: u64,
}

async fn read(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    ApiJson(req): ApiJson<ReadRequest>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Push)?;
    let user = user_id(user)?;
    let up_to = state.delivery.read(&user, req.up_to, None).await?;
    Ok(Json(serde_json::json!({ "upTo": up_to })))
}

async fn message(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    match state.store.message_state(&id).await? {
        Some(m) => Ok(Json(m)),
        None => Err(ApiError::NotFound),
    }
}

/// The webhook outbox: how many events wait, how many are failing, the oldest.
async fn webhooks(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let Some(m) = &state.webhooks else {
        return Ok(Json(serde_json::json!({"enabled": false})));
    };
    let outbox = state.store.outbox().await?;
    Ok(Json(serde_json::json!({
        "enabled": true,
        "outbox": outbox,
        "sent": m.sent.get(),
        "failed": m.failed.get(),
        "dropped": m.dropped.get(),
        "skipped": m.gate.skipped(),
    })))
}

async fn presence(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    let user = user_id(user)?;
    let n = state.delivery.presence(&user).await;
    Ok(Json(serde_json::json!({"online": n > 0, "connections": n})))
}

/// `DELETE /users/{id}/connections` body (optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DisconnectRequest {
    /// Also refuse the user's tokens issued before this Unix second.
    revoke_before: Option<u64>,
}

/// How far ahead `revokeBefore` may be: further is taken for a mistake (milliseconds).
const MAX_REVOKE_AHEAD_SECS: u64 = 366 * 86_400;

/// Disconnects every connection of a user, cluster-wide; with `revokeBefore`, also
/// refuses their tokens issued before then.
async fn disconnect(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    MaybeJson(req): MaybeJson<DisconnectRequest>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let user = user_id(user)?;
    if let Some(t) = req.revoke_before {
        let now = crate::vocab::now_ms() / 1000;
        if t > now + MAX_REVOKE_AHEAD_SECS {
            return Err(ApiError::BadRequest(format!(
                "revokeBefore is Unix seconds; {t} is more than a year ahead (milliseconds?)"
            )));
        }
    }
    let kicked = state
        .delivery
        .disconnect_user(&user, req.revoke_before)
        .await?;
    tracing::info!(user = %user, disconnected = kicked.disconnected, revoked_before = kicked.revoked_before, "user disconnected by the API");
    Ok(Json(kicked))
}

/// Erases a user's stored messages, device positions and read state.
async fn erase(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let user = user_id(user)?;
    let erased = state.delivery.erase_user(&user).await?;
    tracing::info!(user = %user, erased, "user's stored messages erased by the API");
    Ok(Json(serde_json::json!({ "erased": erased })))
}

/// The cluster's nodes (this one first) with their connection counts.
async fn nodes(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers, Scope::Read)?;
    Ok(Json(node_list(&state).await))
}

/// This node and the others, as `{"self": id, "nodes": [...]}`.
pub(crate) async fn node_list(state: &ApiState) -> serde_json::Value {
    let (id, started_at) = &*state.node;
    let here = crate::broker::NodeInfo {
        id: id.clone(),
        connections: state.hub.sockets().saturating_sub(state.hub.anonymous()) as u64,
        users: state.hub.users() as u64,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: *started_at,
        updated_at: crate::vocab::now_ms(),
    };
    let mut nodes = vec![here];
    if let Some(c) = &state.cluster {
        use crate::broker::Broker as _;
        nodes.extend(c.nodes().await);
    }
    serde_json::json!({ "self": id, "nodes": nodes })
}

/// Liveness: the process answers.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 503 with `draining` once the node is shutting down, or with `degraded`
/// while the store cannot write (pushes would be refused) or routing does not work fully
/// (Redis away).
pub(crate) async fn readyz(State(state): State<ApiState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let body = serde_json::json!({"status": "draining"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let writable = state.store.writable().await;
    let ok = writable && state.delivery.healthy();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "store": {"writable": writable},
        "cluster": state.cluster.as_ref().map(|c| serde_json::json!({"node": c.node(), "redis": c.is_up()})),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The API routes (under `/api/v1`).
pub fn routes(state: ApiState) -> axum::Router {
    let body_limit = axum::extract::DefaultBodyLimit::disable();
    axum::Router::new()
        .route("/api/v1/push", post(push))
        .route("/api/v1/users/{id}/presence", get(presence))
        .route("/api/v1/users/{id}/messages", get(messages).delete(erase))
        .route("/api/v1/users/{id}/connections", delete(disconnect))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/users/{id}/unread", get(unread))
        .route("/api/v1/users/{id}/read", post(read))
        .route("/api/v1/messages/{id}", get(message))
        .route("/api/v1/webhooks", get(webhooks))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(body_limit)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::plain_json_error;

    #[test]
    fn json_errors_name_no_rust_types() {
        let cases = [
            (
                "Failed to deserialize the JSON body into the target type: to: invalid type: integer `5`, expected struct To at line 1 column 7",
                "invalid request: to: invalid type: integer `5`, expected an object at line 1 column 7",
            ),
            (
                "Failed to deserialize the JSON body into the target type: to.users: invalid type: string \"a\", expected a sequence at line 1 column 18",
                "invalid request: to.users: invalid type: string \"a\", expected an array at line 1 column 18",
            ),
            (
                "Failed to parse the request body as JSON: expected ident at line 1 column 2",
                "invalid JSON: expected ident at line 1 column 2",
            ),
            (
                "Failed to deserialize the JSON body into the target type: upTo: invalid type: string \"x\", expected u64 at line 1 column 12",
                "invalid request: upTo: invalid type: string \"x\", expected a whole number at line 1 column 12",
            ),
        ];
        for (axum, ours) in cases {
            assert_eq!(plain_json_error(axum), ours);
        }
    }
}
