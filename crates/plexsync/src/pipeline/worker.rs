//! The worker: drains the queue, waits out backoff and outages (the
//! [`breaker`](super::breaker)), exits when nothing is left. One at a time
//! per data folder (an OS file lock, which the OS releases when a worker
//! dies, so a killed worker never blocks the next one). Every face that
//! delivers (the plugin's detached worker, the daemon, the CLI) runs this
//! loop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorClass, StoreFault};
use crate::pipeline::breaker::{self, Gate};
use crate::pipeline::concurrency::{Change, Limiter};
use crate::pipeline::retry;
use crate::pipeline::sync::{Outcome, Pipeline};
use crate::store::{now_ms, Claimed, Closing, Store};

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
    /// Rows claimed at once; their scenes are one Stash request. 200 keeps
    /// a re-sync that changes nothing under 0.01 Stash requests a scene
    /// (one answer of about a megabyte), while a hook that arrives during
    /// a long sync waits behind at most one batch.
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
            batch: 200,
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
pub(crate) async fn nap_unless(stop: &std::sync::atomic::AtomicBool, d: Duration) {
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

/// After a hook set `CAPTURE_SOON`, the worker looks for unreported
/// changes at its next turn, but not more often than this.
const CAPTURE_GAP: Duration = Duration::from_secs(2);

/// After Stash refused us: takes the newer session cookie a hook or task
/// left, if any; returns whether there was one.
fn take_newer_session(pipeline: &Pipeline, queue: &Store) -> Result<bool, Error> {
    let Some(stored) = queue.get_kv(crate::store::kv::STASH_SESSION)? else { return Ok(false) };
    if pipeline.stash.session_cookie().is_some_and(|c| c.expose() == stored) {
        return Ok(false);
    }
    pipeline.stash.set_session_cookie(crate::secret::Secret::new(&stored));
    queue.wake(ErrorClass::Auth)?;
    tracing::info!("Stash refused the session; using the newer one Stash gave the plugin");
    Ok(true)
}

/// Deliveries after Plex comes back are paced for this long.
const GENTLE_PERIOD: Duration = Duration::from_secs(60);

/// A wall clock that moved this much more or less than the monotonic one
/// jumped (NTP, a VM restore); less is drift, which needs nothing.
const CLOCK_SLACK: i64 = 5_000;

/// Notices jumps of the wall clock by comparing it with the monotonic one.
struct ClockWatch {
    mono: Instant,
    wall: i64,
}

impl ClockWatch {
    fn new() -> Self {
        Self { mono: Instant::now(), wall: now_ms() }
    }

    /// Moves the store's times with a jump since the last look, if any.
    fn look(&mut self, queue: &Store) -> Result<(), Error> {
        let (mono, wall) = (Instant::now(), now_ms());
        let jump = (wall - self.wall) - crate::units::millis(mono.duration_since(self.mono));
        if jump.abs() > CLOCK_SLACK {
            queue.shift_clock(jump, wall)?;
            let way = if jump > 0 { "forward" } else { "back" };
            let by = Duration::from_secs((jump.unsigned_abs() + 500) / 1000);
            tracing::warn!(
                "the system clock jumped {way} by {}; retry times, leases and ages were moved with it",
                humantime_short(by)
            );
        }
        (self.mono, self.wall) = (mono, wall);
        Ok(())
    }
}

/// `1h 0m 3s` for a log line.
fn humantime_short(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, s) => format!("{h}h {m}m {s}s"),
    }
}

/// Per-run state of the loop.
struct RunState {
    /// Jumps of the wall clock, seen between turns.
    clock: ClockWatch,
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
    /// When the rows to deliver were last counted, how long counting took,
    /// and done + waiting then.
    counted: Option<(Instant, Duration, usize)>,
    /// Deliveries waiting to share a read of their items.
    waiting: Waiting,
}

/// The progress total is counted again at most this often, and never more
/// often than [`COUNT_SHARE`] allows.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Counting walks the queue's index: at a million rows it takes tens of
/// milliseconds, so a count every second made a large run's cost grow
/// faster than the library. Waiting this many times the count's own time
/// keeps it near 2 % of the run at any size.
const COUNT_SHARE: u32 = 50;

