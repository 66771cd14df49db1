//! Reading a WebSocket byte stream into messages: frames that arrive split across reads,
//! fragmented messages, control frames between fragments, the payload limit, and a
//! budget of frames per turn. No socket here, so the fuzz target can drive exactly what
//! the connection task runs.

use super::frame::{self, FrameError, Opcode};

/// What the stream carried, in order.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A whole text message (checked to be UTF-8).
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a mut [u8]),
    /// A ping with its payload, to be answered with a pong.
    Ping(&'a [u8]),
    /// A close frame with a valid payload.
    Close,
}

/// Whether the reader goes on after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Stop reading: the connection is closing.
    Stop,
}

/// The state kept between reads. Empty and unallocated between messages.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    /// Bytes of an incomplete frame, or, with `backlog`, of frames left for the next turn.
    partial: Vec<u8>,
    /// A fragmented message being reassembled (its opcode, if one is), and whether
    /// `partial` may hold complete frames (the last turn's budget ran out): together,
    /// so that the reader is seven words, as small as a connection task can hold it.
    state: State,
}

#[derive(Debug, Default)]
struct State {
    /// The opcode of the message being reassembled; none between messages.
    opcode: Option<Opcode>,
    backlog: bool,
    /// Its bytes so far.
    fragments: Vec<u8>,
}

impl FrameReader {
    /// Whether complete frames wait from an earlier turn.
    pub(crate) fn has_backlog(&self) -> bool {
        self.state.backlog
    }

