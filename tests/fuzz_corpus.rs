//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the decoders, so every
//! input the fuzzers found interesting stays panic-free in CI without a nightly toolchain.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        run(&data);
        // Every prefix too: truncated input is the common malformed case.
        for cut in 0..data.len().min(64) {
            run(&data[..cut]);
        }
        n += 1;
    }
    n
}

#[test]
fn engine_corpus_decodes_without_panicking() {
    assert!(replay("engine_packet", herald::fuzzing::engine) > 0);
}

#[test]
fn socketio_corpus_decodes_without_panicking() {
    assert!(replay("socketio_packet", herald::fuzzing::socketio) > 0);
}

#[test]
fn http_stream_corpus_reads_without_panicking() {
    assert!(replay("http_stream", herald::fuzzing::http_stream) > 0);
}

#[test]
fn websocket_stream_corpus_reads_without_panicking() {
    assert!(replay("websocket_stream", herald::fuzzing::websocket_stream) > 0);
}
