//! Credentials that must never reach a log line, an error or a panic.

use std::fmt;

/// A secret string (Plex token, Stash API key, session cookie). `Debug` and
/// `Display` print a placeholder; the value is only reachable through
/// [`Secret::expose`], at the few places that put it on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for an HTTP header. Never format it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compares a secret with what a request gave, in time that does not
/// depend on where they differ (`subtle`, made for it; only the length
/// shows).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_compared_whole() {
        assert!(same(b"secret-value", b"secret-value"));
        assert!(!same(b"secret-value", b"secret-valuE"));
        assert!(!same(b"secret-value", b"secret-valu"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn never_formats_the_value() {
        let s = Secret::new("hunter22");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }
}
