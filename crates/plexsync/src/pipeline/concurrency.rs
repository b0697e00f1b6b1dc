//! How many deliveries run at once, found at run time (AIMD, after
//! Vector's adaptive request concurrency).
//!
//! The limit starts at one. Every round (as many finished deliveries as
//! the limit) compares Plex's mean answer time in that round with its
//! baseline, the fastest recent round (Plex with nothing queued, as TCP
//! Vegas keeps it): when Plex answered about as fast and the limit was
//! used, the limit grows by one; when answers slowed down (requests are
//! queueing inside Plex), it shrinks by a quarter. A Plex error or timeout
//! drops it to one at once. `plexConcurrency` caps it.

use std::time::Duration;

use crate::clients::http::RttMeter;

/// A round slower than the baseline by this factor means Plex is queueing.
const SLOWER: f64 = 1.5;
/// … and by at least this much: below it, differences are noise (a local
/// Plex answers in well under a millisecond).
const SLACK: Duration = Duration::from_millis(3);
/// How much the baseline rises per round at a limit of one, when no round
/// is as fast. Only then: with more in flight a slower answer may be our
/// own queueing (an average would follow it), and at one it is Plex's new
/// normal (a pure minimum would never learn it).
const BASELINE_CREEP: f64 = 0.05;

/// The adaptive limit.
#[derive(Debug)]
pub(crate) struct Limiter {
    max: usize,
    limit: usize,
    baseline: Option<Duration>,
    /// Deliveries finished in this round, and whether any started with
    /// every slot taken (the limit was what held them back).
    finished: usize,
    saturated: bool,
}

/// What a round did to the limit, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Up(usize),
    /// Plex answered slower: down to this.
    Down(usize),
    /// Plex failed: back to one.
    Reset,
}

impl Limiter {
    pub(crate) fn new(max: usize) -> Self {
        Self { max: max.max(1), limit: 1, baseline: None, finished: 0, saturated: false }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Plex's usual answer time (zero before the first round).
    pub(crate) fn baseline(&self) -> Duration {
        self.baseline.unwrap_or_default()
    }

    /// A new cap (the setting changed); the limit follows it down at once.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        self.limit = self.limit.min(self.max);
    }

    /// A delivery is starting with `in_flight` others running.
    pub(crate) fn starting(&mut self, in_flight: usize) {
        if in_flight + 1 >= self.limit {
            self.saturated = true;
        }
    }

    /// Plex failed (5xx, timeout, throttled, unreachable): one at a time.
    pub(crate) fn trouble(&mut self) -> Option<Change> {
        self.finished = 0;
        self.saturated = false;
        if self.limit == 1 {
            return None;
        }
        self.limit = 1;
        Some(Change::Reset)
    }

    /// A delivery finished without trouble; at the end of a round, adjusts
    /// the limit from the round's mean answer time in `meter`.
    pub(crate) fn finished(&mut self, meter: &RttMeter) -> Option<Change> {
        self.finished += 1;
        if self.finished < self.limit {
            return None;
        }
        let saturated = std::mem::take(&mut self.saturated);
        self.finished = 0;
        let Some(rtt) = meter.take() else {
            // A round that asked Plex nothing (every scene unchanged) cannot
            // have burdened it.
            return self.grow(saturated);
        };
        let Some(baseline) = self.baseline else {
            self.baseline = Some(rtt);
            return None;
        };
        let creep = if self.limit == 1 { 1.0 + BASELINE_CREEP } else { 1.0 };
        self.baseline = Some(rtt.min(baseline.mul_f64(creep)));
        if rtt > baseline.mul_f64(SLOWER) && rtt > baseline + SLACK {
            let lower = (self.limit * 3 / 4).max(1);
            (lower < self.limit).then(|| {
                self.limit = lower;
                Change::Down(lower)
            })
        } else {
            self.grow(saturated)
        }
    }

