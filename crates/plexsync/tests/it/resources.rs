//! Hostile resources: the data folder's disk full, a damaged queue file,
//! a queue file another program keeps locked, and a wall clock that jumps.
//! Every edit made meanwhile still reaches Plex, with no manual step.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{eventually, Bed};
use serde_json::json;

/// Fast retries; a plugin worker that exits a second after its queue empties.
fn settings() -> serde_json::Value {
    json!({"retryScale": 0.02, "drainPerSec": 1000, "workerIdleSecs": 1})
}

/// Synced once, and no worker left running.
async fn synced_bed(scenes: usize, settings: serde_json::Value) -> Bed {
    let bed = Bed::new(scenes, settings).await;
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    no_worker(&bed).await;
    bed
}

async fn no_worker(bed: &Bed) {
    eventually(Duration::from_secs(20), "the idle worker exits", || {
        !plexsync::pipeline::worker::is_running(&bed.data_dir())
    })
    .await;
}

/// [`eventually`], failing with the log at `log` (a worker's).
#[cfg(target_os = "linux")]
async fn eventually_or_log(limit: Duration, what: &str, log: &Path, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("not within {limit:?}: {what}; the worker's log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn titled(bed: &Bed, id: u64, title: &str) -> bool {
    bed.item_of(id).field("title") == Some(title)
}

#[cfg(target_os = "linux")]
fn integrity(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// A tmpfs mounted over a folder for as long as it lives.
#[cfg(target_os = "linux")]
struct Tmpfs(PathBuf);

#[cfg(target_os = "linux")]
impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = privileged("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root or sudo without a password: the full-disk test cannot run"
        );
        Self(at.to_path_buf())
    }

    /// Writes a file until the disk is full; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        let _ = file.flush();
        path
    }
}

/// `program` as root: itself when we are root, else through `sudo -n`.
#[cfg(target_os = "linux")]
fn privileged(program: &str) -> std::process::Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::process::Command::new(program)
    } else {
        let mut sudo = std::process::Command::new("sudo");
        sudo.args(["-n", program]);
        sudo
    }
}

