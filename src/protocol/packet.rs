//! Socket.IO packets, protocol v5 (Engine.IO v4 clients) and v4 (Engine.IO v3 clients):
//! `<type>[<attachments>-][<nsp>,][<ack id>][<json>]`.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::transport::Outbound;

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl PacketType {
    fn from_byte(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }
}

/// Why a packet was refused. Any of these ends the connection, as in the reference server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("invalid attachment count")]
    Attachments,
    #[error("too many attachments")]
    TooManyAttachments,
    #[error("invalid ack id")]
    AckId,
    #[error("invalid JSON payload")]
    Json,
    #[error("payload not valid for the packet type")]
    Payload,
    #[error("packet type not accepted from a client")]
    Unexpected,
}

/// Largest ack id accepted: 2^53 - 1, the largest integer a JavaScript number holds
/// exactly.
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// A decoded packet, borrowing from the message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: PacketType,
    /// Namespace, `/` by default.
    pub nsp: &'a str,
    /// The query a v4 (2.x) client appends to a namespace in CONNECT: `/chat?token=x`.
    pub query: Option<&'a str>,
    /// Number of binary attachments that follow (binary packets only).
    pub attachments: usize,
    pub id: Option<u64>,
    /// The JSON payload, validated.
    pub data: Option<&'a str>,
}

/// Decodes a packet sent by a client. `max_attachments` bounds binary packets.
pub fn decode(text: &str, max_attachments: usize) -> Result<Packet<'_>, ParseError> {
    let b = text.as_bytes();
    let kind = PacketType::from_byte(*b.first().ok_or(ParseError::Empty)?)
        .ok_or(ParseError::UnknownType)?;
    let mut pos = 1;
    let mut attachments = 0;
    if matches!(kind, PacketType::BinaryEvent | PacketType::BinaryAck) {
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == start || pos - start > 6 || b.get(pos) != Some(&b'-') {
            return Err(ParseError::Attachments);
        }
        attachments = text[start..pos]
            .parse()
            .map_err(|_| ParseError::Attachments)?;
        if attachments > max_attachments {
            return Err(ParseError::TooManyAttachments);
        }
        pos += 1;
    }
    let mut nsp = "/";
    let mut query = None;
    if b.get(pos) == Some(&b'/') {
        let start = pos;
        while pos < b.len() && b[pos] != b',' {
            pos += 1;
        }
        let full = &text[start..pos];
        match full.split_once('?') {
            Some((n, q)) => {
                nsp = n;
                query = Some(q);
            }
            None => nsp = full,
        }
        if pos < b.len() {
            pos += 1; // the comma
        }
    }
    let mut id = None;
    let start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos > start {
        // Ack ids are JavaScript numbers: nothing past 2^53 - 1 is exact.
        let n: u64 = text[start..pos].parse().map_err(|_| ParseError::AckId)?;
        if n > MAX_ACK_ID {
            return Err(ParseError::AckId);
        }
        id = Some(n);
    }
    let rest = &text[pos..];
    let data = if rest.is_empty() {
        None
    } else {
        serde_json::from_str::<&RawValue>(rest).map_err(|_| ParseError::Json)?;
        Some(rest)
    };
    let first = data.and_then(|d| d.trim_start().bytes().next());
    let valid = match kind {
        PacketType::Connect => matches!(first, None | Some(b'{')),
        PacketType::Disconnect => first.is_none(),
        PacketType::Event | PacketType::BinaryEvent => {
            first == Some(b'[') && event_name(data.unwrap_or("[]")).is_some()
        }
        PacketType::Ack | PacketType::BinaryAck => first == Some(b'[') && id.is_some(),
        PacketType::ConnectError => return Err(ParseError::Unexpected),
    };
    if !valid {
        return Err(ParseError::Payload);
    }
    if matches!(kind, PacketType::Connect | PacketType::Disconnect) && id.is_some() {
        return Err(ParseError::Payload);
    }
    Ok(Packet {
        kind,
        nsp,
        query,
        attachments,
        id,
        data,
    })
}

/// The event name (first element, a string) of an event array.
fn event_name(array: &str) -> Option<String> {
    let items: Vec<&RawValue> = serde_json::from_str(array).ok()?;
    serde_json::from_str::<String>(items.first()?.get()).ok()
}

