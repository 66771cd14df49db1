//! Entry points for the fuzz targets (`fuzz/`) and the corpus replay test: every decoder
//! that reads client bytes, fed arbitrary input. They must never panic.

use crate::protocol::packet as sio;
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
        if h.opcode == frame::OP_CLOSE {
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
