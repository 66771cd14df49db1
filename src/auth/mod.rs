//! Who a connecting client is: a JWT whose `sub` is the user id (HS256 with a secret, or
//! RS256/ES256 with a PEM public key), or, in development mode only, a `userId` taken
//! unverified.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::protocol::Handshake;
use crate::vocab::UserId;

/// Client authentication settings (`[auth]` in the config file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret for HS256 (or HS384, HS512) client tokens. Default: none.
    pub jwt_secret: String,
    /// Path of a PEM public key for RS256 or ES256 tokens. Default: none.
    pub jwt_public_key_file: String,
    /// The algorithm tokens are signed with: `HS256` (the default with a secret), `HS384`
    /// or `HS512` with `jwt_secret`; `RS256` (the default with a key) or `ES256` with
    /// `jwt_public_key_file`. Default empty: the default for the key given.
    pub jwt_algorithm: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`. Default 0.
    pub leeway_secs: u64,
    /// The `iss` a token must carry; empty: not checked. Default empty.
    pub issuer: String,
    /// An `aud` a token must carry; empty: not checked. Default empty.
    pub audience: String,
    /// What happens to a connection whose token expires while it is connected. Default
    /// `keep`.
    pub on_expiry: OnExpiry,
    /// Admit clients that show no credentials at all: they join no user's room and get
    /// broadcasts only. Default false; on with `--demo`.
    pub anonymous: bool,
    /// Seconds a revocation (`revokeBefore` of `DELETE /api/v1/users/{id}/connections`)
    /// stands: longer than any token you issue lives. Default 2,592,000 (30 days).
    pub revocation_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            jwt_public_key_file: String::new(),
            jwt_algorithm: String::new(),
            leeway_secs: 0,
            issuer: String::new(),
            audience: String::new(),
            on_expiry: OnExpiry::default(),
            anonymous: false,
            revocation_ttl_secs: 30 * 86_400,
        }
    }
}

/// What happens to a connection when its token expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// The token is checked at connect only; the connection stays open. A client that
    /// reconnects later needs a valid token again.
    #[default]
    Keep,
    /// The connection is closed at the token's `exp` (plus `leeway_secs`): the client
    /// sees a transport close, reconnects by itself, and is admitted again only with a
    /// fresh token (socket.io-client 4.x: pass `auth` as a callback that fetches one);
    /// with the old one it gets `connect_error` "unauthorized: token expired".
    Disconnect,
}

/// Why a client was refused; shown to it as `unauthorized: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("missing token (userId is taken only in development mode, --dev-auth)")]
    UserIdWithoutDev,
    #[error("token expired")]
    Expired,
    /// Why, in a few words: `bad signature`, `no exp claim`, `not valid yet (nbf)`, …
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("invalid user id")]
    BadUser,
    #[error("no authentication configured on this server")]
    NotConfigured,
}

impl AuthError {
    /// The reason label of `herald_client_connects_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::UserIdWithoutDev => "missing_token",
            AuthError::Expired => "expired",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::BadUser => "bad_user",
            AuthError::NotConfigured => "not_configured",
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.jwt_algorithm must be HS256, HS384 or HS512 with auth.jwt_secret, RS256 or ES256 with auth.jwt_public_key_file; got `{0}`")]
    Algorithm(String),
    #[error("cannot read auth.jwt_public_key_file `{0}`: {1}")]
    KeyFile(String, std::io::Error),
    #[error("auth.jwt_public_key_file `{0}` is not a valid PEM key: {1}")]
    Key(String, jsonwebtoken::errors::Error),
    #[error("set either auth.jwt_secret or auth.jwt_public_key_file, not both")]
    Both,
}

enum Mode {
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
    },
    Dev,
    None,
}

/// Verifies clients at connect.
pub struct Authenticator {
    mode: Mode,
}

/// The claims herald reads. Both are required by the validation (which names a missing
/// one); optional here so that a missing one reaches it rather than failing to parse.
#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
}