    fn grow(&mut self, saturated: bool) -> Option<Change> {
        (saturated && self.limit < self.max).then(|| {
            self.limit += 1;
            Change::Up(self.limit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `rounds` full rounds with answers of `rtt_at(limit)`.
    fn run(l: &mut Limiter, meter: &RttMeter, rounds: usize, rtt_at: impl Fn(usize) -> Duration) {
        for _ in 0..rounds {
            let n = l.limit();
            for i in 0..n {
                l.starting(i);
            }
            for _ in 0..n {
                meter.record(rtt_at(n));
                l.finished(meter);
            }
        }
    }

    #[test]
    fn grows_while_plex_answers_as_fast_up_to_the_cap() {
        let (mut l, meter) = (Limiter::new(8), RttMeter::default());
        run(&mut l, &meter, 30, |_| Duration::from_millis(20));
        assert_eq!(l.limit(), 8);
    }

    #[test]
    fn settles_where_plex_starts_queueing() {
        // A server that answers 4 requests at once: beyond that, answer
        // times grow with the number in flight.
        let capacity = 4;
        let rtt = |n: usize| Duration::from_millis(100) * u32::try_from(n.div_ceil(capacity)).unwrap_or(u32::MAX);
        let (mut l, meter) = (Limiter::new(32), RttMeter::default());
        let mut seen = Vec::new();
        for _ in 0..60 {
            run(&mut l, &meter, 1, rtt);
            seen.push(l.limit());
        }
        let late = &seen[30..];
        assert!(late.iter().all(|&n| n <= 2 * capacity), "limit ran away: {seen:?}");
        assert!(late.iter().any(|&n| n >= capacity), "limit never reached Plex's capacity: {seen:?}");
    }

    #[test]
    fn rounds_that_ask_plex_nothing_still_grow() {
        let (mut l, meter) = (Limiter::new(4), RttMeter::default());
        for _ in 0..20 {
            let n = l.limit();
            (0..n).for_each(|i| l.starting(i));
            (0..n).for_each(|_| {
                l.finished(&meter);
            });
        }
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn a_gradual_slowdown_is_not_mistaken_for_the_baseline() {
        // One more in flight per round raises answer times a little each
        // time; the limit must still stop near the server's capacity.
        let capacity = 6.0;
        let rtt = |n: usize| Duration::from_millis(100).mul_f64((n as f64 / capacity).max(1.0));
        let (mut l, meter) = (Limiter::new(32), RttMeter::default());
        run(&mut l, &meter, 80, rtt);
        assert!(l.limit() <= 10, "limit ran past the knee: {}", l.limit());
    }

    #[test]
    fn a_plex_that_became_slower_for_good_is_learned() {
        let (mut l, meter) = (Limiter::new(8), RttMeter::default());
        run(&mut l, &meter, 20, |_| Duration::from_millis(20));
        assert_eq!(l.limit(), 8);
        run(&mut l, &meter, 60, |_| Duration::from_millis(80));
        assert!(l.limit() > 4, "a slower but unqueued Plex keeps the limit at {}", l.limit());
    }

    #[test]
    fn trouble_drops_to_one_and_it_grows_back() {
        let (mut l, meter) = (Limiter::new(8), RttMeter::default());
        run(&mut l, &meter, 10, |_| Duration::from_millis(5));
        assert!(l.limit() > 3);
        assert_eq!(l.trouble(), Some(Change::Reset));
        assert_eq!(l.limit(), 1);
        run(&mut l, &meter, 3, |_| Duration::from_millis(5));
        assert!(l.limit() > 1);
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let (mut l, meter) = (Limiter::new(8), RttMeter::default());
        for _ in 0..40 {
            // One delivery at a time: a limit above two is never used.
            l.starting(0);
            meter.record(Duration::from_millis(5));
            l.finished(&meter);
        }
        assert_eq!(l.limit(), 2);
    }
}