/// Splits an event array into its name and the array of the remaining arguments.
pub fn split_event(array: &str) -> Result<(String, String), ParseError> {
    let items: Vec<&RawValue> = serde_json::from_str(array).map_err(|_| ParseError::Json)?;
    let name = items
        .first()
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .ok_or(ParseError::Payload)?;
    let args = match items.get(1) {
        Some(second) => {
            // The remaining elements are a contiguous slice of the original text.
            let start = second.get().as_ptr() as usize - array.as_ptr() as usize;
            let mut s = String::with_capacity(array.len() - start + 1);
            s.push('[');
            s.push_str(array[start..].trim_end());
            s
        }
        None => "[]".to_owned(),
    };
    Ok((name, args))
}

/// Arguments of an event or ack: a JSON array, plus binary attachments that the array
/// refers to with `{"_placeholder":true,"num":n}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args {
    json: String,
    attachments: Vec<Bytes>,
}

impl Args {
    /// No arguments.
    pub fn empty() -> Args {
        Args {
            json: "[]".to_owned(),
            attachments: Vec::new(),
        }
    }

    /// Arguments from a JSON array text (not checked) and attachments.
    pub fn from_raw(json: String, attachments: Vec<Bytes>) -> Args {
        Args { json, attachments }
    }

    /// Arguments from any serializable values, e.g. `Args::new(&(1, "two"))` for a tuple
    /// or `Args::new(&[value])`; must serialize to a JSON array.
    pub fn new<T: serde::Serialize + ?Sized>(values: &T) -> Args {
        let json = serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned());
        debug_assert!(json.starts_with('['));
        Args {
            json,
            attachments: Vec::new(),
        }
    }

    /// One argument.
    pub fn one<T: serde::Serialize + ?Sized>(value: &T) -> Args {
        Args::new(&[value])
    }

    /// The arguments as a JSON array text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The binary attachments.
    pub fn attachments(&self) -> &[Bytes] {
        &self.attachments
    }

    /// Deserializes the arguments array, e.g. into a tuple or `Vec<Value>`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.json.trim() == "[]"
    }
}

fn push_nsp(out: &mut String, nsp: &str) {
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
}

fn push_args_after(out: &mut String, args: &Args) {
    // `args.json` is `[a,b]`; append `,a,b` (or nothing) after what is already there.
    let inner = args.json.trim();
    let inner = &inner[1..inner.len().saturating_sub(1).max(1)];
    if !inner.trim().is_empty() {
        out.push(',');
        out.push_str(inner);
    }
}

/// Encodes an event packet (as Engine.IO message packets, ready to queue): the text
/// packet followed by one binary packet per attachment.
pub fn encode_event(nsp: &str, event: &str, args: &Args, ack: Option<u64>) -> Vec<Outbound> {
    let mut s = String::with_capacity(16 + nsp.len() + event.len() + args.json.len());
    s.push('4');
    let n = args.attachments.len();
    if n == 0 {
        s.push('2');
    } else {
        s.push('5');
        s.push_str(&n.to_string());
        s.push('-');
    }
    push_nsp(&mut s, nsp);
    if let Some(id) = ack {
        s.push_str(&id.to_string());
    }
    s.push('[');
    s.push_str(&serde_json::to_string(event).unwrap_or_default());
    push_args_after(&mut s, args);
    s.push(']');
    finish(s, args)
}

/// Encodes an ack packet answering `id`.
pub fn encode_ack(nsp: &str, id: u64, args: &Args) -> Vec<Outbound> {
    let mut s = String::with_capacity(16 + nsp.len() + args.json.len());
    s.push('4');
    let n = args.attachments.len();
    if n == 0 {
        s.push('3');
    } else {
        s.push('6');
        s.push_str(&n.to_string());
        s.push('-');
    }
    push_nsp(&mut s, nsp);
    s.push_str(&id.to_string());
    s.push_str(args.json.trim());
    finish(s, args)
}

fn finish(s: String, args: &Args) -> Vec<Outbound> {
    let mut out = Vec::with_capacity(1 + args.attachments.len());
    out.push(Outbound::Text(Bytes::from(s)));
    out.extend(args.attachments.iter().cloned().map(Outbound::Binary));
    out
}

/// Encodes a CONNECT answer; `sid` is given for v5 clients only.
pub fn encode_connect(nsp: &str, sid: Option<&str>) -> Outbound {
    let mut s = String::from("40");
    push_nsp(&mut s, nsp);
    if let Some(sid) = sid {
        s.push_str(&format!("{{\"sid\":\"{sid}\"}}"));
    }
    Outbound::Text(Bytes::from(s))
}

