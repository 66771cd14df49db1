//! Engine.IO packets and the long-polling payload encodings of protocol v3 and v4.
//!
//! A packet travels either alone (one WebSocket frame) or batched in a long-polling
//! payload. v4 separates text packets with the record separator `\x1e` and sends binary
//! packets as `b<base64>`; v3 prefixes each packet with its length (in UTF-16 code units
//! for text payloads, in bytes for binary payloads) and has a binary payload form.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

/// Which Engine.IO protocol revision a session speaks, chosen by the `EIO` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eio {
    /// Engine.IO v3: socket.io-client 2.x; the client pings.
    V3,
    /// Engine.IO v4: socket.io-client 3.x and 4.x; the server pings.
    V4,
}

/// The kind of an Engine.IO packet; the digit that starts its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Open,
    Close,
    Ping,
    Pong,
    Message,
    Upgrade,
    Noop,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'0' => Kind::Open,
            b'1' => Kind::Close,
            b'2' => Kind::Ping,
            b'3' => Kind::Pong,
            b'4' => Kind::Message,
            b'5' => Kind::Upgrade,
            b'6' => Kind::Noop,
            _ => return None,
        })
    }
}

/// A packet received from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A packet without a message body; the data is kept for `ping`/`pong` probes.
    Control(Kind, &'a str),
    /// A text message (the part after the `4`).
    Text(Cow<'a, str>),
    /// A binary message.
    Binary(Cow<'a, [u8]>),
}

/// Why a packet or payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("invalid base64 in binary packet")]
    Base64,
    #[error("invalid payload length prefix")]
    Length,
    #[error("payload is not valid UTF-8")]
    Utf8,
    #[error("packet type not allowed from a client")]
    Unexpected,
}

/// Decodes one text packet (a WebSocket text frame, or one element of a payload).
pub fn decode_text(text: &str) -> Result<Packet<'_>, DecodeError> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    if first == b'b' {
        // v4 base64 binary packet inside a polling payload.
        return decode_base64(&text[1..]).map(|b| Packet::Binary(Cow::Owned(b)));
    }
    let kind = Kind::from_byte(first).ok_or(DecodeError::UnknownType)?;
    let rest = &text[1..];
    Ok(match kind {
        Kind::Message => Packet::Text(Cow::Borrowed(rest)),
        Kind::Open => return Err(DecodeError::Unexpected),
        other => Packet::Control(other, rest),
    })
}

/// Decodes one binary WebSocket frame: v4 frames are the message itself, v3 frames carry
/// the packet type in their first byte.
pub fn decode_binary_frame(eio: Eio, data: &[u8]) -> Result<Packet<'_>, DecodeError> {
    match eio {
        Eio::V4 => Ok(Packet::Binary(Cow::Borrowed(data))),
        Eio::V3 => match data.split_first() {
            Some((&4, rest)) => Ok(Packet::Binary(Cow::Borrowed(rest))),
            Some(_) => Err(DecodeError::UnknownType),
            None => Err(DecodeError::Empty),
        },
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, DecodeError> {
    BASE64.decode(s).map_err(|_| DecodeError::Base64)
}

/// Decodes a v4 polling payload: packets separated by `\x1e`.
pub fn decode_payload_v4(body: &str) -> Result<Vec<Packet<'_>>, DecodeError> {
    body.split('\x1e').map(decode_text).collect()
}

/// Decodes a v3 text polling payload: `<len>:<packet>` repeated, `len` in UTF-16 units.
pub fn decode_payload_v3_text(body: &str) -> Result<Vec<Packet<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = body;
    if rest.is_empty() {
        return Err(DecodeError::Empty);
    }
    while !rest.is_empty() {
        let colon = rest.find(':').ok_or(DecodeError::Length)?;
        let len: usize = parse_len(&rest[..colon])?;
        let after = &rest[colon + 1..];
        // Walk `len` UTF-16 code units to find the byte end of the packet.
        let mut units = 0usize;
        let mut end = None;
        for (i, ch) in after.char_indices() {
            if units == len {
                end = Some(i);
                break;
            }
            units += ch.len_utf16();
            if units > len {
                return Err(DecodeError::Length);
            }
        }
        let end = match end {
            Some(end) => end,
            None if units == len => after.len(),
            None => return Err(DecodeError::Length),
        };
        let packet = &after[..end];
        out.push(decode_v3_element(packet)?);
        rest = &after[end..];
    }
    Ok(out)
}

