//! RFC 6455 WebSocket framing, server side: parse masked client frames, write unmasked
//! server frames. No extensions are negotiated, so the RSV bits must be zero.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Frame opcodes (RFC 6455, 5.2); the others are reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    /// The opcode of a frame's low four bits, if it is one of the defined ones.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes.
    pub fn is_control(self) -> bool {
        self as u8 >= 0x8
    }
}

/// The close codes herald sends (RFC 6455, 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    Normal = 1000,
    GoingAway = 1001,
    Protocol = 1002,
    InvalidData = 1007,
    Policy = 1008,
    TooBig = 1009,
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", *self as u16)
    }
}

/// The longest header a server frame needs: 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    /// Payload length in bytes.
    pub len: usize,
    /// Bytes taken by the header itself, including the mask key.
    pub header_len: usize,
}

/// A frame that breaks the protocol, with the close code to answer it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (close code {code})")]
pub struct FrameError {
    pub code: CloseCode,
    pub reason: &'static str,
}

const fn err(code: CloseCode, reason: &'static str) -> FrameError {
    FrameError { code, reason }
}

/// Parses a client frame header at the start of `buf`. `Ok(None)` means more bytes are
/// needed. `max_len` bounds the payload of one frame.
pub fn parse_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(err(CloseCode::Protocol, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let Some(opcode) = Opcode::from_bits(b0 & 0x0F) else {
        return Err(err(CloseCode::Protocol, "unknown opcode"));
    };
    if opcode.is_control() && !fin {
        return Err(err(CloseCode::Protocol, "fragmented control frame"));
    }
    if b1 & 0x80 == 0 {
        return Err(err(CloseCode::Protocol, "client frame not masked"));
    }
    let len7 = (b1 & 0x7F) as usize;
    let (len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if len < 126 {
                return Err(err(CloseCode::Protocol, "non-minimal length"));
            }
            (len, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(err(CloseCode::Protocol, "length high bit set"));
            }
            if len < 65536 {
                return Err(err(CloseCode::Protocol, "non-minimal length"));
            }
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        n => (n, 2),
    };
    if opcode.is_control() && len > 125 {
        return Err(err(CloseCode::Protocol, "control frame too long"));
    }
    if len > max_len {
        return Err(err(CloseCode::TooBig, "frame exceeds max payload"));
    }
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[pos..pos + 4]);
    pos += 4;
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        header_len: pos,
    }))
}

/// Unmasks `data` in place. `offset` is the position of `data[0]` within the payload, so
/// a payload can be unmasked in pieces.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// Writes an unmasked server frame header for a final frame into `out`; returns its length.
pub fn write_header(out: &mut [u8; MAX_HEADER], opcode: Opcode, len: usize) -> usize {
    out[0] = 0x80 | opcode as u8;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Validates a close frame payload from a client: empty, or a valid code plus UTF-8.
pub fn check_close_payload(payload: &[u8]) -> Result<(), FrameError> {
    match payload.len() {
        0 => Ok(()),
        1 => Err(err(CloseCode::Protocol, "close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(err(CloseCode::Protocol, "invalid close code"));
            }
            std::str::from_utf8(&payload[2..])
                .map(|_| ())
                .map_err(|_| err(CloseCode::InvalidData, "close reason not UTF-8"))
        }
    }
}

/// A close frame with `code` and no reason, ready to write.
pub fn close_frame(code: CloseCode) -> [u8; 4] {
    let c = (code as u16).to_be_bytes();
    [0x80 | Opcode::Close as u8, 2, c[0], c[1]]
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode as u8];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask, 0);
        out.extend_from_slice(&p);
        out
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_and_unmasks_all_length_forms() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = masked(Opcode::Binary, true, &payload);
            let h = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(h.len, len);
            assert_eq!(h.opcode, Opcode::Binary);
            assert!(h.fin);
            let mut body = frame[h.header_len..].to_vec();
            // Unmask in two pieces to check the offset handling.
            let split = body.len() / 3;
            let (a, b) = body.split_at_mut(split);
            unmask(a, h.mask, 0);
            unmask(b, h.mask, split);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let frame = masked(Opcode::Text, true, &[b'a'; 300]);
        for cut in 0..8 {
            assert_eq!(parse_header(&frame[..cut], 1 << 20).unwrap(), None);
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], CloseCode::Protocol), // RSV1
            (vec![0x83, 0x80, 0, 0, 0, 0], CloseCode::Protocol),        // opcode 3
            (vec![0x81, 0x00], CloseCode::Protocol),                    // unmasked
            (vec![0x09, 0x80, 0, 0, 0, 0], CloseCode::Protocol),        // fragmented ping
            (vec![0x89, 0xFE, 0, 200, 0, 0, 0, 0], CloseCode::Protocol), // long ping
            (vec![0x82, 0xFE, 0, 10, 0, 0, 0, 0], CloseCode::Protocol), // non-minimal 16-bit
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                CloseCode::Protocol,
            ), // high bit
        ];
        for (frame, code) in cases {
            assert_eq!(
                parse_header(&frame, 1 << 20).unwrap_err().code,
                code,
                "{frame:?}"
            );
        }
        let big = masked(Opcode::Text, true, &[b'a'; 2000]);
        assert_eq!(
            parse_header(&big, 1000).unwrap_err().code,
            CloseCode::TooBig
        );
    }

    #[test]
    fn server_headers() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(write_header(&mut h, Opcode::Text, 5), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(write_header(&mut h, Opcode::Binary, 300), 4);
        assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
        assert_eq!(write_header(&mut h, Opcode::Text, 70000), 10);
        assert_eq!(h[1], 127);
    }

    #[test]
    fn close_payload_rules() {
        assert!(check_close_payload(&[]).is_ok());
        assert!(check_close_payload(&[0x03, 0xE8]).is_ok());
        assert!(check_close_payload(&[0x03]).is_err());
        assert!(check_close_payload(&[0x03, 0xED]).is_err()); // 1005 is reserved
        assert!(check_close_payload(&[0x03, 0xE8, 0xFF]).is_err());
    }
}