#[cfg(target_os = "linux")]
impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a worker may still hold the queue open.
        let _ = privileged("umount").arg("-l").arg(&self.0).status();
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_hooks_clearly_and_every_edit_made_meanwhile_reaches_plex() {
    let bed = Bed::new(20, json!({"retryScale": 0.02, "drainPerSec": 1000, "workerIdleSecs": 120})).await;
    let disk = Tmpfs::mount(&bed.data_dir(), "8m");
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let ids = bed.scenes_in_plex();
    let (hooked, silent) = (ids[0], ids[1]);
    let worker_pid = std::fs::read_to_string(bed.data_dir().join("worker.pid")).unwrap();
    let filler = disk.fill();

    let run = bed.update_hook(hooked).await;
    let error = run.error.clone().unwrap_or_default();
    assert!(run.failed(), "a hook that could not queue says so");
    assert!(error.contains("disk is full") && error.contains("free some space"), "{error}");
    assert!(error.contains("once the queue file can be written"), "says the edit is not lost: {error}");
    let hooked_title = bed.stash.scene(hooked).unwrap().title.unwrap();
    bed.stash.update_scene(silent, |s| s.title = Some("Edited While Full".into()));
    // Full past the worker's next look at Stash (every 30 s), which fails.
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert!(!titled(&bed, silent, "Edited While Full"), "nothing could have delivered it yet");

    std::fs::remove_file(filler).unwrap();
    let log = bed.data_dir().join("worker.log");
    eventually_or_log(Duration::from_secs(60), "both edits reach Plex once there is room", &log, || {
        titled(&bed, hooked, &hooked_title) && titled(&bed, silent, "Edited While Full")
    })
    .await;
    let queue = bed.data_dir().join("queue.sqlite");
    assert_eq!(integrity(&queue), "ok", "no write was half done");
    let pid = std::fs::read_to_string(bed.data_dir().join("worker.pid")).unwrap();
    assert_eq!(pid, worker_pid, "the worker lived through it");
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_queue_file_is_moved_aside_reported_and_a_reconcile_loses_nothing() {
    let bed = synced_bed(20, settings()).await;
    let ids = bed.scenes_in_plex();
    // Edits only Stash knows of, which a fresh queue has no row for.
    for id in &ids[..3] {
        bed.stash.update_scene(*id, |s| s.title = Some(format!("Before The Damage {id}")));
    }
    // A bad copy: the file's first pages overwritten.
    let path = bed.data_dir().join("queue.sqlite");
    let mut bytes = std::fs::read(&path).unwrap();
    let damaged = 8192.min(bytes.len());
    bytes[..damaged].fill(0x5a);
    std::fs::write(&path, &bytes).unwrap();
    let _ = std::fs::remove_file(bed.data_dir().join("queue.sqlite-wal"));

    let run = bed.edit_hook(ids[5], "After The Damage").await;
    assert!(!run.failed(), "{:?}", run.error);
    let said = run.logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>().join("\n");
    assert!(said.contains("moved it to") && said.contains("fresh queue"), "{said}");
    let kept: Vec<PathBuf> = std::fs::read_dir(bed.data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("queue.sqlite.damaged-"))
        .filter(|p| !p.to_string_lossy().ends_with("-shm") && !p.to_string_lossy().ends_with("-wal"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept, not deleted");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), bytes, "and kept as it was");

    eventually(Duration::from_secs(60), "the edits the lost queue held reach Plex through a reconcile", || {
        ids[..3].iter().all(|id| titled(&bed, *id, &format!("Before The Damage {id}")))
            && bed.item_of(ids[5]).field("summary") == Some("After The Damage")
    })
    .await;
    let status = bed.task("queue_status").await;
    let output = status.output.clone().unwrap_or_default();
    let moved_to = output["queue_recovered"]["moved_to"].as_str().unwrap_or_default();
    assert_eq!(Path::new(moved_to), kept[0], "status names where the file went: {output}");
    let health = bed.task("health_check").await;
    let said = health.logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>().join("\n");
    assert!(said.contains("the queue file was damaged"), "the Health check says so: {said}");
    healthz_says_so(&bed, moved_to).await;
}

#[cfg(unix)]
async fn healthz_says_so(bed: &Bed, moved_to: &str) {
    no_worker(bed).await;
    let mut daemon = crate::common::daemon::Daemon::start(bed, "127.0.0.1:0", &[]).unwrap();
    let body: serde_json::Value = reqwest::get(format!("{}/healthz", daemon.url)).await.unwrap().json().await.unwrap();
    let _ = daemon.child.kill();
    assert_eq!(body["queue_recovered"]["moved_to"], moved_to, "{body}");
}

#[cfg(not(unix))]
async fn healthz_says_so(_bed: &Bed, _moved_to: &str) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_file_locked_for_30_s_fails_hooks_in_bounded_time_and_the_worker_waits_it_out() {
    let bed = Bed::new(20, json!({"retryScale": 0.02, "drainPerSec": 1000, "workerIdleSecs": 120})).await;
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let ids = bed.scenes_in_plex();
    // The worker is running, idle, when another program takes the lock.
    assert!(!bed.edit_hook(ids[0], "Before The Lock").await.failed());
    bed.settle().await;
    let path = bed.data_dir().join("queue.sqlite");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE; UPDATE kv SET value = value WHERE key = 'none';").unwrap();
        locked_tx.send(Instant::now()).unwrap();
        std::thread::sleep(Duration::from_secs(30));
        conn.execute_batch("COMMIT").unwrap();
    });
    let locked_at = locked_rx.recv().unwrap();

    let started = Instant::now();
    let run = bed.edit_hook(ids[1], "While Locked").await;
    let took = started.elapsed();
    assert!(run.failed(), "the hook could not queue");
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("lock on the queue file") && error.contains("finds this edit"), "{error}");
    assert!(took < Duration::from_secs(20), "a hook waits a bounded time: {took:?}");

    tokio::task::spawn_blocking(move || holder.join().unwrap()).await.unwrap();
    let freed = locked_at.elapsed();
    eventually(Duration::from_secs(60), "the edit made under the lock reaches Plex", || {
        bed.item_of(ids[1]).field("summary") == Some("While Locked")
    })
    .await;
    assert!(freed >= Duration::from_secs(29));
    let run = bed.edit_hook(ids[2], "After The Lock").await;
    assert!(!run.failed(), "{:?}", run.error);
    eventually(Duration::from_secs(30), "and so does the next one", || {
        bed.item_of(ids[2]).field("summary") == Some("After The Lock")
    })
    .await;
    assert!(plexsync::pipeline::worker::is_running(&bed.data_dir()), "the worker waited the lock out");
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap();
    assert!(log.contains("lock on the queue file"), "the worker says why it waits: {log}");
}

