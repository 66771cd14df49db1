//! The smallest HTTP/1.1 client a webhook needs: POSTs over kept-alive connections,
//! `http` or `https` (rustls, the built-in web roots plus `webhooks.ca_file`); of the
//! answer, the status is what counts, and a small body is read so that the connection
//! can carry the next event. The whole exchange is bounded by one timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::ConfigError;

/// Most bytes of a receiver's answer head read to find its status.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body read to keep its connection; a larger one closes it.
const MAX_KEPT_BODY: usize = 64 * 1024;
/// Idle connections kept for the next events.
const MAX_IDLE: usize = 32;

/// A connection to the receiver, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where events go.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    /// Path and query, from `/`.
    path: String,
    /// Set for `https`.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections the receiver kept open, for the next events.
    idle: Arc<parking_lot::Mutex<Vec<Box<dyn Io>>>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("https", &self.tls.is_some())
            .finish()
    }
}

/// Why a POST did not get a 2xx.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("the receiver's answer is not HTTP")]
    Malformed,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ConfigError> {
        // Said with credentials hidden: the message may end up in logs.
        let shown = redact(url);
        let bad = |why: &str| ConfigError::Url(format!("{why}, got `{shown}`"));
        let (https, rest) = match url.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (false, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (true, rest),
            _ => return Err(bad("must start with http:// or https://")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with(['?', '#']) {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.contains('@') {
            return Err(bad(
                "user:password@ is not supported (the request is signed; put a token in the path or query if the receiver needs one)",
            ));
        }
        if path.contains('#') {
            return Err(bad("a #fragment is never sent; remove it"));
        }
        if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad("spaces and control characters are not allowed"));
        }
        let default_port = if https { 443 } else { 80 };
        let port_of = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
            Ok(n) => Ok(n),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, port_of(p)?),
                None if after.is_empty() => (h, default_port),
                None => return Err(bad("unexpected text after the IPv6 address")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, port_of(p)?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let tls = https.then(|| Arc::new(tls_config(&[])));
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            path,
            tls,
            idle: Arc::default(),
        })
    }

    /// Also trusts the CA certificates in `file` (PEM), for an `https` receiver.
    pub fn with_ca_file(mut self, file: &str) -> Result<Endpoint, ConfigError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::CertificateDer;
        if file.is_empty() || self.tls.is_none() {
            return Ok(self);
        }
        let certs = CertificateDer::pem_file_iter(file)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ConfigError::Ca(format!("{file}: {e}")))?;
        if certs.is_empty() {
            return Err(ConfigError::Ca(format!("{file}: no certificate in it")));
        }
        self.tls = Some(Arc::new(tls_config(&certs)));
        Ok(self)
    }

    /// POSTs `body` as JSON with `headers`; `Ok` once the receiver answers 2xx.
    pub async fn post(
        &self,
        body: &[u8],
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(), PostError> {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herald/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.path,
            self.host_header(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (name, value) in headers {
            req.push_str(name);
            req.push_str(": ");
            req.push_str(value);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let attempt = async {
            // A kept connection the receiver has closed meanwhile fails before an answer:
            // then once more on a new one (the event is sent at least once either way).
            let kept = self.idle.lock().pop();
            if let Some(conn) = kept {
                match exchange(conn, &bytes).await {
                    Err(PostError::Io(_) | PostError::Malformed) => {}
                    done => return self.done(done),
                }
            }
            let conn = self.connect().await?;
            self.done(exchange(conn, &bytes).await)
        };
        let status = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| PostError::Timeout(timeout.as_millis()))??;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(PostError::Status(status))
        }
    }

    /// Keeps a connection the receiver left open; returns the status.
    fn done(&self, r: Result<(u16, Option<Box<dyn Io>>), PostError>) -> Result<u16, PostError> {
        let (status, conn) = r?;
        if let Some(conn) = conn {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        Ok(status)
    }

    async fn connect(&self) -> Result<Box<dyn Io>, PostError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(PostError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let Some(cfg) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
            PostError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .map_err(PostError::Tls)?;
        Ok(Box::new(tls))
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls.is_some() { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// `url` with any `user:password@` replaced.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://<hidden>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn tls_config(extra: &[rustls::pki_types::CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for c in extra {
        // A certificate the store refuses is left out; the handshake then says so.
        let _ = roots.add(c.clone());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this is not reached.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// Writes the request and reads the answer: its status, and the connection back when
/// the receiver keeps it open and its body was small enough to read.
async fn exchange(
    mut s: Box<dyn Io>,
    request: &[u8],
) -> Result<(u16, Option<Box<dyn Io>>), PostError> {
    s.write_all(request).await.map_err(PostError::Io)?;
    s.flush().await.map_err(PostError::Io)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (status, head_len, body_len) = loop {
        let n = s.read(&mut chunk).await.map_err(PostError::Io)?;
        if n == 0 {
            return Err(PostError::Malformed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = res.code.ok_or(PostError::Malformed)?;
                // Kept only with a known, small body and no `Connection: close`.
                let mut body_len = None;
                let mut close = res.version == Some(0);
                for h in res.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        body_len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close |= h.value.eq_ignore_ascii_case(b"close");
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        close = true;
                    }
                }
                // 204 and 304 have no body whatever they say.
                if status == 204 || status == 304 {
                    body_len = Some(0);
                }
                let body_len = body_len.filter(|&n| !close && n <= MAX_KEPT_BODY);
                break (status, head_len, body_len);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            // Too many headers: the status line is all that matters, and it parsed.
            Err(httparse::Error::TooManyHeaders) => {
                return res.code.map(|c| (c, None)).ok_or(PostError::Malformed);
            }
            _ => return Err(PostError::Malformed),
        }
    };
    let Some(body_len) = body_len else {
        return Ok((status, None));
    };
    let mut have = buf.len() - head_len;
    if have > body_len {
        // More than the answer: not a connection to reuse.
        return Ok((status, None));
    }
    while have < body_len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok((status, None)),
            Ok(n) => have += n,
        }
        if have > body_len {
            return Ok((status, None));
        }
    }
    Ok((status, Some(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_receiver_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080/hooks/herald?x=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 8080, "/hooks/herald?x=1")
        );
        assert_eq!(e.host_header(), "127.0.0.1:8080");
        let e = Endpoint::parse("https://example.com").unwrap();
        assert_eq!((e.port, e.path.as_str()), (443, "/"));
        assert!(e.tls.is_some());
        assert_eq!(e.host_header(), "example.com");
        let e = Endpoint::parse("HTTP://[::1]:9/x").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        assert_eq!(e.host_header(), "[::1]:9");
        for bad in [
            "",
            "example.com/x",
            "ftp://example.com/",
            "http://",
            "http://user:pw@example.com/",
            "http://example.com:x/",
            "http://example.com:0/",
            "http://example.com/a b",
            "http://[::1/",
            "http://example.com/h?x=1#frag",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let e = Endpoint::parse("http://u:secret@example.com/")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("<hidden>@example.com") && !e.contains("secret"),
            "{e}"
        );
        let e = Endpoint::parse("http://x/#f").unwrap_err().to_string();
        assert!(e.contains("#fragment"), "{e}");
        let e = Endpoint::parse("ftp://x/").unwrap_err().to_string();
        assert!(e.contains("must start with http:// or https://"), "{e}");
    }
}