/// Encodes a CONNECT_ERROR: v5 sends `{"message", "data"?}`, v4 the message string.
pub fn encode_connect_error(nsp: &str, message: &str, data: Option<&str>, v5: bool) -> Outbound {
    let mut s = String::from("44");
    push_nsp(&mut s, nsp);
    let msg = serde_json::to_string(message).unwrap_or_default();
    if v5 {
        s.push_str("{\"message\":");
        s.push_str(&msg);
        if let Some(d) = data {
            s.push_str(",\"data\":");
            s.push_str(d);
        }
        s.push('}');
    } else {
        s.push_str(&msg);
    }
    Outbound::Text(Bytes::from(s))
}

/// Encodes a DISCONNECT for `nsp`.
pub fn encode_disconnect(nsp: &str) -> Outbound {
    let mut s = String::from("41");
    push_nsp(&mut s, nsp);
    Outbound::Text(Bytes::from(s))
}

/// Checks that every placeholder in `json` refers to one of `count` attachments, and
/// that each attachment is referred to.
pub fn check_placeholders(json: &str, count: usize) -> Result<(), ParseError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|_| ParseError::Json)?;
    let mut seen = vec![false; count];
    fn walk(v: &serde_json::Value, seen: &mut [bool]) -> Result<(), ParseError> {
        match v {
            serde_json::Value::Array(a) => a.iter().try_for_each(|x| walk(x, seen)),
            serde_json::Value::Object(o) => {
                if o.get("_placeholder") == Some(&serde_json::Value::Bool(true)) {
                    let n = o
                        .get("num")
                        .and_then(|n| n.as_u64())
                        .ok_or(ParseError::Attachments)? as usize;
                    *seen.get_mut(n).ok_or(ParseError::Attachments)? = true;
                    Ok(())
                } else {
                    o.values().try_for_each(|x| walk(x, seen))
                }
            }
            _ => Ok(()),
        }
    }
    walk(&value, &mut seen)?;
    if seen.iter().all(|s| *s) {
        Ok(())
    } else {
        Err(ParseError::Attachments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(o: &Outbound) -> &str {
        match o {
            Outbound::Text(b) => std::str::from_utf8(b).unwrap(),
            Outbound::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn decodes_every_packet_type() {
        let p = decode("0", 10).unwrap();
        assert_eq!((p.kind, p.nsp, p.data), (PacketType::Connect, "/", None));
        let p = decode("0/custom,{\"token\":\"a\"}", 10).unwrap();
        assert_eq!(p.nsp, "/custom");
        assert_eq!(p.data, Some("{\"token\":\"a\"}"));
        let p = decode("0/custom?token=abc,", 10).unwrap();
        assert_eq!((p.nsp, p.query), ("/custom", Some("token=abc")));
        let p = decode("0/random", 10).unwrap();
        assert_eq!(p.nsp, "/random");
        assert_eq!(
            decode("1/custom,", 10).unwrap().kind,
            PacketType::Disconnect
        );
        let p = decode("2[\"message\",1]", 10).unwrap();
        assert_eq!((p.kind, p.id), (PacketType::Event, None));
        let p = decode("2/a,456[\"m\"]", 10).unwrap();
        assert_eq!((p.nsp, p.id), ("/a", Some(456)));
        let p = decode("3456[1]", 10).unwrap();
        assert_eq!((p.kind, p.id), (PacketType::Ack, Some(456)));
        let p = decode("39007199254740991[1]", 10).unwrap();
        assert_eq!(p.id, Some(MAX_ACK_ID));
        let p = decode("52-[\"m\",{\"_placeholder\":true,\"num\":0}]", 10).unwrap();
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 2));
        let p = decode("61-/a,7[{\"_placeholder\":true,\"num\":0}]", 10).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.nsp, p.id),
            (PacketType::BinaryAck, 1, "/a", Some(7))
        );
    }

    #[test]
    fn rejects_malformed_packets() {
        let cases = [
            ("", ParseError::Empty),
            ("abc", ParseError::UnknownType),
            ("9", ParseError::UnknownType),
            ("2{}", ParseError::Payload),
            ("2[]", ParseError::Payload),
            ("2[1]", ParseError::Payload),
            ("2abc[\"m\"]", ParseError::Json),
            ("2[\"m\"", ParseError::Json),
            ("0[]", ParseError::Payload),
            ("0\"x\"", ParseError::Payload),
            ("1{}", ParseError::Payload),
            ("3[1]", ParseError::Payload),
            ("3{}", ParseError::Payload),
            ("5[\"m\"]", ParseError::Attachments),
            ("5x-[\"m\"]", ParseError::Attachments),
            ("51[\"m\"]", ParseError::Attachments),
            ("511-[\"m\"]", ParseError::TooManyAttachments),
            ("2999999999999999999[\"m\"]", ParseError::AckId),
            ("29007199254740992[\"m\"]", ParseError::AckId),
            ("299999999999999999999999[\"m\"]", ParseError::AckId),
            ("4{\"message\":\"x\"}", ParseError::Unexpected),
            ("01{}", ParseError::Payload),
        ];
        for (input, err) in cases {
            assert_eq!(decode(input, 10).unwrap_err(), err, "{input:?}");
        }
    }

    #[test]
    fn splits_event_name_and_args() {
        let (name, args) = split_event("[\"message\",1,\"2\",{\"3\":[true]}]").unwrap();
        assert_eq!(name, "message");
        assert_eq!(args, "[1,\"2\",{\"3\":[true]}]");
        let (name, args) = split_event("[ \"e\\u00e9\" ]").unwrap();
        assert_eq!((name.as_str(), args.as_str()), ("eé", "[]"));
        let (_, args) = split_event("[\"e\", 1 , 2 ] ").unwrap();
        assert_eq!(args, "[1 , 2 ]");
    }

    #[test]
    fn encodes_events_acks_and_binary() {
        let args = Args::from_raw("[1,\"2\"]".into(), vec![]);
        let out = encode_event("/", "message-back", &args, None);
        assert_eq!(text(&out[0]), "42[\"message-back\",1,\"2\"]");
        let out = encode_event(
            "/custom",
            "auth",
            &Args::one(&serde_json::json!({})),
            Some(3),
        );
        assert_eq!(text(&out[0]), "42/custom,3[\"auth\",{}]");
        let out = encode_event("/", "e", &Args::empty(), None);
        assert_eq!(text(&out[0]), "42[\"e\"]");
        let bin = Args::from_raw(
            "[{\"_placeholder\":true,\"num\":0}]".into(),
            vec![Bytes::from_static(&[1, 2, 3])],
        );
        let out = encode_event("/", "b", &bin, None);
        assert_eq!(
            text(&out[0]),
            "451-[\"b\",{\"_placeholder\":true,\"num\":0}]"
        );
        assert_eq!(out[1], Outbound::Binary(Bytes::from_static(&[1, 2, 3])));
        let out = encode_ack("/", 456, &args);
        assert_eq!(text(&out[0]), "43456[1,\"2\"]");
        let out = encode_ack("/a", 789, &bin);
        assert_eq!(
            text(&out[0]),
            "461-/a,789[{\"_placeholder\":true,\"num\":0}]"
        );
    }

    #[test]
    fn encodes_connect_and_errors() {
        assert_eq!(
            text(&encode_connect("/", Some("abc"))),
            "40{\"sid\":\"abc\"}"
        );
        assert_eq!(text(&encode_connect("/custom", None)), "40/custom,");
        assert_eq!(
            text(&encode_connect_error(
                "/random",
                "Invalid namespace",
                None,
                true
            )),
            "44/random,{\"message\":\"Invalid namespace\"}"
        );
        assert_eq!(
            text(&encode_connect_error("/", "no", Some("{\"a\":1}"), true)),
            "44{\"message\":\"no\",\"data\":{\"a\":1}}"
        );
        assert_eq!(
            text(&encode_connect_error(
                "/x",
                "Invalid namespace",
                None,
                false
            )),
            "44/x,\"Invalid namespace\""
        );
        assert_eq!(text(&encode_disconnect("/")), "41");
        assert_eq!(text(&encode_disconnect("/a")), "41/a,");
    }

    #[test]
    fn placeholder_checks() {
        let ok =
            "[\"m\",{\"_placeholder\":true,\"num\":0},{\"x\":{\"_placeholder\":true,\"num\":1}}]";
        assert!(check_placeholders(ok, 2).is_ok());
        assert!(check_placeholders(ok, 1).is_err());
        assert!(check_placeholders(ok, 3).is_err());
        assert!(check_placeholders("[{\"_placeholder\":true}]", 1).is_err());
    }
}
