//! One retry policy per failure class (docs/failures.md has the table).
//!
//! Backoff is full jitter: `random(0, min(cap, base · 2^attempt))`, never
//! less than `floor` so a failing row cannot spin. `retryScale` multiplies
//! every delay; `notInPlexHours` and `outageMaxDays` set the two windows.
//!
//! | class              | base  | cap   | burns attempts | gives up (dead letter)            |
//! |--------------------|-------|-------|----------------|-----------------------------------|
//! | plex_unavailable   | 5 s   | 5 min | no             | row older than 7 days             |
//! | stash_unavailable  | 5 s   | 5 min | no             | row older than 7 days             |
//! | throttled          | Retry-After, else 30 s | — | no  | row older than 7 days             |
//! | not_in_plex, ambiguous | 1 min | 2 h | yes          | row older than 24 h               |
//! | auth, config       | 1 min | 1 min | no             | never: waits for the fix          |
//! | bad_data           | 1 min | 1 h   | yes            | after 5 attempts                  |
//! | bug                | 30 s  | 1 h   | yes            | after 10 attempts                 |

use std::time::Duration;

use rand::RngExt;

use crate::config::RetrySettings;
use crate::error::{Error, ErrorClass};

pub(crate) struct Policy {
    pub base: Duration,
    pub cap: Duration,
    pub floor: Duration,
    pub burns_attempts: bool,
    pub max_attempts: Option<i64>,
    pub max_age: Option<Duration>,
}

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn policy(class: ErrorClass, knobs: &RetrySettings) -> Policy {
    let p = |base, cap, burns, max_attempts, max_age| Policy {
        base,
        cap,
        floor: Duration::from_millis(500),
        burns_attempts: burns,
        max_attempts,
        max_age,
    };
    match class {
        ErrorClass::PlexUnavailable | ErrorClass::StashUnavailable => {
            p(Duration::from_secs(5), 5 * MIN, false, None, Some(knobs.outage_max_age))
        }
        ErrorClass::Throttled => p(Duration::from_secs(30), 5 * MIN, false, None, Some(knobs.outage_max_age)),
        ErrorClass::NotInPlex | ErrorClass::Ambiguous => p(MIN, 2 * HOUR, true, None, Some(knobs.not_in_plex_window)),
        ErrorClass::Auth | ErrorClass::Config => p(MIN, MIN, false, None, None),
        ErrorClass::BadData => p(MIN, HOUR, true, Some(5), None),
        ErrorClass::Bug => p(Duration::from_secs(30), HOUR, true, Some(10), None),
    }
}

/// What to do with a row after `err` on its `attempts`-th try.
pub(crate) struct Decision {
    pub delay: Duration,
    pub burn: bool,
    pub dead: bool,
}

pub(crate) fn decide(err: &Error, attempts: i64, age: Duration, knobs: &RetrySettings) -> Decision {
    let p = policy(err.class, knobs);
    let exp = p.base.saturating_mul(2u32.saturating_pow(u32::try_from(attempts.clamp(0, 20)).unwrap_or(20)));
    let ceiling = exp.min(p.cap).max(p.floor);
    let jittered = rand::rng().random_range(
        crate::units::to_u64(crate::units::millis(p.floor))..=crate::units::to_u64(crate::units::millis(ceiling)),
    );
    let mut delay = Duration::from_millis(jittered).mul_f64(knobs.scale);
    if let Some(after) = err.retry_after {
        delay = delay.max(after);
    }
    let next_attempts = attempts + i64::from(p.burns_attempts);
    let dead = p.max_attempts.is_some_and(|max| next_attempts >= max) || p.max_age.is_some_and(|max| age >= max);
    Decision { delay, burn: p.burns_attempts, dead }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds_and_honours_retry_after() {
        let k = RetrySettings::default();
        for attempts in 0..30 {
            let d = decide(&Error::new(ErrorClass::PlexUnavailable, "x"), attempts, Duration::ZERO, &k);
            assert!(d.delay <= Duration::from_secs(300) && d.delay >= Duration::from_millis(500));
            assert!(!d.burn && !d.dead);
        }
        let mut throttled = Error::new(ErrorClass::Throttled, "x");
        throttled.retry_after = Some(Duration::from_secs(900));
        assert_eq!(decide(&throttled, 0, Duration::ZERO, &k).delay, Duration::from_secs(900));
    }

    #[test]
    fn classes_give_up_by_their_rule() {
        let e = |c| Error::new(c, "x");
        let k = RetrySettings::default();
        assert!(decide(&e(ErrorClass::NotInPlex), 3, Duration::from_secs(90_000), &k).dead);
        assert!(!decide(&e(ErrorClass::NotInPlex), 3, Duration::from_secs(3_600), &k).dead);
        assert!(decide(&e(ErrorClass::BadData), 4, Duration::ZERO, &k).dead);
        assert!(!decide(&e(ErrorClass::Auth), 1_000, Duration::from_secs(10_000_000), &k).dead);
        assert!(!decide(&e(ErrorClass::PlexUnavailable), 1_000, Duration::from_secs(86_400), &k).dead);
    }
}
