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

use chrono::{DateTime, Utc};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::concurrency::{Change, Limiter};
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
    /// Rows claimed at once.
    pub batch: usize,
    /// Keep running (sleeping) while the next row is due within this long;
    /// zero returns as soon as nothing is due. The detached worker waits up
    /// to the longest retry window, so delivery resumes after an outage with
    /// no new event.
    pub max_wait: Duration,
    /// Check Stash for changes no hook reported, at start and this often.
    pub capture_every: Option<Duration>,
    /// Longest single sleep, so new rows from hooks are noticed soon (one
    /// indexed SQLite read per wake-up).
    pub max_sleep: Duration,
    /// Stay alive this long with an empty queue (capturing changes) before
    /// exiting. In Stash's Docker image Stash is PID 1 and never reaps a
    /// worker that exited, so every worker lifetime leaves one zombie: a
    /// worker that outlives a burst of edits keeps that to one per idle
    /// period instead of one per edit.
    pub idle: Duration,
    /// Set to stop: the loop releases its leases and returns within
    /// `STOP_CHECK` (a delivery in flight is abandoned, its row released).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            batch: 25,
            max_wait: Duration::from_secs(8 * 86_400),
            capture_every: Some(Duration::from_secs(30)),
            max_sleep: Duration::from_secs(2),
            idle: Duration::ZERO,
            stop: None,
        }
    }
}

/// How often a sleeping or probing worker looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Sleeps `d`, or less once `stop` is set (looked at every `STOP_CHECK`).
pub async fn nap_unless(stop: &std::sync::atomic::AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
        tokio::time::sleep(STOP_CHECK.min(until - Instant::now())).await;
    }
}

impl WorkerOptions {
    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sleeps `d`, or less when asked to stop.
    async fn nap(&self, d: Duration) {
        match &self.stop {
            Some(stop) => nap_unless(stop, d).await,
            None => tokio::time::sleep(d).await,
        }
    }

    /// The worker the plugin starts: waits out retries, idles ten minutes.
    pub fn detached(idle: Duration) -> Self {
        Self { idle, ..Self::default() }
    }

    /// Delivers what is due now and returns (CLI `sync`, tests).
    pub fn foreground() -> Self {
        Self { max_wait: Duration::ZERO, ..Self::default() }
    }
}

/// A long operation a plugin task hands to the worker, so the task returns
/// at once (Stash runs one job at a time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Work {
    /// Queue every scene (changed after `since`).
    Sync { since: Option<DateTime<Utc>> },
    /// Compare scenes (changed after `since`) with Plex, queue what differs.
    Reconcile { since: Option<DateTime<Utc>> },
    /// A performer, studio or tag changed: queue every scene that shows it.
    Related(crate::stash::Related),
}

impl Work {
    pub fn describe(&self) -> String {
        match self {
            Self::Sync { since: None } => "Sync all scenes".into(),
            Self::Sync { since: Some(_) } => "Sync recent scenes".into(),
            Self::Reconcile { since: None } => "Reconcile all".into(),
            Self::Reconcile { since: Some(_) } => "Reconcile recent".into(),
            Self::Related(r) => format!("scenes showing {} {}", r.kind.name(), r.id),
        }
    }
}

/// Hands `work` to the worker of this queue.
pub fn request(queue: &Queue, work: &Work) -> Result<(), Error> {
    queue.push_work(&serde_json::to_string(work).expect("work serializes")).map_err(db)
}

