//! API keys and what each may do: the routes of the API, the scope each needs, and the
//! one check of a presented key. A key in `api.keys` may do everything; a key in
//! `api.scoped_keys` has a name (what the logs show) and the scopes listed.

use std::borrow::Cow;

use http::{header, HeaderMap, Method};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Push, and move a user's read position.
    Push,
    /// Read presence, inboxes, message state, the webhook outbox, the nodes.
    Read,
    /// Disconnect users, revoke their tokens, erase their data.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Push => "push",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// A key with a name and some scopes (`[[api.scoped_keys]]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    /// What logs call this key (never the key itself).
    pub name: String,
    /// The bearer key.
    pub key: String,
    /// What it may do: any of `push`, `read`, `admin`.
    pub scopes: Vec<Scope>,
}

/// The key a request presented, once recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `keys[N]` for a key of `api.keys`, else its configured name.
    pub name: Cow<'static, str>,
    scopes: Vec<Scope>,
}

impl Caller {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why a request's key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that is not configured.
    Unknown,
    /// A known key without the scope the route needs.
    Scope {
        key: Cow<'static, str>,
        needs: Scope,
    },
}

/// Every configured key, checked in constant time per key.
#[derive(Debug, Default)]
pub struct Keys {
    full: Vec<String>,
    scoped: Vec<ScopedKey>,
    /// No key needed (development mode with no keys configured).
    open: bool,
}

impl Keys {
    pub fn new(full: &[String], scoped: &[ScopedKey], dev: bool) -> Keys {
        Keys {
            full: full.to_vec(),
            scoped: scoped.to_vec(),
            open: dev && full.is_empty() && scoped.is_empty(),
        }
    }

    /// Whether requests need no key at all.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The key presented in `headers`, if it is one of ours.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if self.open {
            return Ok(Caller {
                name: "open (--dev-auth)".into(),
                scopes: vec![Scope::Push, Scope::Read, Scope::Admin],
            });
        }
        let presented = bearer(headers).ok_or(Refusal::Missing)?;
        // Compare every key in full so timing does not tell how much of a key matched.
        let mut found = None;
        for (i, k) in self.full.iter().enumerate() {
            if constant_time_eq(k.as_bytes(), presented.as_bytes()) {
                found.get_or_insert(Caller {
                    name: format!("keys[{i}]").into(),
                    scopes: vec![Scope::Push, Scope::Read, Scope::Admin],
                });
            }
        }
        for k in &self.scoped {
            if constant_time_eq(k.key.as_bytes(), presented.as_bytes()) {
                found.get_or_insert(Caller {
                    name: k.name.clone().into(),
                    scopes: k.scopes.clone(),
                });
            }
        }
        found.ok_or(Refusal::Unknown)
    }

    /// Checks a request to a route that needs `scope`.
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, Refusal> {
        let caller = self.caller(headers)?;
        if caller.may(scope) {
            Ok(caller)
        } else {
            Err(Refusal::Scope {
                key: caller.name,
                needs: scope,
            })
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, as
/// RFC 9110 has it).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API's routes: method, path (with `{id}` for one segment), the scope needed.
const ROUTES: &[(Method, &str, Scope)] = &[
    (Method::POST, "/api/v1/push", Scope::Push),
    (Method::POST, "/api/v1/users/{id}/read", Scope::Push),
    (Method::GET, "/api/v1/users/{id}/presence", Scope::Read),
    (Method::GET, "/api/v1/users/{id}/messages", Scope::Read),
    (Method::GET, "/api/v1/users/{id}/unread", Scope::Read),
    (Method::GET, "/api/v1/messages/{id}", Scope::Read),
    (Method::GET, "/api/v1/webhooks", Scope::Read),
    (Method::GET, "/api/v1/nodes", Scope::Read),
    (
        Method::DELETE,
        "/api/v1/users/{id}/connections",
        Scope::Admin,
    ),
    (Method::DELETE, "/api/v1/users/{id}/messages", Scope::Admin),
];

fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some("{id}"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// The route a request is for, and the scope it needs; `None` for anything else (the
/// OpenAPI document, unknown paths: the router answers those).
pub fn route(method: &Method, path: &str) -> Option<(&'static str, Scope)> {
    ROUTES
        .iter()
        .find(|(m, p, _)| m == method && matches(p, path))
        .map(|(_, p, s)| (*p, *s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn routes_and_scopes() {
        assert_eq!(
            route(&Method::DELETE, "/api/v1/users/u1/connections"),
            Some(("/api/v1/users/{id}/connections", Scope::Admin))
        );
        assert_eq!(route(&Method::GET, "/api/v1/users//messages"), None);
        assert_eq!(route(&Method::GET, "/api/v1/users/a/b/messages"), None);
        assert_eq!(route(&Method::PUT, "/api/v1/push"), None);
        assert_eq!(
            route(&Method::GET, "/api/v1/nodes"),
            Some(("/api/v1/nodes", Scope::Read))
        );
    }

    #[test]
    fn the_openapi_document_lists_every_route_with_its_scope() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("valid JSON");
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                if path != "/api/v1/openapi.json" {
                    let scope = op["x-herald-scope"].as_str().unwrap_or("none");
                    documented.push((method.to_uppercase(), path.clone(), scope.to_owned()));
                }
            }
        }
        let mut served: Vec<_> = ROUTES
            .iter()
            .map(|(m, p, s)| (m.to_string(), p.to_string(), s.as_str().to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn keys_have_names_and_scopes() {
        let keys = Keys::new(
            &["full-key-0123456789".into()],
            &[ScopedKey {
                name: "grafana".into(),
                key: "read-key-0123456789".into(),
                scopes: vec![Scope::Read],
            }],
            false,
        );
        let full = keys
            .check(&headers("Bearer full-key-0123456789"), Scope::Admin)
            .unwrap();
        assert_eq!(full.name, "keys[0]");
        let reader = headers("bearer read-key-0123456789");
        assert_eq!(keys.check(&reader, Scope::Read).unwrap().name, "grafana");
        assert_eq!(
            keys.check(&reader, Scope::Push),
            Err(Refusal::Scope {
                key: "grafana".into(),
                needs: Scope::Push
            })
        );
        assert_eq!(
            keys.check(&headers("Bearer nope"), Scope::Read),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            keys.check(&HeaderMap::new(), Scope::Read),
            Err(Refusal::Missing)
        );
    }
}