fn decode_v3_element(packet: &str) -> Result<Packet<'_>, DecodeError> {
    if let Some(b64) = packet.strip_prefix('b') {
        // `b4<base64>`: the packet type follows the `b`.
        let b64 = b64.strip_prefix('4').ok_or(DecodeError::UnknownType)?;
        return decode_base64(b64).map(|b| Packet::Binary(Cow::Owned(b)));
    }
    decode_text(packet)
}

fn parse_len(digits: &str) -> Result<usize, DecodeError> {
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::Length);
    }
    digits.parse().map_err(|_| DecodeError::Length)
}

/// Decodes a v3 binary polling payload: for each packet a marker byte (0 text, 1 binary),
/// the length as one byte per decimal digit, 0xFF, then the packet.
pub fn decode_payload_v3_binary(body: &[u8]) -> Result<Vec<Packet<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = body;
    if rest.is_empty() {
        return Err(DecodeError::Empty);
    }
    while !rest.is_empty() {
        let is_text = match rest[0] {
            0 => true,
            1 => false,
            _ => return Err(DecodeError::Length),
        };
        let mut len = 0usize;
        let mut i = 1;
        loop {
            let d = *rest.get(i).ok_or(DecodeError::Length)?;
            if d == 0xFF {
                break;
            }
            if d > 9 || i > 10 {
                return Err(DecodeError::Length);
            }
            len = len * 10 + d as usize;
            i += 1;
        }
        if i == 1 {
            return Err(DecodeError::Length);
        }
        let start = i + 1;
        let end = start.checked_add(len).ok_or(DecodeError::Length)?;
        let packet = rest.get(start..end).ok_or(DecodeError::Length)?;
        if is_text {
            let text = std::str::from_utf8(packet).map_err(|_| DecodeError::Utf8)?;
            out.push(decode_v3_element(text)?);
        } else {
            match packet.split_first() {
                Some((&4, data)) => out.push(Packet::Binary(Cow::Borrowed(data))),
                _ => return Err(DecodeError::UnknownType),
            }
        }
        rest = &rest[end..];
    }
    Ok(out)
}

/// A packet queued for a client, already in its final encoded form so that one message
/// for many clients is encoded once and shared by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A whole text packet including its type digit, e.g. `42["hello",1]` or `2`.
    Text(Bytes),
    /// The body of a binary message packet.
    Binary(Bytes),
}

impl Outbound {
    /// A text packet of `kind` with no data.
    pub fn control(kind: Kind) -> Outbound {
        Outbound::Text(Bytes::from_static(match kind {
            Kind::Open => b"0",
            Kind::Close => b"1",
            Kind::Ping => b"2",
            Kind::Pong => b"3",
            Kind::Message => b"4",
            Kind::Upgrade => b"5",
            Kind::Noop => b"6",
        }))
    }

    /// A text message packet: `4` followed by `text`.
    pub fn message(text: &str) -> Outbound {
        let mut b = BytesMut::with_capacity(text.len() + 1);
        b.put_u8(b'4');
        b.put_slice(text.as_bytes());
        Outbound::Text(b.freeze())
    }

    /// The packet's bytes, whatever its kind.
    pub fn body(&self) -> &Bytes {
        match self {
            Outbound::Text(b) | Outbound::Binary(b) => b,
        }
    }

    /// Bytes this packet holds, for queue accounting.
    pub fn len(&self) -> usize {
        self.body().len()
    }

