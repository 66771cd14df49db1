//! The words every layer shares: a message and whom it is for, a stored copy of one, a
//! user id, the clock. The hub, the store, the broker, delivery and the push service all
//! import this module; it imports none of them, so none of them imports another for its
//! types.

use serde_json::value::RawValue;

/// Longest user id accepted, in bytes.
pub const MAX_USER_ID: usize = 256;

/// A user id: 1 to [`MAX_USER_ID`] bytes of text without control characters. Parsed
/// once, with the same rules wherever one enters herald (a push's targets, an API path,
/// a client's token), so a push can never target a user no client could be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

/// Why a user id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("user ids must not be empty")]
    Empty,
    #[error("user ids must be at most 256 bytes")]
    TooLong,
    #[error("user ids must not contain control characters")]
    Control,
}

impl UserId {
    pub fn parse(s: impl Into<String>) -> Result<UserId, UserIdError> {
        let s = s.into();
        UserId::check(&s)?;
        Ok(UserId(s))
    }

    /// Whether `s` is a valid user id, without taking it.
    pub fn check(s: &str) -> Result<(), UserIdError> {
        if s.is_empty() {
            return Err(UserIdError::Empty);
        }
        if s.len() > MAX_USER_ID {
            return Err(UserIdError::TooLong);
        }
        // Control characters are ASCII or U+0080..U+009F; most ids are plain ASCII.
        let control = if s.is_ascii() {
            s.bytes().any(|b| b.is_ascii_control())
        } else {
            s.chars().any(char::is_control)
        };
        if control {
            return Err(UserIdError::Control);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whom a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Live only, to these users.
    Users(Vec<String>),
    /// Stored: each user's copy with its sequence number.
    Stored(Vec<(String, u64)>),
    /// Live only, to every connection.
    All,
}

/// A message on its way to devices.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    /// Milliseconds since the Unix epoch when it was accepted.
    pub ts: u64,
    /// Microseconds since the Unix epoch when it became deliverable: accepted (a live
    /// push) or committed (a stored one); 0: unknown. For the delivery latency metric;
    /// travels with the message across nodes.
    pub ready_us: u64,
    pub event: String,
    /// The data as pushed: JSON text, never parsed again.
    pub data: Box<RawValue>,
    pub target: Target,
}

/// One user's stored copy of a message, as the store reads it back.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub id: String,
    pub seq: u64,
    pub event: String,
    pub data: Box<RawValue>,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lets a repeated log line through at most once per interval, and counts the ones it
/// held back (so a flood of refused clients cannot flood the log).
#[derive(Debug, Default)]
pub struct LogEvery {
    /// When a line last went through, ms since the epoch.
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl LogEvery {
    pub const fn new() -> LogEvery {
        LogEvery {
            last: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` if this line may be logged now.
    pub fn allow(&self, every_ms: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = now_ms();
        let last = self.last.load(Relaxed);
        if now.saturating_sub(last) >= every_ms
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_every_lets_one_through_per_interval_and_counts_the_rest() {
        let l = LogEvery::new();
        assert_eq!(l.allow(60_000), Some(0));
        assert_eq!(l.allow(60_000), None);
        assert_eq!(l.allow(60_000), None);
        assert_eq!(l.allow(0), Some(2));
    }

    #[test]
    fn user_ids_have_one_set_of_rules() {
        assert_eq!(UserId::parse("alice").unwrap().as_str(), "alice");
        assert_eq!(UserId::parse("名前").unwrap().as_str(), "名前");
        assert_eq!(UserId::parse(""), Err(UserIdError::Empty));
        assert_eq!(UserId::parse("a".repeat(257)), Err(UserIdError::TooLong));
        assert!(UserId::parse("a".repeat(256)).is_ok());
        for bad in ["a\nb", "\u{0}", "tab\there", "\u{7f}", "\u{85}"] {
            assert_eq!(UserId::parse(bad), Err(UserIdError::Control), "{bad:?}");
        }
    }
}
