//! Session ids.

use std::fmt;

/// A session id: 20 URL-safe base64 characters from 120 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; 20]);

impl Sid {
    /// A fresh, unguessable id from the thread-local CSPRNG.
    pub fn random() -> Sid {
        use base64::Engine as _;
        let raw: [u8; 15] = rand::random();
        let mut out = [0u8; 20];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .expect("15 bytes encode to 20");
        debug_assert_eq!(n, 20);
        Sid(out)
    }

    /// Parses a sid from a request; anything that is not 20 base64url bytes is no sid.
    pub fn parse(s: &str) -> Option<Sid> {
        let b = s.as_bytes();
        if b.len() != 20
            || !b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        {
            return None;
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(b);
        Some(Sid(out))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from base64url characters.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
