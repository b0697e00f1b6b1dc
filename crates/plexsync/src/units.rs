//! Conversions between the integer widths that clocks, counts and SQLite
//! use. A bare `as` wraps or truncates silently (and a 32-bit ARM NAS has
//! a 32-bit `usize`); these saturate instead, which is the meaning wherever
//! they are used: no time or count a server holds comes near the limits, so
//! reaching one is clamped rather than turned into a small or negative value.

use std::time::Duration;

/// A duration in whole milliseconds, as the store keeps times.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds (a difference of store times) as a duration; a negative
/// difference (a clock set back) is none.
pub(crate) fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// An unsigned count or size as SQLite's integer.
pub(crate) fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// SQLite's integer (a count or a size) as a length; negative is 0.
pub(crate) fn to_usize(n: i64) -> usize {
    usize::try_from(n).unwrap_or(if n < 0 { 0 } else { usize::MAX })
}

/// SQLite's integer (a size) as bytes; negative is 0.
pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A float (a setting's number, Plex's rating) rounded to a whole number.
#[expect(clippy::cast_possible_truncation, reason = "`as` from a float saturates (NaN is 0), the meaning here")]
pub(crate) fn round(x: f64) -> i64 {
    x.round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        assert_eq!(millis(Duration::MAX), i64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(from_millis(-5), Duration::ZERO);
        assert_eq!(from_millis(250), Duration::from_millis(250));
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(7usize), 7);
        assert_eq!(to_usize(-1), 0);
        assert_eq!(to_usize(42), 42);
        assert_eq!(to_u64(-1), 0);
        assert_eq!(round(7.6), 8);
        assert_eq!(round(f64::NAN), 0);
        assert_eq!(round(1e30), i64::MAX);
    }
}
