//! Entry points for the fuzz targets (`fuzz/`) and the corpus replay test: every decoder
//! that reads client bytes, fed arbitrary input. They must never panic.

use crate::protocol::packet as sio;
use crate::transport::frame_reader::{Event, Flow, FrameReader};
use crate::transport::http::{BodyReader, BodyStep};
use crate::transport::{frame, http, packet as eio};

/// Feeds `data` to the Engine.IO, WebSocket and HTTP decoders.
pub fn engine(data: &[u8]) {
    let _ = eio::decode_payload_v3_binary(data);
    let _ = eio::decode_binary_frame(eio::Eio::V3, data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = eio::decode_text(text);
        let _ = eio::decode_payload_v4(text);
        let _ = eio::decode_payload_v3_text(text);
    }
    if let Ok(Some(h)) = frame::parse_header(data, 1 << 20) {
        let end = (h.header_len + h.len).min(data.len());
        let mut payload = data[h.header_len.min(end)..end].to_vec();
        frame::unmask(&mut payload, h.mask, 0);
        if h.opcode == frame::Opcode::Close {
            let _ = frame::check_close_payload(&payload);
        }
    }
    if let Ok(Some(head)) = http::parse_head(data, 16 << 10) {
        let _ = http::query_param(head.query(), "sid");
        let _ = http::decode_chunked(&data[head.len..], 1 << 20);
    }
}

/// Feeds `data` to the Socket.IO decoders.
pub fn socketio(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = sio::decode(text, 10) {
        if let Some(d) = p.data {
            let _ = sio::split_event(d);
            let _ = sio::check_placeholders(d, p.attachments);
        }
    }
}

/// Feeds `data` to the HTTP request reader as a connection would: the first byte picks
/// how the rest arrives (pieces of 1 to 64 bytes); heads and bodies (by length or
/// chunked) follow one another as pipelined requests.
pub fn http_stream(data: &[u8]) {
    const MAX_HEAD: usize = 1024;
    const MAX_BODY: usize = 4096;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = (first as usize % 64) + 1;
    let mut buf = Vec::new();
    let mut body: Option<BodyReader> = None;
    for piece in rest.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match body.as_mut() {
                None => match http::parse_head(&buf, MAX_HEAD) {
                    Ok(Some(head)) => {
                        assert!(head.len <= buf.len() && head.len <= MAX_HEAD);
                        let _ = http::query_param(head.query(), "sid");
                        buf.drain(..head.len);
                        body = Some(BodyReader::new(&head));
                    }
                    Ok(None) => {
                        assert!(buf.len() <= MAX_HEAD, "an incomplete head is bounded");
                        break;
                    }
                    Err(_) => return,
                },
                Some(reader) => match reader.step(&mut buf, MAX_BODY) {
                    BodyStep::Done(b) => {
                        assert!(b.len() <= MAX_BODY);
                        body = None;
                    }
                    BodyStep::Incomplete => break,
                    BodyStep::TooLarge | BodyStep::Malformed => return,
                },
            }
        }
    }
}

/// Feeds `data` to the WebSocket frame reader as a connection would: the first byte
/// picks how the rest arrives (pieces of 1 to 64 bytes) and the frame budget per turn
/// (1 to 4).
pub fn websocket_stream(data: &[u8]) {
    const MAX_PAYLOAD: usize = 256;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = (first as usize & 63) + 1;
    let budget = (first >> 6) as usize + 1;
    let mut reader = FrameReader::default();
    let mut on = |e: Event<'_>| {
        match e {
            Event::Text(t) => assert!(t.len() <= MAX_PAYLOAD),
            Event::Binary(b) => assert!(b.len() <= MAX_PAYLOAD),
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Close => {}
        }
        Flow::Continue
    };
    for piece in rest.chunks(step) {
        let mut piece = piece.to_vec();
        let mut b = budget;
        if reader
            .feed(&mut piece, MAX_PAYLOAD, &mut b, &mut on)
            .is_err()
        {
            return;
        }
        while reader.has_backlog() {
            let mut b = budget;
            if reader.feed(&mut [], MAX_PAYLOAD, &mut b, &mut on).is_err() {
                return;
            }
        }
    }
}