/// Who a client is, and until when (Unix seconds; none in development mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub expires: Option<u64>,
    /// When the credential was issued (the token's `iat`, Unix seconds): `None` for a
    /// token without one. Development mode has no token: its connects count as issued
    /// now.
    pub issued: Option<u64>,
}

impl Authenticator {
    /// Builds the verifier; `dev` takes `userId` unverified instead of a token.
    pub fn new(cfg: &AuthConfig, dev: bool) -> Result<Authenticator, AuthConfigError> {
        if dev {
            return Ok(Authenticator { mode: Mode::Dev });
        }
        let (key, alg) = match (
            cfg.jwt_secret.is_empty(),
            cfg.jwt_public_key_file.is_empty(),
        ) {
            (false, false) => return Err(AuthConfigError::Both),
            (true, true) => return Ok(Authenticator { mode: Mode::None }),
            (false, true) => (
                DecodingKey::from_secret(cfg.jwt_secret.as_bytes()),
                match cfg.jwt_algorithm.as_str() {
                    "" | "HS256" => Algorithm::HS256,
                    "HS384" => Algorithm::HS384,
                    "HS512" => Algorithm::HS512,
                    other => return Err(AuthConfigError::Algorithm(other.to_owned())),
                },
            ),
            (true, false) => {
                let path = &cfg.jwt_public_key_file;
                let pem =
                    std::fs::read(path).map_err(|e| AuthConfigError::KeyFile(path.clone(), e))?;
                match cfg.jwt_algorithm.as_str() {
                    "" | "RS256" => (
                        DecodingKey::from_rsa_pem(&pem)
                            .map_err(|e| AuthConfigError::Key(path.clone(), e))?,
                        Algorithm::RS256,
                    ),
                    "ES256" => (
                        DecodingKey::from_ec_pem(&pem)
                            .map_err(|e| AuthConfigError::Key(path.clone(), e))?,
                        Algorithm::ES256,
                    ),
                    other => return Err(AuthConfigError::Algorithm(other.to_owned())),
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        if !cfg.issuer.is_empty() {
            validation.set_issuer(&[&cfg.issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if cfg.audience.is_empty() {
            // Tokens made for several services carry an `aud`; it is not ours to check
            // unless asked to.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        Ok(Authenticator {
            mode: Mode::Jwt {
                key,
                validation: Box::new(validation),
            },
        })
    }

    /// Whether clients can be admitted at all (a token key or development mode).
    pub fn is_configured(&self) -> bool {
        !matches!(self.mode, Mode::None)
    }

    /// The user id of a connecting client.
    pub fn user(&self, hs: &Handshake<'_>) -> Result<String, AuthError> {
        self.identify(hs).map(|i| i.user)
    }

    /// Who a connecting client is and when its credentials expire.
    pub fn identify(&self, hs: &Handshake<'_>) -> Result<Identity, AuthError> {
        match &self.mode {
            Mode::None => Err(AuthError::NotConfigured),
            Mode::Dev => {
                let user = credential(hs, "userId").ok_or(AuthError::Missing)?;
                Ok(Identity {
                    user: check_user(user)?,
                    expires: None,
                    issued: Some(crate::vocab::now_ms() / 1000),
                })
            }
            Mode::Jwt { key, validation } => {
                let Some(token) = credential(hs, "token").filter(|t| !t.is_empty()) else {
                    return Err(if credential(hs, "userId").is_some() {
                        AuthError::UserIdWithoutDev
                    } else {
                        AuthError::Missing
                    });
                };
                let data = jsonwebtoken::decode::<Claims>(&token, key, validation)
                    .map_err(|e| refusal(&token, e.kind()))?;
                Ok(Identity {
                    user: check_user(data.claims.sub.unwrap_or_default())?,
                    expires: data.claims.exp,
                    issued: data.claims.iat,
                })
            }
        }
    }
}

/// Why a token was refused, in words a developer can act on (never the token itself).
fn refusal(token: &str, kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    let why = match kind {
        K::ExpiredSignature => return AuthError::Expired,
        _ if token.starts_with("Bearer ") || token.starts_with("bearer ") => {
            "remove the `Bearer ` prefix: the token goes in as it is"
        }
        K::InvalidSignature => "bad signature",
        K::InvalidAlgorithm => {
            "signed with an algorithm this server does not accept (auth.jwt_algorithm)"
        }
        K::ImmatureSignature => "not valid yet (nbf)",
        K::InvalidIssuer => "wrong issuer (iss)",
        K::InvalidAudience => "wrong audience (aud)",
        K::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "no exp claim (tokens must expire)",
            "sub" => "no sub claim (the user id)",
            "iss" => "no iss claim",
            "aud" => "no aud claim",
            _ => "a required claim is missing",
        },
        K::Json(_) => "unreadable claims (sub must be a string, exp a number)",
        K::InvalidToken | K::Base64(_) | K::Utf8(_) => "not a JWT",
        _ => "refused",
    };
    AuthError::Invalid(why)
}

fn check_user(user: String) -> Result<String, AuthError> {
    UserId::parse(user)
        .map(UserId::into_string)
        .map_err(|_| AuthError::BadUser)
}

/// A credential from the `auth` object (v5 clients), else from the query (v4 clients,
/// which have no auth payload).
fn credential(hs: &Handshake<'_>, name: &str) -> Option<String> {
    let from_auth = hs.auth.and_then(|a| {
        let v: serde_json::Value = serde_json::from_str(a).ok()?;
        match v.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    });
    from_auth
        .or_else(|| hs.query_param(name))
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(sub: &str, exp_from_now: i64, secret: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({"sub": sub, "exp": now + exp_from_now});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn hs<'a>(auth: Option<&'a str>, query: &'a str) -> Handshake<'a> {
        Handshake {
            auth,
            query,
            connect_query: None,
        }
    }

    fn hmac() -> Authenticator {
        Authenticator::new(
            &AuthConfig {
                jwt_secret: "s3cret".into(),
                ..AuthConfig::default()
            },
            false,
        )
        .unwrap()
    }

    #[test]
    fn jwt_in_auth_or_query() {
        let a = hmac();
        let t = token("alice", 60, "s3cret");
        let auth = format!("{{\"token\":\"{t}\"}}");
        assert_eq!(a.user(&hs(Some(&auth), "")).unwrap(), "alice");
        let q = format!("EIO=3&token={t}");
        assert_eq!(a.user(&hs(None, &q)).unwrap(), "alice");
    }

    #[test]
    fn jwt_failures() {
        let a = hmac();
        let expired = format!("{{\"token\":\"{}\"}}", token("a", -120, "s3cret"));
        assert_eq!(a.user(&hs(Some(&expired), "")), Err(AuthError::Expired));
        let forged = format!("{{\"token\":\"{}\"}}", token("a", 60, "other"));
        assert_eq!(
            a.user(&hs(Some(&forged), "")),
            Err(AuthError::Invalid("bad signature"))
        );
        assert_eq!(a.user(&hs(Some("{}"), "")), Err(AuthError::Missing));
        assert_eq!(
            a.user(&hs(Some("{\"token\":\"garbage\"}"), "")),
            Err(AuthError::Invalid("not a JWT"))
        );
        let bearer = format!("{{\"token\":\"Bearer {}\"}}", token("a", 60, "s3cret"));
        let refused = a.user(&hs(Some(&bearer), "")).unwrap_err().to_string();
        assert!(refused.contains("`Bearer ` prefix"), "{refused}");
        let empty_sub = format!("{{\"token\":\"{}\"}}", token("", 60, "s3cret"));
        assert_eq!(a.user(&hs(Some(&empty_sub), "")), Err(AuthError::BadUser));
    }

    #[test]
    fn dev_mode_and_unconfigured() {
        let dev = Authenticator::new(&AuthConfig::default(), true).unwrap();
        assert_eq!(
            dev.user(&hs(Some("{\"userId\":\"u1\"}"), "")).unwrap(),
            "u1"
        );
        assert_eq!(dev.user(&hs(None, "userId=u2")).unwrap(), "u2");
        assert_eq!(dev.user(&hs(None, "")), Err(AuthError::Missing));
        let none = Authenticator::new(&AuthConfig::default(), false).unwrap();
        assert!(!none.is_configured());
        assert_eq!(
            none.user(&hs(Some("{\"userId\":\"u1\"}"), "")),
            Err(AuthError::NotConfigured)
        );
    }

    fn token_with(claims: serde_json::Value) -> String {
        let auth = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        format!("{{\"token\":\"{auth}\"}}")
    }

    #[test]
    fn issuer_and_audience_are_checked_when_set() {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let plain = hmac();
        let with_aud = token_with(serde_json::json!({"sub": "a", "exp": exp, "aud": "other"}));
        let id = plain.identify(&hs(Some(&with_aud), "")).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "a".into(),
                expires: Some(exp),
                issued: None,
            },
            "aud is ignored unless configured"
        );
        let strict = Authenticator::new(
            &AuthConfig {
                jwt_secret: "s3cret".into(),
                issuer: "https://id.example".into(),
                audience: "herald".into(),
                ..AuthConfig::default()
            },
            false,
        )
        .unwrap();
        let good = token_with(
            serde_json::json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "herald"}),
        );
        assert_eq!(strict.user(&hs(Some(&good), "")).unwrap(), "a");
        for (bad, why) in [
            (
                serde_json::json!({"sub": "a", "exp": exp, "iss": "https://evil.example", "aud": "herald"}),
                "wrong issuer (iss)",
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "other"}),
                "wrong audience (aud)",
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "aud": "herald"}),
                "no iss claim",
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "iss": "https://id.example"}),
                "no aud claim",
            ),
        ] {
            assert_eq!(
                strict.user(&hs(Some(&token_with(bad.clone())), "")),
                Err(AuthError::Invalid(why)),
                "{bad}"
            );
        }
        // What a developer gets wrong most, each named.
        for (claims, why) in [
            (
                serde_json::json!({"sub": "a"}),
                "no exp claim (tokens must expire)",
            ),
            (
                serde_json::json!({"exp": exp}),
                "no sub claim (the user id)",
            ),
            (
                serde_json::json!({"sub": 5, "exp": exp}),
                "unreadable claims (sub must be a string, exp a number)",
            ),
            (
                serde_json::json!({"sub": "a", "exp": exp, "nbf": exp + 600}),
                "not valid yet (nbf)",
            ),
        ] {
            assert_eq!(
                plain.user(&hs(Some(&token_with(claims.clone())), "")),
                Err(AuthError::Invalid(why)),
                "{claims}"
            );
        }
        // Another algorithm than the configured one.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"sub": "a", "exp": exp}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        let auth = format!("{{\"token\":\"{hs512}\"}}");
        assert_eq!(
            plain.user(&hs(Some(&auth), "")),
            Err(AuthError::Invalid(
                "signed with an algorithm this server does not accept (auth.jwt_algorithm)"
            ))
        );
        let accepting = Authenticator::new(
            &AuthConfig {
                jwt_secret: "s3cret".into(),
                jwt_algorithm: "HS512".into(),
                ..AuthConfig::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(accepting.user(&hs(Some(&auth), "")).unwrap(), "a");
        for bad in ["HS1", "RS256"] {
            let cfg = AuthConfig {
                jwt_secret: "s3cret".into(),
                jwt_algorithm: bad.into(),
                ..AuthConfig::default()
            };
            assert!(Authenticator::new(&cfg, false).is_err(), "{bad}");
        }
    }
}
