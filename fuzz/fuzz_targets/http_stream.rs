//! The HTTP request reader over a byte stream that arrives in pieces: heads, bodies by
//! length or chunked, pipelined requests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::http_stream(data);
});