/// libfaketime, which moves a process's wall clock (not its monotonic one)
/// to what a file says, read again every second.
#[cfg(target_os = "linux")]
fn faketime_library() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists());
    crate::common::tool(found, "libfaketime", "Debian's package faketime; .ci/setup installs it")
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jumping_back_an_hour_and_forward_a_day_delays_no_retry_and_loses_nothing() {
    let Some(faketime) = faketime_library() else { return };
    let bed = synced_bed(20, settings()).await;
    bed.configure(json!({"retryScale": 0.02, "drainPerSec": 1000, "workerIdleSecs": 600}));
    let ids = bed.scenes_in_plex();
    let clock = bed.dir.path().join("clock");
    std::fs::write(&clock, "+0\n").unwrap();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["worker", "--plugin", "--data-dir"])
        .arg(bed.data_dir())
        .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .env("LD_PRELOAD", faketime)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_CACHE_DURATION", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(bed.dir.path().join("faked.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(status) = worker.try_wait().unwrap() {
        let log = std::fs::read_to_string(bed.dir.path().join("faked.log")).unwrap_or_default();
        panic!("the worker ended ({status}) under libfaketime: {log}");
    }
    let queue = bed.queue();
    let edit = |id: u64, title: &str| {
        bed.stash.update_scene(id, |s| s.title = Some(title.into()));
        queue
            .enqueue(&plexsync::ids::SceneId::parse(&id.to_string()).unwrap(), plexsync::store::Reason::Manual)
            .unwrap();
    };

    // Plex is down: the breaker holds the rows, due again in seconds.
    bed.plex.go_down();
    edit(ids[0], "Back An Hour");
    eventually(Duration::from_secs(20), "the breaker opens", || {
        queue.get_kv(plexsync::store::kv::OUTAGE_SINCE).unwrap().is_some_and(|v| v != "0")
    })
    .await;
    std::fs::write(&clock, "-1h\n").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    bed.plex.come_up();
    let log = bed.dir.path().join("faked.log");
    eventually_or_log(Duration::from_secs(30), "delivered when Plex is back, not an hour later", &log, || {
        titled(&bed, ids[0], "Back An Hour")
    })
    .await;

    // NTP puts the clock right again; then a day forward, while
    // deliveries wait on a slow Plex.
    std::fs::write(&clock, "+0\n").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    bed.plex.faults(|f| f.config.latency_ms = 1500);
    let forward: Vec<u64> = ids[1..6].to_vec();
    bed.plex.clear_requests();
    for id in &forward {
        edit(*id, &format!("Forward A Day {id}"));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    std::fs::write(&clock, "+1d\n").unwrap();
    eventually_or_log(Duration::from_secs(60), "every edit reaches Plex", &log, || {
        forward.iter().all(|id| titled(&bed, *id, &format!("Forward A Day {id}")))
    })
    .await;
    bed.plex.faults(|f| f.config.latency_ms = 0);
    let edits = bed.plex.requests().iter().filter(|r| r.is_write()).count();
    assert_eq!(edits, forward.len(), "each scene written once: no lease was taken over early");
    let stats = queue.stats().unwrap();
    assert_eq!(stats.dead, 0, "no row aged a day by the jump");
    // The worker looks at its clocks between turns of its loop: the jump
    // made during the batch's slow deliveries is said once the batch ends.
    let log_path = bed.dir.path().join("faked.log");
    for jump in ["jumped back by 1h", "jumped forward by 1h", "jumped forward by 24h"] {
        eventually_or_log(Duration::from_secs(20), &format!("the worker says it {jump}"), &log_path, || {
            std::fs::read_to_string(&log_path).unwrap_or_default().contains(jump)
        })
        .await;
    }
    let _ = worker.start_kill();
}