/// Runs the requests plugin tasks left, oldest first.
async fn run_requests(pipeline: &Pipeline, queue: &Queue) -> Result<(), Error> {
    for raw in queue.take_work().map_err(db)? {
        let Ok(work) = serde_json::from_str::<Work>(&raw) else {
            tracing::warn!("ignoring an unreadable request: {raw}");
            continue;
        };
        tracing::info!("{}: started", work.describe());
        let mut shown = 0;
        let mut progress = |done: usize, total: usize| {
            if done == total || done >= shown + 1000 {
                shown = done;
                tracing::info!("{}: {done}/{total}", work.describe());
            }
        };
        let result = match &work {
            Work::Sync { since } => crate::tasks::enqueue_ids(&pipeline.stash, queue, *since, &mut progress).await,
            Work::Reconcile { since } => crate::tasks::reconcile(pipeline, queue, *since, &mut progress).await,
            Work::Related(object) => crate::tasks::enqueue_showing(&pipeline.stash, queue, object)
                .await
                .map(|n| serde_json::json!({"queued": n})),
        };
        match result {
            Ok(summary) => tracing::info!("{}: done: {summary}", work.describe()),
            Err(e) => {
                tracing::error!("{}: {e}; asked again", work.describe());
                request(queue, &work)?;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Set by hooks: the worker looks for unreported changes at its next turn
/// (at most every [`CAPTURE_GAP`]) instead of waiting for `capture_every`.
pub const CAPTURE_SOON_KEY: &str = "capture_soon";
const CAPTURE_GAP: Duration = Duration::from_secs(2);

/// Session key the plugin leaves the newest cookie under.
const SESSION_KEY: &str = crate::plugin::SESSION_KEY;

/// After Stash refused us: takes the newer session cookie a hook or task
/// left, if any; returns whether there was one.
fn take_newer_session(pipeline: &Pipeline, queue: &Queue) -> Result<bool, Error> {
    let Some(stored) = queue.get_kv(SESSION_KEY).map_err(db)? else { return Ok(false) };
    if pipeline.stash.session_cookie().is_some_and(|c| c.expose() == stored) {
        return Ok(false);
    }
    pipeline.stash.set_session_cookie(crate::secret::Secret::new(&stored));
    queue.wake(ErrorClass::Auth).map_err(db)?;
    tracing::info!("Stash refused the session; using the newer one Stash gave the plugin");
    Ok(true)
}

pub const BREAKER_KEY: &str = "plex_breaker_until";
const BREAKER_FAILS_KEY: &str = "plex_breaker_failures";
/// When the current Plex outage began (ms), `0` when Plex answers.
pub const OUTAGE_SINCE_KEY: &str = "plex_outage_since";
/// When change capture last succeeded (ms): Stash answers.
pub const LAST_CAPTURE_KEY: &str = "last_capture_ms";
/// When a delivery last succeeded (ms).
pub const LAST_SYNC_KEY: &str = "last_sync_ms";
/// Deliveries after Plex comes back are paced for this long.
const GENTLE_PERIOD: Duration = Duration::from_secs(60);

/// Per-run state of the loop.
struct RunState {
    owner: String,
    done: usize,
    /// Until when deliveries are paced (after an outage).
    gentle_until: Option<Instant>,
    last_capture: Option<Instant>,
    settings_read: Instant,
    /// How many deliveries run at once.
    limiter: Limiter,
    /// The most that ran at once in this run, for its summary.
    peak: usize,
    /// When the rows to deliver were last counted, and done + waiting then.
    counted: Option<(Instant, usize)>,
}

/// A busy worker reads its settings again this often; an idle one when it
/// wakes up.
const SETTINGS_EVERY: Duration = Duration::from_secs(30);

/// Runs until the queue is empty or nothing is due within `max_wait`. `progress(done, total)` after each delivery.
/// The caller holds the worker lock ([`try_lock`]).
pub async fn run(
    pipeline: &mut Pipeline,
    queue: &Queue,
    options: &WorkerOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), Error> {
    let mut st = RunState {
        owner: format!("{}-{}", std::process::id(), now_ms()),
        done: 0,
        gentle_until: None,
        last_capture: None,
        settings_read: Instant::now(),
        limiter: Limiter::new(pipeline.settings.retry.concurrency),
        peak: 1,
        counted: None,
    };
    let lease = pipeline.settings.retry.lease;
    // One worker per queue (the lock): rows a killed worker leased are
    // free now, not when its lease runs out.
    let freed = queue.release_all_leases().map_err(db)?;
    if freed > 0 {
        tracing::info!("{freed} scenes a stopped worker had claimed are free again");
    }
    let mut idle_since: Option<Instant> = None;
    let result = loop {
        if options.stopped() {
            tracing::info!("stopping: leases released");
            break Ok(());
        }
        if !queue.path().exists() {
            tracing::info!("the queue database was removed; stopping");
            break Ok(());
        }
        if let Err(e) = run_requests(pipeline, queue).await {
            if e.class == ErrorClass::Auth && take_newer_session(pipeline, queue)? {
                continue;
            }
            if matches!(e.class, ErrorClass::Auth | ErrorClass::Config) {
                break Err(e);
            }
        }
        if let Err(e) = capture_if_due(pipeline, queue, options, &mut st).await {
            if e.class == ErrorClass::Auth && take_newer_session(pipeline, queue)? {
                continue;
            }
            tracing::warn!("change capture: {e}");
        }
        match wait_for_breaker(pipeline, queue, options).await {
            Ok(true) => st.gentle_until = Some(Instant::now() + GENTLE_PERIOD),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        // Enough rows that the running deliveries rarely wait for a claim.
        let batch = options.batch.max(4 * st.limiter.limit());
        let rows = queue.claim(&st.owner, lease, batch).map_err(db)?;
        if rows.is_empty() {
            match queue.next_due().map_err(db)? {
                Some(due) if due - now_ms() <= options.max_wait.as_millis() as i64 => {
                    idle_since = None;
                    let wait = Duration::from_millis((due - now_ms()).max(50) as u64).min(options.max_sleep);
                    options.nap(wait).await;
                    continue;
                }
                Some(_) => break Ok(()),
                None if idle_since.get_or_insert_with(Instant::now).elapsed() < options.idle => {
                    options.nap(options.max_sleep).await;
                    continue;
                }
                None => break Ok(()),
            }
        }
        if idle_since.take().is_some() || st.settings_read.elapsed() > SETTINGS_EVERY {
            st.settings_read = Instant::now();
            if let Err(e) = pipeline.reload_settings().await {
                tracing::warn!("could not read PlexSync's settings again, keeping the last ones: {e}");
            }
            st.limiter.set_max(pipeline.settings.retry.concurrency);
        }
        // Counted at most every second: a count per batch would make a
        // large run quadratic.
        if st.counted.is_none_or(|(at, _)| at.elapsed() > Duration::from_secs(1)) {
            st.counted = Some((Instant::now(), st.done + queue.pending_count().map_err(db)?));
        }
        let total = st.counted.map_or(0, |(_, total)| total);
        if let Err(e) = deliver_batch(pipeline, queue, &rows, &mut st, options, total, &mut progress).await {
            if e.class == ErrorClass::Auth && take_newer_session(pipeline, queue)? {
                continue;
            }
            break Err(e);
        }
    };
    queue.release_owner(&st.owner).map_err(db)?;
    if st.done > 0 {
        tracing::info!(
            "delivered {} scenes; deliveries at once: at most {}, {} at the end",
            st.done,
            st.peak,
            st.limiter.limit()
        );
    }
    result
}

/// Watermark change capture, at the first loop and then every
/// `capture_every`: scenes changed in Stash since the last look that no
/// hook queued (and that we have not synced at that version) are queued.
async fn capture_if_due(
    pipeline: &Pipeline,
    queue: &Queue,
    options: &WorkerOptions,
    st: &mut RunState,
) -> Result<(), Error> {
    let Some(every) = options.capture_every else { return Ok(()) };
    let asked = queue.get_kv(CAPTURE_SOON_KEY).map_err(db)?.is_some_and(|v| v == "1");
    let since = st.last_capture.map(|t| t.elapsed());
    if since.is_some_and(|t| t < every && !(asked && t >= CAPTURE_GAP)) {
        return Ok(());
    }
    if asked {
        queue.set_kv(CAPTURE_SOON_KEY, "0").map_err(db)?;
    }
    let first = st.last_capture.is_none();
    st.last_capture = Some(Instant::now());
    let look = if first || crate::capture::wide_due(queue)? {
        crate::capture::Look::Wide
    } else {
        crate::capture::Look::Narrow
    };
    let n = crate::capture::capture(&pipeline.stash, queue, look).await?;
    queue.set_kv(LAST_CAPTURE_KEY, &now_ms().to_string()).map_err(db)?;
    if n > 0 {
        tracing::info!("queued {n} scenes changed in Stash without a hook");
    }
    Ok(())
}

/// Why a batch stopped starting deliveries; the rows not started are
/// released accordingly once the running ones have finished.
enum Halt {
    /// Asked to stop: the rest are due at once (for the next worker).
    Stop,
    /// Plex is unavailable or throttling: the breaker opens.
    Breaker(Error),
    /// Stash is unavailable: every other row would fail the same way.
    Until(i64),
    /// Auth or configuration: the rest wait as long, and the run ends.
    Fatal(Error, i64),
}

impl Halt {
    /// Which of two reasons wins: ending the run over opening the breaker
    /// over waiting for Stash.
    fn rank(&self) -> u8 {
        match self {
            Self::Stop => 0,
            Self::Until(_) => 1,
            Self::Breaker(_) => 2,
            Self::Fatal(..) => 3,
        }
    }
}

/// Delivers `rows`, several at once as the limiter allows (each row is a
/// different scene, so no scene is delivered by two tasks at once). While
/// deliveries are paced after an outage, one at a time.
async fn deliver_batch(
    pipeline: &Pipeline,
    queue: &Queue,
    rows: &[Claimed],
    st: &mut RunState,
    options: &WorkerOptions,
    total: usize,
    progress: &mut impl FnMut(usize, usize),
) -> Result<(), Error> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let knobs = pipeline.settings.retry.clone();
    let mut running = FuturesUnordered::new();
    let mut next = 0;
    let mut halt: Option<Halt> = None;
    loop {
        while halt.is_none() && next < rows.len() && running.len() < st.limiter.limit() {
            if options.stopped() {
                halt = Some(Halt::Stop);
                break;
            }
            if st.gentle_until.is_some_and(|t| Instant::now() < t) {
                if !running.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs_f64(1.0 / knobs.drain_per_sec)).await;
            }
            st.limiter.starting(running.len());
            let row = &rows[next];
            next += 1;
            running.push(async move { (row, pipeline.deliver(queue, &row.scene_id, row.attempts).await) });
            st.peak = st.peak.max(running.len());
        }
        let Some((row, result)) = running.next().await else { break };
        let stopped = match result {
            Ok(outcome) => {
                finished(pipeline, queue, row, &outcome)?;
                st.done += 1;
                progress(st.done, total.max(st.done));
                let change = pipeline.plex.as_ref().and_then(|p| st.limiter.finished(p.rtt()));
                limit_moved(change, &st.limiter);
                None
            }
            Err(err) => failed(pipeline, queue, row, err, &knobs, &mut st.limiter)?,
        };
        if let Some(why) = stopped {
            if halt.as_ref().is_none_or(|h| why.rank() > h.rank()) {
                halt = Some(why);
            }
        }
    }
    let rest = &rows[next..];
    match halt {
        None => Ok(()),
        Some(Halt::Stop) => release_all(queue, rest, now_ms()),
        Some(Halt::Breaker(err)) => {
            open_breaker(queue, &err, knobs.scale)?;
            release_all(queue, rest, now_ms())
        }
        Some(Halt::Until(due)) => release_all(queue, rest, due),
        Some(Halt::Fatal(err, due)) => {
            release_all(queue, rest, due)?;
            Err(err)
        }
    }
}

/// Records a delivery that ended with `outcome`.
fn finished(pipeline: &Pipeline, queue: &Queue, row: &Claimed, outcome: &Outcome) -> Result<(), Error> {
    log_outcome(&row.scene_id, outcome);
    crate::metrics::delivered(outcome);
    if matches!(outcome, Outcome::Synced { .. } | Outcome::Unchanged | Outcome::Refreshed(_)) {
        queue.set_kv(LAST_SYNC_KEY, &now_ms().to_string()).map_err(db)?;
    }
    pipeline.tally(|s| s.count(outcome));
    queue.complete(row).map_err(db)?;
    queue.set_kv(BREAKER_FAILS_KEY, "0").map_err(db)
}

/// Records a failed delivery and decides its next try; returns why the
/// batch must stop starting deliveries, if it must.
fn failed(
    pipeline: &Pipeline,
    queue: &Queue,
    row: &Claimed,
    err: Error,
    knobs: &crate::config::RetrySettings,
    limiter: &mut Limiter,
) -> Result<Option<Halt>, Error> {
    pipeline.tally(|s| s.failed += 1);
    crate::metrics::failed(err.class);
    let age = Duration::from_millis((now_ms() - row.enqueued_at).max(0) as u64);
    let decision = retry::decide(&err, row.attempts, age, knobs);
    let due = now_ms() + decision.delay.as_millis() as i64;
    queue.fail(row, err.class, &err.message, decision.burn, due, decision.dead).map_err(db)?;
    if decision.dead {
        tracing::error!("scene {}: given up after {} attempts: {err}", row.scene_id, row.attempts + 1);
    } else {
        tracing::warn!("scene {}: {err} (next try in {:.0?})", row.scene_id, decision.delay);
    }
    Ok(match err.class {
        ErrorClass::PlexUnavailable | ErrorClass::Throttled => {
            limit_moved(limiter.trouble(), limiter);
            Some(Halt::Breaker(err))
        }
        ErrorClass::StashUnavailable => Some(Halt::Until(due)),
        ErrorClass::Auth | ErrorClass::Config => Some(Halt::Fatal(err, due)),
        _ => None,
    })
}

/// Logs and exports a change of the delivery limit.
fn limit_moved(change: Option<Change>, limiter: &Limiter) {
    let Some(change) = change else { return };
    crate::metrics::concurrency(limiter.limit());
    match change {
        Change::Up(n) => tracing::debug!("deliveries at once: up to {n} (Plex answers in {:.0?})", limiter.baseline()),
        Change::Reset => tracing::info!("deliveries at once: back to 1 after a Plex failure"),
        Change::Down(n) => {
            tracing::debug!(
                "deliveries at once: down to {n} (Plex slowed down; usual answer {:.0?})",
                limiter.baseline()
            )
        }
    }
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

/// While the breaker holds the queue: since when Plex has not answered
/// (ms; 0 when unknown). `None` while Plex answers.
pub fn plex_outage(queue: &Queue) -> Result<Option<i64>, Error> {
    let open = queue.kv_number(BREAKER_KEY).map_err(db)? > 0;
    Ok(if open { Some(queue.kv_number(OUTAGE_SINCE_KEY).map_err(db)?) } else { None })
}

/// Opens the breaker (persisted, so a new process during the outage waits
/// too) for a jittered, growing delay, or Retry-After when Plex gave one.
fn open_breaker(queue: &Queue, err: &Error, scale: f64) -> Result<(), Error> {
    let fails = u32::try_from(queue.kv_number(BREAKER_FAILS_KEY).map_err(db)?).unwrap_or(0);
    let delay = probe_delay(fails, err.retry_after, scale);
    if fails == 0 {
        queue.set_kv(OUTAGE_SINCE_KEY, &now_ms().to_string()).map_err(db)?;
    }
    queue.set_kv(BREAKER_FAILS_KEY, &(fails + 1).to_string()).map_err(db)?;
    queue.set_kv(BREAKER_KEY, &(now_ms() + delay.as_millis() as i64).to_string()).map_err(db)?;
    tracing::warn!("Plex unavailable: the queue waits ({:.0?} before the next probe)", delay);
    Ok(())
}

/// Capped exponential delay with jitter: 1 s, 2 s, 4 s … 60 s, ±50 %.
fn probe_delay(fails: u32, retry_after: Option<Duration>, scale: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(2u32.saturating_pow(fails.min(6))).min(Duration::from_secs(60));
    let jittered = base.mul_f64(rand::rng().random_range(0.5..1.0) * scale);
    retry_after.map_or(jittered, |r| jittered.max(r))
}

/// While the breaker is open, sleeps and probes `/identity` until Plex
/// answers; returns whether it was open.
async fn wait_for_breaker(pipeline: &Pipeline, queue: &Queue, options: &WorkerOptions) -> Result<bool, Error> {
    let started = Instant::now();
    loop {
        let until = queue.kv_number(BREAKER_KEY).map_err(db)?;
        if until == 0 || options.stopped() {
            return Ok(false);
        }
        let wait = until - now_ms();
        if wait > 0 {
            options.nap(Duration::from_millis(wait as u64).min(options.max_sleep)).await;
            continue;
        }
        let Some(plex) = &pipeline.plex else { return Ok(false) };
        match plex.identity().await {
            Ok(_) => {
                queue.set_kv(BREAKER_KEY, "0").map_err(db)?;
                queue.set_kv(BREAKER_FAILS_KEY, "0").map_err(db)?;
                queue.set_kv(OUTAGE_SINCE_KEY, "0").map_err(db)?;
                tracing::info!("Plex is back after {:.0?}; delivering gently for a minute", started.elapsed());
                return Ok(true);
            }
            Err(e) => {
                tracing::debug!("probe: {e}");
                open_breaker(queue, &e, pipeline.settings.retry.scale)?;
            }
        }
    }
}
