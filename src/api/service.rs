//! An axum router served as the transport's fallback: keys checked before a body is
//! read, every API request counted by route and status, every refused one logged (by
//! the key's name, never the key), at most once a second.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::header;
use bytes::Bytes;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::keys::{self, Keys, Refusal};
use super::ApiError;
use crate::metrics::{counter_vec, IntCounterVec, Registry};
use crate::transport::Fallback;

/// API metrics.
#[derive(Debug)]
pub struct ApiMetrics {
    pub registry: Registry,
    /// Requests by route (its pattern) and status.
    pub requests: IntCounterVec,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let r = Registry::new();
        ApiMetrics {
            requests: counter_vec(
                &r,
                "herald_api_requests_total",
                "HTTP API requests, by route (its pattern, or `other`) and status.",
                &["route", "status"],
            ),
            registry: r,
        }
    }
}

/// Serves an axum router as the transport's fallback.
pub struct HttpService {
    router: axum::Router,
    max_body: usize,
    /// The API's keys, checked before a request's body is read.
    keys: Option<Arc<Keys>>,
    metrics: Option<Arc<ApiMetrics>>,
}

impl HttpService {
    /// `max_body` bounds request bodies; the transport refuses bigger ones before they
    /// are read.
    pub fn new(router: axum::Router, max_body: usize) -> HttpService {
        HttpService {
            router,
            max_body,
            keys: None,
            metrics: None,
        }
    }

    /// Checks the API key (and its scope) of requests to the API before their body is
    /// read: a caller without a valid key gets 401 (403 without the scope) and nothing
    /// else, whatever it sends. Counts requests into `metrics`.
    pub fn with_keys(mut self, keys: Arc<Keys>, metrics: Arc<ApiMetrics>) -> HttpService {
        self.keys = Some(keys);
        self.metrics = Some(metrics);
        self
    }
}

/// Counts an API request into `herald_api_requests_total`.
fn count(
    metrics: Option<&ApiMetrics>,
    method: &http::Method,
    path: &str,
    status: http::StatusCode,
) {
    let Some(m) = metrics else { return };
    if !path.starts_with("/api/") {
        return;
    }
    let route = match keys::route(method, path) {
        Some((pattern, _)) => pattern,
        None if path == "/api/v1/openapi.json" => "/api/v1/openapi.json",
        None => "other",
    };
    m.requests
        .with_label_values(&[route, status.as_str()])
        .inc();
}

/// Whether a path needs an API key (everything under `/api/` but the OpenAPI document).
fn needs_key(path: &str) -> bool {
    path.starts_with("/api/") && path != "/api/v1/openapi.json"
}

/// Logs a refused API request (status, code, the key's name: never the key), at most
/// once a second.
fn log_refused(status: http::StatusCode, code: &str, key: Option<&str>, path: &str) {
    static EVERY: crate::vocab::LogEvery = crate::vocab::LogEvery::new();
    if let Some(held) = EVERY.allow(1000) {
        tracing::warn!(
            status = status.as_u16(),
            code,
            key = key.unwrap_or("none"),
            path,
            similar_since = held,
            "API request refused"
        );
    }
}

impl Fallback for HttpService {
    fn precheck(&self, request: &http::request::Parts) -> Option<http::Response<Bytes>> {
        let path = request.uri.path();
        if !needs_key(path) {
            // Nothing outside the API takes a body: none is read (or held) for them.
            let has_body = request.headers.contains_key(header::TRANSFER_ENCODING)
                || request
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0");
            return has_body.then(|| error_response(ApiError::NoBodyHere));
        }
        let keys = self.keys.as_ref()?;
        let refusal = match keys::route(&request.method, path) {
            Some((_, scope)) => keys.check(&request.headers, scope).err(),
            // Unknown routes still need a known key (the router answers 404 or 405).
            None => keys.caller(&request.headers).err(),
        }?;
        let (key, error) = match refusal {
            Refusal::Scope { ref key, .. } => (Some(key.to_string()), ApiError::from(refusal)),
            other => (None, ApiError::from(other)),
        };
        let response = error_response(error);
        let code = if response.status() == http::StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthorized"
        };
        log_refused(response.status(), code, key.as_deref(), path);
        count(
            self.metrics.as_deref(),
            &request.method,
            path,
            response.status(),
        );
        Some(response)
    }

    fn call(
        &self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = http::Response<Bytes>> + Send>> {
        let router = self.router.clone();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // Which key called is worked out only if the call is refused (for the log).
        let keys = self.keys.clone();
        let auth = request.headers().get(header::AUTHORIZATION).cloned();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let request = request.map(axum::body::Body::from);
            let response = match router.oneshot(request).await {
                Ok(r) => r,
                Err(e) => match e {},
            };
            let (parts, body) = response.into_parts();
            let bytes = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::new(),
            };
            count(metrics.as_deref(), &method, &path, parts.status);
            if parts.status.is_client_error() && path.starts_with("/api/") {
                let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let mut headers = http::HeaderMap::new();
                if let Some(a) = auth {
                    headers.insert(header::AUTHORIZATION, a);
                }
                let key = keys
                    .and_then(|k| k.caller(&headers).ok())
                    .map(|c| c.name.into_owned());
                log_refused(parts.status, &code, key.as_deref(), &path);
            }
            http::Response::from_parts(parts, bytes)
        })
    }

    fn max_body(&self) -> usize {
        self.max_body
    }

    fn too_large(&self) -> http::Response<Bytes> {
        error_response(ApiError::PayloadTooLarge)
    }
}

/// An error as a response the transport writes itself.
pub(crate) fn error_response(e: ApiError) -> http::Response<Bytes> {
    let (status, code) = e.parts();
    let body = serde_json::json!({"error": {"code": code, "message": e.to_string()}});
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap_or_default()
}
