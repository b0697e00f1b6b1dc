//! The worker: drains the queue, waits out backoff and outages, exits when
//! nothing is left. One at a time per data folder (an OS file lock, which
//! the OS releases when a worker dies, so a killed worker never blocks the
//! next one).
//!
//! While Plex is unavailable a circuit breaker holds the whole queue: no
//! row is tried and no attempt is burned; `/identity` is probed with capped,
//! jittered backoff, and delivery resumes when it answers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::error::{Error, ErrorClass};
use crate::queue::{now_ms, Claimed, Queue};
use crate::retry;
use crate::sync::{db, Outcome, Pipeline};

/// Held while a worker runs.
pub struct WorkerLock {
    _file: File,
}

fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("worker.lock")
}

/// Takes the worker lock, or `None` when another worker holds it.
pub fn try_lock(data_dir: &Path) -> std::io::Result<Option<WorkerLock>> {
    std::fs::create_dir_all(data_dir)?;
    let file = File::options().create(true).truncate(false).write(true).open(lock_path(data_dir))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(WorkerLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether a worker is running for `data_dir` right now.
pub fn is_running(data_dir: &Path) -> bool {
    matches!(try_lock(data_dir), Ok(None))
}

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// How long a claimed row stays ours; a killed worker's rows come back after it.
    pub lease: Duration,
    /// Rows claimed at once.
    pub batch: usize,
    /// Keep running (sleeping) while the next row is due within this long;
    /// zero returns as soon as nothing is due. The detached worker waits up
    /// to the longest retry window, so delivery resumes after an outage with
    /// no new event.
    pub max_wait: Duration,
    /// Pause between deliveries, so a drain after an outage stays gentle.
    pub pace: Duration,
    /// Longest single sleep, so new rows from hooks are noticed.
    pub max_sleep: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(300),
            batch: 25,
            max_wait: Duration::from_secs(8 * 86_400),
            pace: Duration::ZERO,
            max_sleep: Duration::from_secs(15),
        }
    }
}

const BREAKER_KEY: &str = "plex_breaker_until";
const BREAKER_FAILS_KEY: &str = "plex_breaker_failures";

/// Runs until the queue is empty or nothing is due within `max_wait`. `progress(done, total)` after each delivery.
pub async fn run(
    pipeline: &mut Pipeline,
    queue: &Queue,
    options: &WorkerOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), Error> {
    let owner = format!("{}-{}", std::process::id(), now_ms());
    let mut done = 0usize;
    let result = loop {
        if !queue.path().exists() {
            tracing::info!("the queue database was removed; stopping");
            break Ok(());
        }
        if let Err(e) = wait_for_breaker(pipeline, queue, options).await {
            break Err(e);
        }
        let rows = queue.claim(&owner, options.lease, options.batch).map_err(db)?;
        if rows.is_empty() {
            match queue.next_due().map_err(db)? {
                Some(due) if due - now_ms() <= options.max_wait.as_millis() as i64 => {
                    let wait = Duration::from_millis((due - now_ms()).max(50) as u64).min(options.max_sleep);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                _ => break Ok(()),
            }
        }
        let total = done + queue.stats().map_err(db)?.pending as usize;
        if let Err(e) = deliver_batch(pipeline, queue, &rows, options, &mut done, total, &mut progress).await {
            break Err(e);
        }
    };
    queue.release_owner(&owner).map_err(db)?;
    result
}

async fn deliver_batch(
    pipeline: &mut Pipeline,
    queue: &Queue,
    rows: &[Claimed],
    options: &WorkerOptions,
    done: &mut usize,
    total: usize,
    progress: &mut impl FnMut(usize, usize),
) -> Result<(), Error> {
    for (i, row) in rows.iter().enumerate() {
        match pipeline.deliver(queue, &row.scene_id).await {
            Ok(outcome) => {
                log_outcome(&row.scene_id, &outcome);
                pipeline.stats.count(&outcome);
                queue.complete(row).map_err(db)?;
                queue.set_kv(BREAKER_FAILS_KEY, "0").map_err(db)?;
                *done += 1;
                progress(*done, total.max(*done));
            }
            Err(err) => {
                pipeline.stats.failed += 1;
                let age = Duration::from_millis((now_ms() - row.enqueued_at).max(0) as u64);
                let decision = retry::decide(&err, row.attempts, age);
                let due = now_ms() + decision.delay.as_millis() as i64;
                queue.fail(row, err.class, &err.message, decision.burn, due, decision.dead).map_err(db)?;
                if decision.dead {
                    tracing::error!("scene {}: given up after {} attempts: {err}", row.scene_id, row.attempts + 1);
                } else {
                    tracing::warn!("scene {}: {err} (next try in {:.0?})", row.scene_id, decision.delay);
                }
                let rest = &rows[i + 1..];
                match err.class {
                    ErrorClass::PlexUnavailable | ErrorClass::Throttled => {
                        open_breaker(queue, &err)?;
                        release_all(queue, rest, now_ms())?;
                        return Ok(());
                    }
                    // Every other row would fail the same way: they wait as long.
                    ErrorClass::StashUnavailable => {
                        release_all(queue, rest, due)?;
                        return Ok(());
                    }
                    ErrorClass::Auth | ErrorClass::Config => {
                        release_all(queue, rest, due)?;
                        return Err(err);
                    }
                    _ => {}
                }
            }
        }
        if !options.pace.is_zero() {
            tokio::time::sleep(options.pace).await;
        }
    }
    Ok(())
}

fn log_outcome(id: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Synced { rating_key, fields } => {
            tracing::info!("scene {id}: {fields} fields written to Plex item {rating_key}")
        }
        Outcome::Unchanged => tracing::debug!("scene {id}: Plex is up to date"),
        Outcome::Skipped(why) => tracing::info!("scene {id}: skipped: {why}"),
        Outcome::Gone => tracing::info!("scene {id}: deleted in Stash; forgotten"),
        Outcome::Refreshed(rk) => tracing::info!("scene {id}: asked Plex to refresh item {rk}"),
    }
}

