//! Socket.IO decoders: packets, event splitting, attachment placeholders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald::fuzzing::socketio(data);
});
