//! Cross-origin requests: the CORS headers for long-polling from the configured
//! allow-list, and which browser pages may open a WebSocket.

use super::engine::EngineInner;
use super::http::{Head, Response};

/// The CORS headers for a request, from the configured allow-list.
pub(super) fn cors_headers(engine: &EngineInner, head: &Head) -> Vec<(&'static str, String)> {
    let cfg = &engine.config;
    let Some(origin) = &head.origin else {
        return Vec::new();
    };
    let listed = cfg.cors_origins.iter().any(|o| o == origin);
    let wildcard = cfg.cors_origins.iter().any(|o| o == "*");
    let mut out = Vec::new();
    if cfg.cors_any_origin {
        // Development mode on loopback: a page from anywhere (a file: `null`) may poll,
        // with the credentials socket.io-client 2.x sends.
        out.push(("Access-Control-Allow-Origin", origin.clone()));
        out.push(("Vary", "Origin".to_owned()));
        out.push(("Access-Control-Allow-Credentials", "true".to_owned()));
    } else if listed {
        out.push(("Access-Control-Allow-Origin", origin.clone()));
        out.push(("Vary", "Origin".to_owned()));
        if cfg.cors_credentials {
            out.push(("Access-Control-Allow-Credentials", "true".to_owned()));
        }
    } else if wildcard {
        // Any origin, but never with credentials.
        out.push(("Access-Control-Allow-Origin", "*".to_owned()));
    }
    out
}

pub(super) fn with_cors(mut r: Response, cors: &[(&'static str, String)]) -> Response {
    for (k, v) in cors {
        r = r.header(k, v);
    }
    r
}

/// Whether a browser page from `head.origin` may open a WebSocket: always when no
/// allow-list is configured (as before), else when the origin is listed, `*` is, or the
/// page is this server's own (its origin names the `Host` it connects to).
pub(super) fn origin_allowed(engine: &EngineInner, head: &Head) -> bool {
    let list = &engine.config.cors_origins;
    let Some(origin) = &head.origin else {
        // Not a browser: origins are a browser's notion.
        return true;
    };
    if engine.config.cors_any_origin
        || list.is_empty()
        || list.iter().any(|o| o == origin || o == "*")
    {
        return true;
    }
    let authority = origin
        .split_once("://")
        .map_or(origin.as_str(), |(_, rest)| rest);
    head.host
        .as_deref()
        .is_some_and(|h| h.eq_ignore_ascii_case(authority))
}