/// A busy worker reads its settings again this often; an idle one when it
/// wakes up.
const SETTINGS_EVERY: Duration = Duration::from_secs(30);

/// How often a worker tries the queue file again while the disk is full or
/// another program holds its lock, and how often it says so again.
const STORE_RETRY: Duration = Duration::from_secs(2);
const STORE_NOTICE_EVERY: Duration = Duration::from_secs(60);

/// Runs until the queue is empty or nothing is due within `max_wait`. `progress(done, total)` after each delivery.
/// The caller holds the worker lock ([`try_lock`]).
///
/// A full disk or another program's lock on the queue file is waited out
/// (at least a minute, else as long as `max_wait`): every write the worker
/// makes is one SQLite transaction, so a failed one leaves the queue as it
/// was, and the run starts again from the queue's state when it can write.
pub async fn run(
    pipeline: &mut Pipeline,
    queue: &Store,
    options: &WorkerOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), Error> {
    let patience = options.max_wait.max(STORE_NOTICE_EVERY);
    // When the store fault began, and when it was last told in the log.
    let mut fault_since: Option<(Instant, Option<Instant>)> = None;
    loop {
        let result = drain(pipeline, queue, options, &mut progress, &mut fault_since).await;
        let waitable = |e: &Error| matches!(e.store_fault, Some(StoreFault::Locked | StoreFault::Full));
        match result {
            Err(e) if waitable(&e) && !options.stopped() => {
                // No `Instant::now() - …`: an instant before the machine's
                // boot panics, and a Pi after a power cut booted seconds ago.
                let (since, told) = fault_since.get_or_insert((Instant::now(), None));
                if since.elapsed() > patience {
                    return Err(e);
                }
                if told.is_none_or(|t| t.elapsed() >= STORE_NOTICE_EVERY) {
                    *told = Some(Instant::now());
                    tracing::warn!("{e}; trying again every {STORE_RETRY:?}");
                }
                if e.store_fault == Some(StoreFault::Full) {
                    if let Err(e) = queue.truncate_log() {
                        tracing::debug!("could not empty the queue's log: {e}");
                    }
                }
                options.nap(STORE_RETRY).await;
            }
            other => return other,
        }
    }
}