    /// Whether the packet holds no bytes (never true for a valid packet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes queued packets into one long-polling response body. Returns the body and
/// whether it is binary (`application/octet-stream`) rather than text.
pub fn encode_payload(eio: Eio, b64: bool, packets: &[Outbound]) -> (Bytes, bool) {
    match eio {
        Eio::V4 => (encode_payload_v4(packets), false),
        Eio::V3 => {
            let any_binary = packets.iter().any(|p| matches!(p, Outbound::Binary(_)));
            if any_binary && !b64 {
                (encode_payload_v3_binary(packets), true)
            } else {
                (encode_payload_v3_text(packets), false)
            }
        }
    }
}

fn encode_payload_v4(packets: &[Outbound]) -> Bytes {
    let cap = packets.iter().map(|p| p.len() * 4 / 3 + 4).sum();
    let mut out = BytesMut::with_capacity(cap);
    for (i, p) in packets.iter().enumerate() {
        if i > 0 {
            out.put_u8(0x1e);
        }
        match p {
            Outbound::Text(t) => out.put_slice(t),
            Outbound::Binary(b) => {
                out.put_u8(b'b');
                out.put_slice(BASE64.encode(b).as_bytes());
            }
        }
    }
    out.freeze()
}

fn utf16_len(bytes: &[u8]) -> usize {
    // Our text packets are built from `str`, so they are valid UTF-8.
    match std::str::from_utf8(bytes) {
        Ok(s) => s.chars().map(char::len_utf16).sum(),
        Err(_) => bytes.len(),
    }
}

fn encode_payload_v3_text(packets: &[Outbound]) -> Bytes {
    let mut out = BytesMut::new();
    for p in packets {
        match p {
            Outbound::Text(t) => {
                out.put_slice(utf16_len(t).to_string().as_bytes());
                out.put_u8(b':');
                out.put_slice(t);
            }
            Outbound::Binary(b) => {
                let enc = BASE64.encode(b);
                out.put_slice((enc.len() + 2).to_string().as_bytes());
                out.put_slice(b":b4");
                out.put_slice(enc.as_bytes());
            }
        }
    }
    out.freeze()
}

fn encode_payload_v3_binary(packets: &[Outbound]) -> Bytes {
    let mut out = BytesMut::new();
    for p in packets {
        let (marker, len) = match p {
            Outbound::Text(t) => (0u8, t.len()),
            Outbound::Binary(b) => (1u8, b.len() + 1),
        };
        out.put_u8(marker);
        for d in len.to_string().bytes() {
            out.put_u8(d - b'0');
        }
        out.put_u8(0xFF);
        match p {
            Outbound::Text(t) => out.put_slice(t),
            Outbound::Binary(b) => {
                out.put_u8(4);
                out.put_slice(b);
            }
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Outbound {
        Outbound::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn decodes_every_control_kind() {
        assert_eq!(decode_text("1").unwrap(), Packet::Control(Kind::Close, ""));
        assert_eq!(
            decode_text("2probe").unwrap(),
            Packet::Control(Kind::Ping, "probe")
        );
        assert_eq!(decode_text("3").unwrap(), Packet::Control(Kind::Pong, ""));
        assert_eq!(
            decode_text("5").unwrap(),
            Packet::Control(Kind::Upgrade, "")
        );
        assert_eq!(decode_text("6").unwrap(), Packet::Control(Kind::Noop, ""));
        assert_eq!(
            decode_text("4héllo").unwrap(),
            Packet::Text(Cow::Borrowed("héllo"))
        );
    }

    #[test]
    fn rejects_malformed_text_packets() {
        assert_eq!(decode_text(""), Err(DecodeError::Empty));
        assert_eq!(decode_text("abc"), Err(DecodeError::UnknownType));
        assert_eq!(decode_text("9"), Err(DecodeError::UnknownType));
        assert_eq!(decode_text("0{}"), Err(DecodeError::Unexpected));
        assert_eq!(decode_text("b!!"), Err(DecodeError::Base64));
    }

    #[test]
    fn binary_frames_per_revision() {
        assert_eq!(
            decode_binary_frame(Eio::V4, &[1, 2]).unwrap(),
            Packet::Binary(Cow::Borrowed(&[1u8, 2][..]))
        );
        assert_eq!(
            decode_binary_frame(Eio::V3, &[4, 1, 2]).unwrap(),
            Packet::Binary(Cow::Borrowed(&[1u8, 2][..]))
        );
        assert_eq!(
            decode_binary_frame(Eio::V3, &[2]),
            Err(DecodeError::UnknownType)
        );
        assert_eq!(decode_binary_frame(Eio::V3, &[]), Err(DecodeError::Empty));
    }

    #[test]
    fn v4_payload_round_trip() {
        let packets = vec![
            text("4hello"),
            Outbound::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        let (body, binary) = encode_payload(Eio::V4, false, &packets);
        assert!(!binary);
        assert_eq!(&body[..], b"4hello\x1ebAQIDBA==");
        let decoded = decode_payload_v4(std::str::from_utf8(&body).unwrap()).unwrap();
        assert_eq!(decoded[0], Packet::Text(Cow::Borrowed("hello")));
        assert_eq!(decoded[1], Packet::Binary(Cow::Owned(vec![1, 2, 3, 4])));
    }

    #[test]
    fn v4_payload_rejects_empty_element() {
        assert_eq!(decode_payload_v4("4a\x1e"), Err(DecodeError::Empty));
    }

    #[test]
    fn v3_text_payload_counts_utf16_units() {
        // "€" is one UTF-16 unit, "😀" two.
        let packets = vec![text("4€😀"), text("2")];
        let (body, binary) = encode_payload(Eio::V3, true, &packets);
        assert!(!binary);
        assert_eq!(std::str::from_utf8(&body).unwrap(), "4:4€😀1:2");
        let decoded = decode_payload_v3_text(std::str::from_utf8(&body).unwrap()).unwrap();
        assert_eq!(decoded[0], Packet::Text(Cow::Borrowed("€😀")));
        assert_eq!(decoded[1], Packet::Control(Kind::Ping, ""));
    }

    #[test]
    fn v3_text_payload_with_base64() {
        let decoded = decode_payload_v3_text("6:4hello10:b4AQIDBA==").unwrap();
        assert_eq!(decoded[1], Packet::Binary(Cow::Owned(vec![1, 2, 3, 4])));
        let packets = vec![
            text("4hello"),
            Outbound::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        let (body, _) = encode_payload(Eio::V3, true, &packets);
        assert_eq!(&body[..], b"6:4hello10:b4AQIDBA==");
    }

    #[test]
    fn v3_text_payload_rejects_bad_lengths() {
        for bad in [
            "",
            "x:4a",
            "5:4a",
            "2:4a1",
            ":4a",
            "99999999999:4",
            "2",
            "1:0",
        ] {
            assert!(decode_payload_v3_text(bad).is_err(), "{bad:?}");
        }
        // A length that ends inside a surrogate pair.
        assert!(decode_payload_v3_text("2:4😀").is_err());
    }

    #[test]
    fn v3_binary_payload_round_trip() {
        let packets = vec![
            text("4hello"),
            Outbound::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ];
        let (body, binary) = encode_payload(Eio::V3, false, &packets);
        assert!(binary);
        assert_eq!(
            &body[..],
            &[0, 6, 255, 52, 104, 101, 108, 108, 111, 1, 5, 255, 4, 1, 2, 3, 4]
        );
        let decoded = decode_payload_v3_binary(&body).unwrap();
        assert_eq!(decoded[0], Packet::Text(Cow::Borrowed("hello")));
        assert_eq!(
            decoded[1],
            Packet::Binary(Cow::Borrowed(&[1u8, 2, 3, 4][..]))
        );
    }

    #[test]
    fn v3_binary_payload_rejects_malformed() {
        for bad in [
            &[][..],
            &[2, 1, 255, 52],
            &[0, 5, 255, 52],
            &[0, 255, 52],
            &[0, 1, 2],
            &[1, 1, 255, 3],
            &[0, 1, 255, 0xC3],
            &[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 255],
        ] {
            assert!(decode_payload_v3_binary(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn v3_without_binary_stays_text_even_when_binary_allowed() {
        let (body, binary) = encode_payload(Eio::V3, false, &[text("4a")]);
        assert!(!binary);
        assert_eq!(&body[..], b"2:4a");
    }
}
