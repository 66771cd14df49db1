//! One connection in a user's room: how far it has been sent stored messages, and what
//! only a few connections need (a replay in progress, a floor, earlier ranges of sent
//! seqs), kept out of line so that a live connection costs 32 bytes here.

use crate::protocol::Socket;
use crate::transport::Outbound;

/// One connection in a user's room.
pub(super) struct Member {
    pub(super) socket: Socket,
    /// Highest stored seq queued to this connection; stored messages at or below it are
    /// not sent again. 0 until the first one.
    pub(super) last_seq: u64,
    /// Where the current run of seqs sent to it starts (to `last_seq`); 0 for none. A
    /// connection is sent consecutive seqs (from where it resumed or joined on: a gap is
    /// caught up before what follows it), so this is almost always its only run; a
    /// message its full queue refused ends the run, and the next one sent opens another.
    sent_from: u64,
    cold: Option<Box<Cold>>,
}

/// What only a few connections need.
#[derive(Default)]
struct Cold {
    /// Set while the connection replays stored messages: live stored messages wait here.
    replay: Option<Replay>,
    /// The user's last seq when a live connection joined: where a catch-up starts if the
    /// connection has had nothing since (cluster only).
    floor: u64,
    /// Earlier runs of sent seqs, oldest first, at most [`MAX_SENT_RUNS`]: acks for runs
    /// forgotten beyond that are ignored, the safe side (a redelivery, never a loss).
    sent_before: Vec<(u64, u64)>,
}

/// Live stored messages held during a replay.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) held: Vec<(u64, Vec<Outbound>)>,
    /// More arrived than the buffer holds; the replay must read on from the store.
    pub(super) overflowed: bool,
}

/// Earlier runs of sent seqs kept per connection.
const MAX_SENT_RUNS: usize = 16;

impl Member {
    pub(super) fn new(socket: Socket, resuming: bool) -> Member {
        let mut m = Member {
            socket,
            last_seq: 0,
            sent_from: 0,
            cold: None,
        };
        if resuming {
            m.start_replay(Replay::default());
        }
        m
    }

    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Lets go of the out-of-line part once nothing is in it.
    fn trim(&mut self) {
        if self
            .cold
            .as_ref()
            .is_some_and(|c| c.replay.is_none() && c.floor == 0 && c.sent_before.is_empty())
        {
            self.cold = None;
        }
    }

    pub(super) fn replay(&mut self) -> Option<&mut Replay> {
        self.cold.as_mut().and_then(|c| c.replay.as_mut())
    }

    pub(super) fn is_replaying(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.replay.is_some())
    }

    pub(super) fn start_replay(&mut self, replay: Replay) {
        self.cold().replay = Some(replay);
    }

    pub(super) fn end_replay(&mut self) -> Option<Replay> {
        let r = self.cold.as_mut().and_then(|c| c.replay.take());
        self.trim();
        r
    }

    pub(super) fn floor(&self) -> u64 {
        self.cold.as_ref().map_or(0, |c| c.floor)
    }

    pub(super) fn set_floor(&mut self, seq: u64) {
        self.cold().floor = seq;
        self.trim();
    }

    /// `seq` was queued to the connection.
    pub(super) fn sent(&mut self, seq: u64) {
        if self.sent_from == 0 {
            self.sent_from = seq;
        }
    }

    /// `seq` was refused by the connection's full queue: the current run ends before it.
    pub(super) fn refused(&mut self, seq: u64) {
        if self.sent_from != 0 && self.sent_from < seq {
            let run = (self.sent_from, seq - 1);
            let before = &mut self.cold().sent_before;
            if before.len() == MAX_SENT_RUNS {
                before.remove(0);
            }
            before.push(run);
        }
        self.sent_from = 0;
    }

    /// Whether `seq` was queued to this connection (the only acks that count).
    pub(super) fn was_sent(&self, seq: u64) -> bool {
        (self.sent_from != 0 && (self.sent_from..=self.last_seq).contains(&seq))
            || self
                .cold
                .as_ref()
                .is_some_and(|c| c.sent_before.iter().any(|&(a, b)| (a..=b).contains(&seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        let engine = crate::transport::Engine::new(Default::default(), Vec::new());
        Member::new(Socket::detached(&engine), false)
    }

    /// Sends `seq` as the hub does.
    fn send(m: &mut Member, seq: u64) {
        m.last_seq = seq;
        m.sent(seq);
    }

    #[test]
    fn sent_seqs_are_runs_and_only_they_count() {
        let mut m = member();
        assert!(!m.was_sent(0) && !m.was_sent(1));
        // Resumed after 3: sent 4 and 5.
        send(&mut m, 4);
        send(&mut m, 5);
        assert!(!m.was_sent(1) && !m.was_sent(2) && !m.was_sent(3));
        assert!(m.was_sent(4) && m.was_sent(5) && !m.was_sent(6));
        // 6 was refused by a full queue; 7 and 8 went out.
        m.last_seq = 6;
        m.refused(6);
        send(&mut m, 7);
        send(&mut m, 8);
        assert!(m.was_sent(5) && !m.was_sent(6) && m.was_sent(7) && m.was_sent(8));
        // Bounded: the oldest runs are forgotten.
        for i in 0..40 {
            m.last_seq = 100 + 2 * i;
            m.refused(100 + 2 * i);
            send(&mut m, 101 + 2 * i);
        }
        assert!(!m.was_sent(4), "the oldest runs are dropped");
        assert!(m.was_sent(179));
        assert!(m.cold.as_ref().unwrap().sent_before.len() <= MAX_SENT_RUNS);
    }

    #[test]
    fn a_live_connection_costs_32_bytes_and_nothing_out_of_line() {
        assert_eq!(std::mem::size_of::<Member>(), 32);
        let mut m = member();
        send(&mut m, 1);
        assert!(m.cold.is_none());
        m.start_replay(Replay::default());
        assert!(m.is_replaying());
        m.end_replay();
        assert!(m.cold.is_none(), "nothing kept once the replay is over");
    }
}