    /// Handles frames left from an earlier turn, then `data` (bytes just read), within
    /// `budget` frames; keeps what is left for later. Messages and frames may not exceed
    /// `max_payload`. An error means the stream broke the protocol; nothing is kept.
    pub(crate) fn feed(
        &mut self,
        data: &mut [u8],
        max_payload: usize,
        budget: &mut usize,
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<(), FrameError> {
        if self.partial.is_empty() {
            // The common case: a read that starts on a frame boundary, handled where it
            // was read; only what is left of it is copied.
            let pos = self.frames(data, max_payload, budget, on)?;
            if pos < data.len() {
                self.partial = data[pos..].to_vec();
            }
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(data);
        let pos = self.frames(&mut buf, max_payload, budget, on)?;
        self.keep(buf, pos);
        Ok(())
    }

    /// Keeps the unhandled tail of `buf`.
    fn keep(&mut self, mut buf: Vec<u8>, pos: usize) {
        buf.drain(..pos);
        self.partial = if buf.is_empty() { Vec::new() } else { buf };
    }

    /// Forgets everything kept (the connection is closing).
    pub(crate) fn clear(&mut self) {
        *self = FrameReader::default();
    }

    /// Handles complete frames from the start of `buf`; returns how many bytes they
    /// took.
    fn frames(
        &mut self,
        buf: &mut [u8],
        max_payload: usize,
        budget: &mut usize,
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<usize, FrameError> {
        let mut pos = 0;
        self.state.backlog = false;
        while pos < buf.len() {
            let Some(h) =
                frame::parse_header(&buf[pos..], max_payload).inspect_err(|_| self.clear())?
            else {
                break;
            };
            let end = pos + h.header_len + h.len;
            if end > buf.len() {
                break;
            }
            if *budget == 0 {
                self.state.backlog = true;
                break;
            }
            *budget -= 1;
            let payload = &mut buf[pos + h.header_len..end];
            frame::unmask(payload, h.mask, 0);
            pos = end;
            let flow = self
                .frame(h.opcode, h.fin, payload, max_payload, on)
                .inspect_err(|_| self.clear())?;
            if flow == Flow::Stop {
                self.clear();
                return Ok(buf.len());
            }
        }
        Ok(pos)
    }

    fn frame(
        &mut self,
        opcode: Opcode,
        fin: bool,
        payload: &mut [u8],
        max_payload: usize,
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, FrameError> {
        match opcode {
            frame::Opcode::Text | frame::Opcode::Binary => {
                if self.state.opcode.is_some() {
                    return Err(FrameError {
                        code: frame::CloseCode::Protocol,
                        reason: "new message inside a fragmented one",
                    });
                }
                if fin {
                    message(opcode, payload, on)
                } else {
                    self.state.opcode = Some(opcode);
                    self.state.fragments = payload.to_vec();
                    Ok(Flow::Continue)
                }
            }
            frame::Opcode::Continuation => {
                let Some(opcode) = self.state.opcode.take() else {
                    return Err(FrameError {
                        code: frame::CloseCode::Protocol,
                        reason: "continuation without a message",
                    });
                };
                let mut data = std::mem::take(&mut self.state.fragments);
                if data.len() + payload.len() > max_payload {
                    return Err(FrameError {
                        code: frame::CloseCode::TooBig,
                        reason: "message exceeds max payload",
                    });
                }
                data.extend_from_slice(payload);
                if fin {
                    message(opcode, &mut data, on)
                } else {
                    self.state.opcode = Some(opcode);
                    self.state.fragments = data;
                    Ok(Flow::Continue)
                }
            }
            frame::Opcode::Ping => Ok(on(Event::Ping(payload))),
            frame::Opcode::Pong => Ok(Flow::Continue),
            frame::Opcode::Close => {
                frame::check_close_payload(payload)?;
                on(Event::Close);
                Ok(Flow::Stop)
            }
        }
    }
}

fn message(
    opcode: Opcode,
    payload: &mut [u8],
    on: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Result<Flow, FrameError> {
    if opcode == frame::Opcode::Text {
        let text = std::str::from_utf8(payload).map_err(|_| FrameError {
            code: frame::CloseCode::InvalidData,
            reason: "text frame is not UTF-8",
        })?;
        Ok(on(Event::Text(text)))
    } else {
        Ok(on(Event::Binary(payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![
            if fin { 0x80 } else { 0 } | opcode as u8,
            0x80 | payload.len() as u8,
        ];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// Feeds `stream` in pieces of `step` bytes; returns what came out.
    fn run(stream: &[u8], step: usize, budget: usize) -> (Vec<String>, Option<frame::CloseCode>) {
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for chunk in stream.chunks(step) {
            let mut chunk = chunk.to_vec();
            let mut b = budget;
            let mut record = |e: Event<'_>| {
                out.push(match e {
                    Event::Text(t) => format!("text {t}"),
                    Event::Binary(b) => format!("binary {}", b.len()),
                    Event::Ping(p) => format!("ping {}", p.len()),
                    Event::Close => "close".into(),
                });
                Flow::Continue
            };
            if let Err(e) = r.feed(&mut chunk, 100, &mut b, &mut record) {
                return (out, Some(e.code));
            }
            while r.has_backlog() {
                let mut b = budget;
                if let Err(e) = r.feed(&mut [], 100, &mut b, &mut record) {
                    return (out, Some(e.code));
                }
            }
        }
        (out, None)
    }

    #[test]
    fn frames_split_anywhere_and_fragments_with_pings_between() {
        let mut s = masked(frame::Opcode::Text, false, b"he");
        s.extend(masked(frame::Opcode::Ping, true, b"p"));
        s.extend(masked(frame::Opcode::Continuation, true, b"llo"));
        s.extend(masked(frame::Opcode::Binary, true, &[0; 7]));
        s.extend(masked(frame::Opcode::Close, true, &[0x03, 0xE8]));
        let want: Vec<String> = ["ping 1", "text hello", "binary 7", "close"]
            .map(String::from)
            .to_vec();
        for step in 1..=s.len() {
            for budget in [1, 2, 256] {
                let (got, err) = run(&s, step, budget);
                assert_eq!(
                    (got, err),
                    (want.clone(), None),
                    "step {step} budget {budget}"
                );
            }
        }
    }

    #[test]
    fn broken_streams_are_refused_with_their_close_code() {
        let cont = masked(frame::Opcode::Continuation, true, b"x");
        assert_eq!(run(&cont, 3, 9).1, Some(frame::CloseCode::Protocol));
        let mut nested = masked(frame::Opcode::Text, false, b"a");
        nested.extend(masked(frame::Opcode::Text, true, b"b"));
        assert_eq!(run(&nested, 64, 9).1, Some(frame::CloseCode::Protocol));
        let bad_utf8 = masked(frame::Opcode::Text, true, &[0xC3]);
        assert_eq!(run(&bad_utf8, 64, 9).1, Some(frame::CloseCode::InvalidData));
        let mut big = Vec::new();
        for _ in 0..3 {
            big.extend(masked(frame::Opcode::Continuation, false, &[b'a'; 60]));
        }
        big.splice(0..0, masked(frame::Opcode::Text, false, b"a"));
        assert_eq!(run(&big, 64, 9).1, Some(frame::CloseCode::TooBig));
    }

    #[test]
    fn the_reader_is_seven_words() {
        assert_eq!(std::mem::size_of::<FrameReader>(), 56);
    }

    #[test]
    fn a_budget_leaves_the_rest_for_the_next_turn() {
        let mut s: Vec<u8> = (0..10)
            .flat_map(|_| masked(frame::Opcode::Ping, true, b""))
            .collect();
        let mut r = FrameReader::default();
        let mut n = 0;
        let mut budget = 3;
        r.feed(&mut s, 100, &mut budget, &mut |_| {
            n += 1;
            Flow::Continue
        })
        .unwrap();
        assert_eq!((n, budget, r.has_backlog()), (3, 0, true));
    }
}