/// One run of the loop, until the queue is empty or a store fault;
/// `fault` is the store fault being waited out, if any.
async fn drain(
    pipeline: &mut Pipeline,
    queue: &Store,
    options: &WorkerOptions,
    progress: &mut impl FnMut(usize, usize),
    fault: &mut Option<(Instant, Option<Instant>)>,
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
        clock: ClockWatch::new(),
        waiting: Waiting::default(),
    };
    let lease = pipeline.settings.retry.lease;
    // One worker per queue (the lock): rows a killed worker leased are
    // free now, not when its lease runs out.
    if fault.is_some() {
        // A real write: an update that changes nothing writes nothing.
        queue.set_kv(crate::store::kv::STORE_WRITTEN_AT, &now_ms().to_string())?;
        *fault = None;
        tracing::info!("the queue file can be written again");
    }
    let freed = queue.release_all_leases()?;
    if freed > 0 {
        tracing::info!("{freed} scenes a stopped worker had claimed are free again");
    }
    // A damaged queue file was replaced by an empty one: what it held is
    // found again by comparing every scene with Plex.
    if queue.get_kv(crate::store::kv::RECOVERY_RECONCILE)?.is_some_and(|v| v == "1") {
        super::requests::request(queue, &super::requests::Work::Reconcile { since: None })?;
        queue.set_kv(crate::store::kv::RECOVERY_RECONCILE, "0")?;
    }
    let mut idle_since: Option<Instant> = None;
    // The batch claimed and read while the last one was delivered.
    let mut ahead: Option<Ready> = None;
    let result = loop {
        if options.stopped() {
            tracing::info!("stopping: leases released");
            break Ok(());
        }
        st.clock.look(queue)?;
        if !queue.path().exists() {
            tracing::info!("the queue database was removed; stopping");
            break Ok(());
        }
        if let Err(e) = super::requests::run(pipeline, queue).await {
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
        match wait_for_plex(pipeline, queue, options, &mut st.clock).await {
            Ok(true) => {
                st.gentle_until = Some(Instant::now() + GENTLE_PERIOD);
                // Read before the outage: read again when their turn comes.
                if let Some(stale) = ahead.take() {
                    release_all(queue, &stale.rows(), now_ms())?;
                }
            }
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        // Enough rows that the running deliveries rarely wait for a claim.
        let batch = options.batch.max(4 * st.limiter.limit());
        let ready = match ahead.take() {
            Some(ready) => ready,
            None => {
                let rows = queue.claim(&st.owner, lease, batch)?;
                // With nothing more due, what waits to share a read goes now.
                if rows.is_empty() && st.waiting.jobs.is_empty() {
                    match queue.next_due()? {
                        Some(due) if due - now_ms() <= crate::units::millis(options.max_wait) => {
                            idle_since = None;
                            let wait = crate::units::from_millis((due - now_ms()).max(50)).min(options.max_sleep);
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
                let last = rows.len() < batch;
                prepare(pipeline, queue, rows, last).await?
            }
        };
        if idle_since.take().is_some() || st.settings_read.elapsed() > SETTINGS_EVERY {
            st.settings_read = Instant::now();
            if let Err(e) = pipeline.reload_settings().await {
                tracing::warn!("could not read PlexSync's settings again, keeping the last ones: {e}");
            }
            st.limiter.set_max(pipeline.settings.retry.concurrency);
        }
        if st.counted.is_none_or(|(at, took, _)| at.elapsed() > COUNT_EVERY.max(took * COUNT_SHARE)) {
            let started = Instant::now();
            let waiting = queue.pending_count()?;
            queue.fit_cache()?;
            st.counted = Some((started, started.elapsed(), st.done + waiting));
        }
        // The next batch is claimed now and read while this one is
        // delivered: a batch read from Stash and Plex between two
        // batches left the deliveries idle for that time.
        let next = if ready.last { Vec::new() } else { queue.claim(&st.owner, lease, batch)? };
        let next_last = next.len() < batch;
        let (delivered, next) =
            tokio::join!(deliver_batch(pipeline, queue, ready, &mut st, options, progress), async {
                if next.is_empty() {
                    Ok(None)
                } else {
                    prepare(pipeline, queue, next, next_last).await.map(Some)
                }
            });
        let next = match next {
            Ok(next) => next,
            Err(e) => break Err(e),
        };
        match delivered {
            Ok(None) => ahead = next,
            // The batch stopped: the next one waits as long (it was read
            // before the trouble, and is read again when its turn comes).
            Ok(Some(due)) => {
                if let Some(next) = next {
                    release_all(queue, &next.rows(), due)?;
                }
            }
            Err(e) => {
                if let Some(next) = next {
                    release_all(queue, &next.rows(), now_ms())?;
                }
                if e.class == ErrorClass::Auth && take_newer_session(pipeline, queue)? {
                    continue;
                }
                break Err(e);
            }
        }
    };
    queue.release_owner(&st.owner)?;
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

/// Holds the run while the breaker is open; returns whether it was.
async fn wait_for_plex(
    pipeline: &Pipeline,
    queue: &Store,
    options: &WorkerOptions,
    clock: &mut ClockWatch,
) -> Result<bool, Error> {
    loop {
        if options.stopped() {
            return Ok(false);
        }
        clock.look(queue)?;
        match breaker::check(pipeline, queue).await? {
            Gate::Closed => return Ok(false),
            Gate::Reopened => return Ok(true),
            Gate::Wait(d) => options.nap(d.min(options.max_sleep)).await,
        }
    }
}

/// Watermark change capture, at the first loop and then every
/// `capture_every`: scenes changed in Stash since the last look that no
/// hook queued (and that we have not synced at that version) are queued.
async fn capture_if_due(
    pipeline: &Pipeline,
    queue: &Store,
    options: &WorkerOptions,
    st: &mut RunState,
) -> Result<(), Error> {
    let Some(every) = options.capture_every else { return Ok(()) };
    let asked = queue.get_kv(crate::store::kv::CAPTURE_SOON)?.is_some_and(|v| v == "1");
    let since = st.last_capture.map(|t| t.elapsed());
    if since.is_some_and(|t| t < every && !(asked && t >= CAPTURE_GAP)) {
        return Ok(());
    }
    if asked {
        queue.set_kv(crate::store::kv::CAPTURE_SOON, "0")?;
    }
    let first = st.last_capture.is_none();
    st.last_capture = Some(Instant::now());
    let look = if first || crate::pipeline::capture::wide_due(queue)? {
        crate::pipeline::capture::Look::Wide
    } else {
        crate::pipeline::capture::Look::Narrow
    };
    let n = crate::pipeline::capture::capture(&pipeline.stash, queue, look).await?;
    queue.set_kv(crate::store::kv::LAST_CAPTURE, &now_ms().to_string())?;
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

/// One claimed row and its scene as the batch's Stash read found it
/// (`Some(None)`: gone; `None`: not read, the delivery reads it).
struct Job {
    row: Claimed,
    scene: Option<Option<crate::clients::stash::Scene>>,
}

/// Deliveries that will write, held back until their items can be read
/// ahead together: one Plex request for up to [`READ_AHEAD_ITEMS`] reads
/// before writes, however scattered the changed scenes are in the queue.
#[derive(Default)]
struct Waiting {
    jobs: Vec<Job>,
    keys: Vec<String>,
    since: Option<Instant>,
}

/// Items read ahead in one go (one request: see `PlexClient::items`).
const READ_AHEAD_ITEMS: usize = 100;
/// The longest a delivery waits for others to share its read; a queue
/// with nothing more due now does not wait at all.
const READ_AHEAD_WAIT: Duration = Duration::from_secs(2);

impl Waiting {
    fn add(&mut self, job: Job, keys: Vec<String>) {
        self.since.get_or_insert_with(Instant::now);
        self.jobs.push(job);
        self.keys.extend(keys);
    }

    /// Whether to read and deliver now; `last`: the queue has no more due.
    fn due(&self, last: bool) -> bool {
        !self.jobs.is_empty()
            && (last
                || self.keys.len() >= READ_AHEAD_ITEMS
                || self.since.is_some_and(|t| t.elapsed() >= READ_AHEAD_WAIT))
    }

    fn take(&mut self) -> (Vec<Job>, Vec<String>) {
        self.since = None;
        (std::mem::take(&mut self.jobs), std::mem::take(&mut self.keys))
    }
}

/// A claimed batch made ready to deliver: its scenes read from Stash in
/// one request (and marked seen), those that will write apart with the
/// items they will write (`Pipeline::will_read`). `last`: the queue had
/// no more due when it was claimed.
struct Ready {
    last: bool,
    now: Vec<Job>,
    writing: Vec<(Job, Vec<String>)>,
}

impl Ready {
    fn rows(self) -> Vec<Claimed> {
        self.now.into_iter().chain(self.writing.into_iter().map(|(job, _)| job)).map(|job| job.row).collect()
    }
}

/// Reads the claimed `rows`' scenes and guesses which items they write.
async fn prepare(pipeline: &Pipeline, queue: &Store, rows: Vec<Claimed>, last: bool) -> Result<Ready, Error> {
    let mut read = read_batch(pipeline, &rows).await;
    if let Some(found) = &read {
        // These versions are now taken care of (change capture skips them).
        let at = now_ms();
        queue.atomically(|q| found.values().try_for_each(|scene| q.mark_seen(&scene.id, &scene.updated_at, at)))?;
    }
    let mut ready = Ready { last, now: Vec::new(), writing: Vec::new() };
    // A failed guess (Plex refused the library read) ends the guessing:
    // the deliveries meet the failure themselves, and handle it as ever.
    let mut guess = true;
    for row in rows {
        let scene = read.as_mut().map(|found| found.remove(&row.scene_id));
        let keys = match &scene {
            Some(Some(scene)) if guess => pipeline.will_read(queue, scene, row.reason).await,
            _ => Ok(Vec::new()),
        };
        let job = Job { row, scene };
        match keys {
            Ok(keys) if !keys.is_empty() => ready.writing.push((job, keys)),
            Ok(_) => ready.now.push(job),
            Err(e) => {
                tracing::debug!("scene {}: its Plex items not guessed: {e}", job.row.scene_id);
                guess = false;
                ready.now.push(job);
            }
        }
    }
    Ok(ready)
}

/// Delivers a batch: the deliveries that will write wait in `st.waiting`
/// until their items are read ahead together, the others go at once.
/// Returns when the rows not delivered are due again, if the batch
/// stopped early (they were released).
async fn deliver_batch(
    pipeline: &Pipeline,
    queue: &Store,
    ready: Ready,
    st: &mut RunState,
    options: &WorkerOptions,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Option<i64>, Error> {
    for (job, keys) in ready.writing {
        st.waiting.add(job, keys);
    }
    let mut rest = Vec::new();
    let mut halt = run_jobs(pipeline, queue, ready.now, &mut rest, st, options, progress).await?;
    if halt.is_none() && st.waiting.due(ready.last) {
        let (jobs, keys) = st.waiting.take();
        if let Err(e) = pipeline.read_ahead(&keys).await {
            tracing::warn!("{} Plex items not read ahead of their writes ({e}); each is read on its own", keys.len());
        }
        halt = run_jobs(pipeline, queue, jobs, &mut rest, st, options, progress).await?;
    }
    if halt.is_some() {
        rest.extend(st.waiting.take().0);
    }
    let rest: Vec<Claimed> = rest.into_iter().map(|job| job.row).collect();
    let knobs = &pipeline.settings.retry;
    let due = match halt {
        None => return Ok(None),
        Some(Halt::Stop) => now_ms(),
        Some(Halt::Breaker(err)) => {
            breaker::open(queue, &err, knobs.scale)?;
            now_ms()
        }
        Some(Halt::Until(due)) => due,
        Some(Halt::Fatal(err, due)) => {
            release_all(queue, &rest, due)?;
            return Err(err);
        }
    };
    release_all(queue, &rest, due)?;
    Ok(Some(due))
}

/// Runs `jobs`, several at once as the limiter allows (each is a
/// different scene, so no scene is delivered by two tasks at once). While
/// deliveries are paced after an outage, one at a time. Returns why it
/// stopped starting them, if it did, with the jobs not started in `rest`.
async fn run_jobs(
    pipeline: &Pipeline,
    queue: &Store,
    jobs: Vec<Job>,
    rest: &mut Vec<Job>,
    st: &mut RunState,
    options: &WorkerOptions,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Option<Halt>, Error> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let knobs = pipeline.settings.retry.clone();
    let mut jobs = jobs.into_iter().peekable();
    let mut running = FuturesUnordered::new();
    let mut halt: Option<Halt> = None;
    let mut unwritten = Unwritten::default();
    loop {
        while halt.is_none() && jobs.peek().is_some() && running.len() < st.limiter.limit() {
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
            let Some(Job { row, scene }) = jobs.next() else { break };
            st.limiter.starting(running.len());
            running.push(async move {
                let result = pipeline.deliver(queue, &row.scene_id, row.attempts, row.reason, scene).await;
                (row, result)
            });
            st.peak = st.peak.max(running.len());
        }
        let next = match unwritten.since {
            None => running.next().await,
            Some(since) => {
                match tokio::time::timeout(WRITE_AFTER.saturating_sub(since.elapsed()), running.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        unwritten.write(queue)?;
                        continue;
                    }
                }
            }
        };
        let Some((row, result)) = next else { break };
        let stopped = match result {
            Ok((outcome, closing)) => {
                finished(pipeline, &row, &outcome);
                unwritten.add(row, &outcome, closing);
                if unwritten.due() {
                    unwritten.write(queue)?;
                }
                st.done += 1;
                let total = st.counted.map_or(0, |(_, _, total)| total);
                progress(st.done, total.max(st.done));
                let change = pipeline.plex.as_ref().and_then(|p| st.limiter.finished(p.rtt()));
                limit_moved(change, &st.limiter);
                None
            }
            Err(err) => failed(pipeline, queue, &row, err, &knobs, &mut st.limiter)?,
        };
        if let Some(why) = stopped {
            if halt.as_ref().is_none_or(|h| why.rank() > h.rank()) {
                halt = Some(why);
            }
        }
    }
    unwritten.write(queue)?;
    rest.extend(jobs);
    Ok(halt)
}

/// Deliveries finished but not yet written down: their closing writes
/// and queue rows are one commit per [`WRITE_EVERY`] scenes or
/// [`WRITE_AFTER`], not three per scene. A worker killed meanwhile loses
/// only that: the rows are still queued, and delivered again they write
/// what Plex lacks (nothing, when it has it all).
#[derive(Default)]
struct Unwritten {
    rows: Vec<(Claimed, Option<Closing>)>,
    delivered: bool,
    since: Option<Instant>,
}

const WRITE_EVERY: usize = 64;
const WRITE_AFTER: Duration = Duration::from_millis(250);

impl Unwritten {
    fn add(&mut self, row: Claimed, outcome: &Outcome, closing: Option<Closing>) {
        self.since.get_or_insert_with(Instant::now);
        self.delivered |= matches!(outcome, Outcome::Synced { .. } | Outcome::Unchanged | Outcome::Refreshed(_));
        self.rows.push((row, closing));
    }

    fn due(&self) -> bool {
        self.rows.len() >= WRITE_EVERY || self.since.is_some_and(|t| t.elapsed() >= WRITE_AFTER)
    }

    /// Commits the closings, completes the rows, and notes the time of the
    /// last sync (by the second) and that Plex answers again.
    fn write(&mut self, queue: &Store) -> Result<(), Error> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let delivered = std::mem::take(&mut self.delivered);
        self.since = None;
        queue.atomically(|q| {
            for (row, closing) in &rows {
                if let Some(closing) = closing {
                    q.close(closing)?;
                }
                q.complete(row)?;
            }
            let now = now_ms();
            if delivered && q.kv_number(crate::store::kv::LAST_SYNC)?.abs_diff(now) >= 1_000 {
                q.set_kv(crate::store::kv::LAST_SYNC, &now.to_string())?;
            }
            if q.kv_number(crate::store::kv::BREAKER_FAILURES)? != 0 {
                q.set_kv(crate::store::kv::BREAKER_FAILURES, "0")?;
            }
            Ok(())
        })
    }
}

/// The claimed rows' scenes in one Stash request, by id (a missing id is a
/// scene Stash no longer has); `None` when Stash did not answer, and each
/// delivery then reads (and fails) on its own, as a retry needs.
async fn read_batch(
    pipeline: &Pipeline,
    rows: &[Claimed],
) -> Option<std::collections::HashMap<String, crate::clients::stash::Scene>> {
    if rows.is_empty() {
        return Some(Default::default());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.scene_id.as_str()).collect();
    match pipeline.stash.find_scenes(&ids).await {
        Ok(scenes) => Some(scenes.into_iter().map(|s| (s.id.clone(), s)).collect()),
        Err(e) => {
            tracing::debug!("the batch's scenes not read at once: {e}");
            None
        }
    }
}

/// Logs and counts a delivery that ended with `outcome` (its writes wait
/// in [`Unwritten`]).
fn finished(pipeline: &Pipeline, row: &Claimed, outcome: &Outcome) {
    log_outcome(&row.scene_id, outcome);
    crate::metrics::delivered(outcome.label());
    pipeline.tally(|s| s.count(outcome));
}

/// Records a failed delivery and decides its next try; returns why the
/// batch must stop starting deliveries, if it must.
fn failed(
    pipeline: &Pipeline,
    queue: &Store,
    row: &Claimed,
    err: Error,
    knobs: &crate::config::RetrySettings,
    limiter: &mut Limiter,
) -> Result<Option<Halt>, Error> {
    pipeline.tally(|s| s.failed += 1);
    crate::metrics::failed(err.class);
    let age = crate::units::from_millis(now_ms() - row.enqueued_at);
    let decision = retry::decide(&err, row.attempts, age, knobs);
    let due = now_ms().saturating_add(crate::units::millis(decision.delay));
    queue.fail(row, err.class, &err.message, decision.burn, due, decision.dead)?;
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

fn release_all(queue: &Store, rows: &[Claimed], due: i64) -> Result<(), Error> {
    for row in rows {
        queue.release(&row.scene_id, due)?;
    }
    Ok(())
}
