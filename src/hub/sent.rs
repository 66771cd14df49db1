//! Which stored seqs a connection was sent: the acks it may give.

/// The stored seqs queued to one connection, as ranges. A connection is sent a run of
/// consecutive seqs (from where it resumed, or joined, on), so this is almost always
/// one range; a message its full queue refused starts another.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// The latest range, `first..=last`; none while `first` is 0 (seqs start at 1).
    first: u64,
    last: u64,
    /// Earlier ranges, oldest first, at most [`MAX_SENT_RANGES`]: acks for ranges
    /// forgotten beyond that are ignored, the safe side (a redelivery, never a loss).
    older: Option<Box<[(u64, u64)]>>,
}

/// Earlier ranges of sent seqs kept per connection.
const MAX_SENT_RANGES: usize = 16;

impl Sent {
    pub(super) fn record(&mut self, seq: u64) {
        if self.first != 0 {
            if seq == self.last + 1 {
                self.last = seq;
                return;
            }
            if (self.first..=self.last).contains(&seq) {
                return;
            }
            // Rare (a message refused by a full queue), so the list is rebuilt rather
            // than kept with room to grow: it costs an idle connection nothing.
            let mut older = self.older.take().map_or_else(Vec::new, Vec::from);
            if older.len() == MAX_SENT_RANGES {
                older.remove(0);
            }
            older.push((self.first, self.last));
            self.older = Some(older.into_boxed_slice());
        }
        self.first = seq;
        self.last = seq;
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        (self.first != 0 && (self.first..=self.last).contains(&seq))
            || self
                .older
                .as_ref()
                .is_some_and(|o| o.iter().any(|&(a, b)| (a..=b).contains(&seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::Sent;

    #[test]
    fn sent_seqs_are_ranges_and_only_they_count() {
        let mut s = Sent::default();
        assert!(!s.contains(0) && !s.contains(1));
        // Resumed after 3: sent 4 and 5.
        s.record(4);
        s.record(5);
        assert!(!s.contains(1) && !s.contains(2) && !s.contains(3));
        assert!(s.contains(4) && s.contains(5) && !s.contains(6));
        // 6 was refused by a full queue; 7 and 8 went out.
        s.record(7);
        s.record(8);
        assert!(s.contains(5) && !s.contains(6) && s.contains(7) && s.contains(8));
        // Bounded: the oldest ranges are forgotten.
        for i in 0..40 {
            s.record(100 + 2 * i);
        }
        assert!(!s.contains(4), "the oldest ranges are dropped");
        assert!(s.contains(178));
        assert!(s.older.as_ref().unwrap().len() <= super::MAX_SENT_RANGES);
    }
}
