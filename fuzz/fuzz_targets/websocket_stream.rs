//! The WebSocket frame reader over a byte stream that arrives in pieces: split frames,
//! fragmented messages, control frames between fragments, the per-turn frame budget.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::websocket_stream(data);
});
