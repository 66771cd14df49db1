//! Test helpers and size checks for sessions.

use super::*;

#[test]
fn a_session_fits_its_allocation_size() {
    // With the `Arc` counts, 224 bytes: one of jemalloc's size classes. A field more
    // puts every session in the next one (256).
    assert!(
        std::mem::size_of::<Session>() <= 208,
        "{}",
        std::mem::size_of::<Session>()
    );
}

impl Session {
    /// The text of every packet queued so far, taken off the queue (tests).
    pub(crate) fn take_queued(&self) -> Vec<String> {
        let mut inner = self.inner.lock();
        inner.queued_bytes = 0;
        inner
            .queue
            .drain(..)
            .map(|p| String::from_utf8_lossy(p.body()).into_owned())
            .collect()
    }
}
