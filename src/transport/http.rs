//! The small part of HTTP/1.1 that Engine.IO needs: request heads, fixed-length and
//! chunked bodies, responses, query strings. Parsed with `httparse`; nothing of a request
//! is kept once it is answered.

use std::borrow::Cow;

/// Request methods Engine.IO cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Options,
    Other,
}

/// What we keep of a request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    /// Request target: path and query.
    pub target: String,
    /// Byte index of `?` in `target`, or its length.
    pub path_end: usize,
    pub origin: Option<String>,
    /// The `Host` header: a browser's same-origin requests carry it in `Origin` too.
    pub host: Option<String>,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// `Content-Type: application/octet-stream` (v3 binary payloads).
    pub octet_stream: bool,
    pub keep_alive: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub access_control_request_headers: Option<String>,
    /// Length of the head in the read buffer.
    pub len: usize,
}

impl Head {
    pub fn path(&self) -> &str {
        &self.target[..self.path_end]
    }

    pub fn query(&self) -> &str {
        self.target.get(self.path_end + 1..).unwrap_or_default()
    }
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or not parseable.
    Malformed,
    /// Longer than the configured limit (or too many headers).
    TooLarge,
}

const MAX_HEADERS: usize = 64;

/// Parses a request head from `buf`. `Ok(None)`: incomplete.
pub fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/").to_owned();
    let path_end = target.find('?').unwrap_or(target.len());
    let version = req.version.unwrap_or(1);
    let mut head = Head {
        method,
        target,
        path_end,
        origin: None,
        host: None,
        content_length: None,
        chunked: false,
        octet_stream: false,
        keep_alive: version == 1,
        upgrade: false,
        ws_key: None,
        ws_version: None,
        access_control_request_headers: None,
        len,
    };
    let mut connection_upgrade = false;
    let mut upgrade_ws = false;
    for h in req.headers.iter() {
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => v.trim(),
            Err(_) => continue,
        };
        let name = h.name;
        if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("host") {
            head.host = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>().map_err(|_| HeadError::Malformed)?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(HeadError::Malformed);
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
            {
                head.chunked = true;
            } else {
                return Err(HeadError::Malformed);
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            head.octet_stream = value
                .split(';')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let t = token.trim();
                if t.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    head.keep_alive = true;
                } else if t.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws = value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("access-control-request-headers") {
            head.access_control_request_headers = Some(value.to_owned());
        }
    }
    if head.chunked && head.content_length.is_some() {
        // Ambiguous framing is a request-smuggling vector: refuse it.
        return Err(HeadError::Malformed);
    }
    head.upgrade = connection_upgrade && upgrade_ws;
    Ok(Some(head))
}

/// Outcome of decoding a chunked body from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunked {
    /// The whole body: its bytes and how much of the buffer it took.
    Done(Vec<u8>, usize),
    Incomplete,
    TooLarge,
    Malformed,
}

/// Decodes a chunked body at the start of `buf`, refusing bodies over `max` bytes.
pub fn decode_chunked(buf: &[u8], max: usize) -> Chunked {
    ChunkedBody::default().step(buf, max)
}

/// A chunked body decoded as its bytes arrive: each step resumes after the chunks
/// already decoded, so a body that trickles in costs time in its length, not its
/// square; the raw bytes of decoded chunks can be dropped ([`ChunkedBody::take_consumed`]),
/// so chunk framing (extensions, say) never piles up beside the body.
#[derive(Debug, Default)]
pub struct ChunkedBody {
    out: Vec<u8>,
    /// Bytes at the start of the buffer taken by whole chunks already decoded.
    pos: usize,
}

impl ChunkedBody {
    /// Bytes at the start of the buffer that decoded chunks took; the caller drops them
    /// and the next step starts at the new start.
    pub fn take_consumed(&mut self) -> usize {
        std::mem::take(&mut self.pos)
    }

    /// Bytes of body decoded so far.
    pub fn decoded(&self) -> usize {
        self.out.len()
    }

    /// Decodes what `buf` (which starts where the body starts) adds.
    pub fn step(&mut self, buf: &[u8], max: usize) -> Chunked {
        loop {
            let pos = self.pos;
            let Some(line_end) = find_crlf(&buf[pos..]) else {
                return if buf.len() - pos > 32 {
                    Chunked::Malformed
                } else {
                    Chunked::Incomplete
                };
            };
            let line = &buf[pos..pos + line_end];
            let size_part = line.split(|b| *b == b';').next().unwrap_or_default();
            let Ok(size_str) = std::str::from_utf8(size_part) else {
                return Chunked::Malformed;
            };
            let Ok(size) = usize::from_str_radix(size_str.trim(), 16) else {
                return Chunked::Malformed;
            };
            let data = pos + line_end + 2;
            if size == 0 {
                // Trailers are not used by clients; expect the final CRLF.
                return match buf.get(data..data + 2) {
                    Some(b"\r\n") => Chunked::Done(std::mem::take(&mut self.out), data + 2),
                    Some(_) => Chunked::Malformed,
                    None => Chunked::Incomplete,
                };
            }
            if self.out.len().saturating_add(size) > max {
                return Chunked::TooLarge;
            }
            let Some(bytes) = buf.get(data..data + size) else {
                return Chunked::Incomplete;
            };
            match buf.get(data + size..data + size + 2) {
                Some(b"\r\n") => {}
                Some(_) => return Chunked::Malformed,
                None => return Chunked::Incomplete,
            }
            self.out.extend_from_slice(bytes);
            self.pos = data + size + 2;
        }
    }
}

