//! The circuit breaker: while Plex is unavailable it holds the whole queue,
//! so no row is tried and no attempt is burned. Its state is in the store,
//! so a process started during the outage waits too; `/identity` is probed
//! with capped, jittered backoff, and delivery resumes when it answers.

use std::time::Duration;

use rand::RngExt;

use crate::error::Error;
use crate::pipeline::sync::Pipeline;
use crate::store::kv::{BREAKER_FAILURES, BREAKER_UNTIL, OUTAGE_SINCE};
use crate::store::{now_ms, Store};

/// While the breaker holds the queue: since when Plex has not answered
/// (ms; 0 when unknown). `None` while Plex answers.
pub(crate) fn plex_outage(queue: &Store) -> Result<Option<i64>, Error> {
    let open = queue.kv_number(BREAKER_UNTIL)? > 0;
    Ok(if open { Some(queue.kv_number(OUTAGE_SINCE)?) } else { None })
}

/// Opens the breaker (persisted, so a new process during the outage waits
/// too) for a jittered, growing delay, or Retry-After when Plex gave one.
pub(crate) fn open(queue: &Store, err: &Error, scale: f64) -> Result<(), Error> {
    let fails = u32::try_from(queue.kv_number(BREAKER_FAILURES)?).unwrap_or(0);
    let delay = probe_delay(fails, err.retry_after, scale);
    if fails == 0 {
        queue.set_kv(OUTAGE_SINCE, &now_ms().to_string())?;
    }
    queue.set_kv(BREAKER_FAILURES, &(fails + 1).to_string())?;
    queue.set_kv(BREAKER_UNTIL, &(now_ms().saturating_add(crate::units::millis(delay))).to_string())?;
    tracing::warn!("Plex unavailable: the queue waits ({:.0?} before the next probe)", delay);
    Ok(())
}

/// Capped exponential delay with jitter: 1 s, 2 s, 4 s … 60 s, ±50 %.
fn probe_delay(fails: u32, retry_after: Option<Duration>, scale: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(2u32.saturating_pow(fails.min(6))).min(Duration::from_secs(60));
    let jittered = base.mul_f64(rand::rng().random_range(0.5..1.0) * scale);
    retry_after.map_or(jittered, |r| jittered.max(r))
}

/// What the breaker says about delivering now.
pub(crate) enum Gate {
    /// Plex answers: deliver.
    Closed,
    /// Plex is down: ask again after this long.
    Wait(Duration),
    /// Plex answered the probe just now: deliver, gently.
    Reopened,
}

/// Whether deliveries may run. Probes `/identity` when the breaker's delay
/// has passed; the caller does the waiting, so it can stop at any time.
pub(crate) async fn check(pipeline: &Pipeline, queue: &Store) -> Result<Gate, Error> {
    let until = queue.kv_number(BREAKER_UNTIL)?;
    if until == 0 {
        return Ok(Gate::Closed);
    }
    let wait = until - now_ms();
    if wait > 0 {
        return Ok(Gate::Wait(crate::units::from_millis(wait)));
    }
    let Some(plex) = &pipeline.plex else { return Ok(Gate::Closed) };
    match plex.identity().await {
        Ok(_) => {
            let since = queue.kv_number(OUTAGE_SINCE)?;
            queue.set_kv(BREAKER_UNTIL, "0")?;
            queue.set_kv(BREAKER_FAILURES, "0")?;
            queue.set_kv(OUTAGE_SINCE, "0")?;
            let down = crate::units::from_millis(now_ms() - since);
            match since {
                0 => tracing::info!("Plex is back; delivering gently for a minute"),
                _ => tracing::info!("Plex is back after {down:.0?}; delivering gently for a minute"),
            }
            Ok(Gate::Reopened)
        }
        Err(e) => {
            tracing::debug!("probe: {e}");
            open(queue, &e, pipeline.settings.retry.scale)?;
            Ok(Gate::Wait(Duration::ZERO))
        }
    }
}
