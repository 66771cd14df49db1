//! Engine.IO decoders: single packets, v4 and v3 polling payloads, WebSocket frames,
//! and HTTP request heads and chunked bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::engine(data);
});