fn release_all(queue: &Queue, rows: &[Claimed], due: i64) -> Result<(), Error> {
    for row in rows {
        queue.release(&row.scene_id, due).map_err(db)?;
    }
    Ok(())
}

/// Opens the breaker (persisted, so a new process during the outage waits
/// too) for a jittered, growing delay, or Retry-After when Plex gave one.
fn open_breaker(queue: &Queue, err: &Error) -> Result<(), Error> {
    let fails: u32 = queue.get_kv(BREAKER_FAILS_KEY).map_err(db)?.and_then(|v| v.parse().ok()).unwrap_or(0);
    let delay = probe_delay(fails, err.retry_after);
    queue.set_kv(BREAKER_FAILS_KEY, &(fails + 1).to_string()).map_err(db)?;
    queue.set_kv(BREAKER_KEY, &(now_ms() + delay.as_millis() as i64).to_string()).map_err(db)?;
    tracing::warn!("Plex unavailable: the queue waits ({:.0?} before the next probe)", delay);
    Ok(())
}

/// Capped exponential delay with jitter: 1 s, 2 s, 4 s … 60 s, ±50 %.
fn probe_delay(fails: u32, retry_after: Option<Duration>) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(2u32.saturating_pow(fails.min(6))).min(Duration::from_secs(60));
    let jittered = base.mul_f64(rand::rng().random_range(0.5..1.0));
    retry_after.map_or(jittered, |r| jittered.max(r))
}

/// While the breaker is open, sleeps and probes `/identity` until Plex answers.
async fn wait_for_breaker(pipeline: &Pipeline, queue: &Queue, options: &WorkerOptions) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let until: i64 = queue.get_kv(BREAKER_KEY).map_err(db)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        if until == 0 {
            return Ok(());
        }
        let wait = until - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64).min(options.max_sleep)).await;
            continue;
        }
        let Some(plex) = &pipeline.plex else { return Ok(()) };
        match plex.identity().await {
            Ok(_) => {
                queue.set_kv(BREAKER_KEY, "0").map_err(db)?;
                queue.set_kv(BREAKER_FAILS_KEY, "0").map_err(db)?;
                tracing::info!("Plex is back after {:.0?}; delivering", started.elapsed());
                return Ok(());
            }
            Err(e) => {
                tracing::debug!("probe: {e}");
                open_breaker(queue, &e)?;
            }
        }
    }
}