/// Reads a request body out of the connection's buffer as it arrives.
#[derive(Debug)]
pub enum BodyReader {
    /// `Content-Length` bytes (0 without one).
    Length(usize),
    Chunked(ChunkedBody),
}

/// Where a body stands after a [`BodyReader::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum BodyStep {
    /// The whole body, taken out of the buffer.
    Done(Vec<u8>),
    /// More bytes are needed.
    Incomplete,
    TooLarge,
    Malformed,
}

impl BodyReader {
    pub fn new(head: &Head) -> BodyReader {
        if head.chunked {
            BodyReader::Chunked(ChunkedBody::default())
        } else {
            BodyReader::Length(head.content_length.unwrap_or(0))
        }
    }

    /// The body's size as far as it is known: its length, or the bytes of body decoded
    /// and waiting so far (chunk framing does not count).
    pub fn size(&self, buf: &[u8]) -> usize {
        match self {
            BodyReader::Length(n) => *n,
            BodyReader::Chunked(c) => c.decoded() + buf.len(),
        }
    }

    /// Takes the body out of `buf` (which starts where it starts) once it is whole.
    pub fn step(&mut self, buf: &mut Vec<u8>, max: usize) -> BodyStep {
        match self {
            BodyReader::Length(n) if *n > max => BodyStep::TooLarge,
            BodyReader::Length(n) if buf.len() < *n => BodyStep::Incomplete,
            BodyReader::Length(n) => {
                let rest = buf.split_off(*n);
                BodyStep::Done(std::mem::replace(buf, rest))
            }
            BodyReader::Chunked(c) => match c.step(buf, max) {
                Chunked::Done(body, used) => {
                    buf.drain(..used);
                    BodyStep::Done(body)
                }
                Chunked::Incomplete => {
                    let consumed = c.take_consumed();
                    buf.drain(..consumed);
                    BodyStep::Incomplete
                }
                Chunked::TooLarge => BodyStep::TooLarge,
                Chunked::Malformed => BodyStep::Malformed,
            },
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// All query parameters, percent-decoded.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A response being built.
pub(crate) struct Response {
    buf: Vec<u8>,
}

impl Response {
    pub(crate) fn new(status: u16) -> Response {
        let reason = match status {
            101 => "Switching Protocols",
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Payload Too Large",
            415 => "Unsupported Media Type",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            // Reason phrases are optional (RFC 9112); clients read the code.
            _ => "",
        };
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
        Response { buf }
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Response {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Finishes the response with `body` and a `Content-Length`.
    pub(crate) fn body(mut self, body: &[u8], keep_alive: bool) -> Vec<u8> {
        if !keep_alive {
            self.buf.extend_from_slice(b"Connection: close\r\n");
        }
        self.buf
            .extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.buf.extend_from_slice(body);
        self.buf
    }

    /// Finishes a response that has no body and no length (101).
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"\r\n");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_websocket_upgrade() {
        let raw = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a\r\n\r\n";
        let h = parse_head(raw, 1 << 14).unwrap().unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path(), "/socket.io/");
        assert_eq!(h.query(), "EIO=4&transport=websocket");
        assert!(h.upgrade);
        assert_eq!(h.ws_key.as_deref(), Some("abc"));
        assert_eq!(h.origin.as_deref(), Some("http://a"));
        assert_eq!(h.len, raw.len());
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:", 1000)
            .unwrap()
            .is_none());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse_head(big.as_bytes(), 1000).unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            parse_head(&big.as_bytes()[..1500], 1000).unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            parse_head(b"\x00\x01garbage\r\n\r\n", 1000).unwrap_err(),
            HeadError::Malformed
        );
    }

    #[test]
    fn refuses_ambiguous_body_framing() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(raw, 1000).unwrap_err(), HeadError::Malformed);
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(parse_head(raw, 1000).unwrap_err(), HeadError::Malformed);
        let raw = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse_head(raw, 1000).unwrap_err(), HeadError::Malformed);
    }

    #[test]
    fn http10_is_not_keep_alive() {
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n", 100).unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 100)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nrest", 100),
            Chunked::Done(b"abcde".to_vec(), 24)
        );
        assert_eq!(decode_chunked(b"3\r\nab", 100), Chunked::Incomplete);
        assert_eq!(decode_chunked(b"zz\r\n", 100), Chunked::Malformed);
        assert_eq!(decode_chunked(b"ff\r\n", 10), Chunked::TooLarge);
        assert_eq!(decode_chunked(b"1\r\naXX", 10), Chunked::Malformed);
    }

    #[test]
    fn query_strings() {
        let q = "EIO=4&transport=polling&token=a%20b%2Bc&x=1+2&flag";
        assert_eq!(query_param(q, "EIO").as_deref(), Some("4"));
        assert_eq!(query_param(q, "token").as_deref(), Some("a b+c"));
        assert_eq!(query_param(q, "x").as_deref(), Some("1 2"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "none"), None);
        assert_eq!(percent_decode("%zz%4").as_ref(), "%zz%4");
        assert_eq!(percent_decode("%e2%82%ac").as_ref(), "€");
        assert_eq!(query_pairs(q).count(), 5);
    }
}
