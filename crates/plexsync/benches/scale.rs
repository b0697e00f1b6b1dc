//! A whole library through the CLI (`plexsync sync --all`, the release
//! binary), at several sizes: first sync, an unchanged re-sync, a re-sync
//! after 1 % of the scenes were edited, a reconcile and `paths suggest`.
//!
//!     cargo build --release -p plexsync && cargo bench -p plexsync --bench scale
//!
//! `SCALE_SIZES` (default `1000,10000`; add `100000` for the big
//! run), `SCALE_LATENCY_MS` (the Plex emulator's added latency per
//! request, default 0) and `SCALE_PLEX_CAPACITY` (requests it answers at
//! once, default 6; the rest queue) and `SCALE_CONCURRENCY` (the
//! `plexConcurrency` cap, default 8) choose the runs;
//! `SCALE_RECONCILE_LATENCY_MS` gives the reconcile run its own latency;
//! `SCALE_RUNS` (default all: `first,unchanged,edited,reconcile,paths`)
//! picks runs, to profile one at a million without the others' hour (a
//! first sync always runs: the others start from its queue). Per run it prints
//! wall time, Plex requests per scene (library pages, item reads, writes,
//! uploads), library pages read per 100 scenes, Stash requests per scene
//! of the library (GraphQL and the rest; images apart), the CLI's
//! peak RSS (`VmHWM`), CPU seconds per 1 000 scenes of the CLI and of the
//! emulators (this process) beside it, and how the adaptive delivery limit
//! moved (from the worker's log). Partial scans are off, so "unchanged"
//! means unchanged.

mod common;

/// The emulators answer from trees of many small allocations. With glibc's
/// allocator they spent most of their CPU in it (consolidating and
/// searching its bins), and more per item the larger their heap: at a
/// million scenes 31 % more per scene in `paths suggest`, where they are
/// 80 % of the run. The instrument's cost per item must not grow with
/// the library, so this process uses mimalloc; PlexSync, a child process,
/// keeps the allocator it ships with.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
fn main() {
    unix::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the scale benchmark reads peak RSS from /proc: Linux only");
}

#[cfg(target_os = "linux")]
mod unix {
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use super::common;
    use emulators::{PlexEmulator, StashEmulator};
    use serde_json::json;

    /// What one `plexsync <args>` cost.
    struct Cost {
        wall: f64,
        /// Peak RSS of the process, MB.
        rss: f64,
        /// CPU seconds (user + system) of the process, and of this one
        /// (the emulators, and this benchmark's polling) meanwhile.
        cpu: f64,
        emulators_cpu: f64,
        log: String,
    }

    /// CPU seconds this process has used.
    fn own_cpu() -> f64 {
        // SAFETY: getrusage fills the struct we pass; no other precondition.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    fn seconds(t: libc::timeval) -> f64 {
        t.tv_sec as f64 + t.tv_usec as f64 / 1e6
    }

    /// One `plexsync <args>`: its wall time, peak RSS, CPU and log.
    fn cli(exe: &Path, data: &Path, stash: &StashEmulator, args: &[&str]) -> Cost {
        let started = Instant::now();
        let cpu_before = own_cpu();
        let log = data.with_extension("log");
        // Waited for by `waitpid` below, polling its memory meanwhile.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(exe)
            .args(["--data-dir", data.to_str().unwrap()])
            .args(args)
            .env("PLEXSYNC_STASH_URL", stash.url().as_str())
            .env("PLEXSYNC_STASH_SESSION", stash.login_cookie())
            .env("PLEXSYNC_LOG", "plexsync=warn,plexsync::pipeline::worker=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let (status, rss_kb, cpu) = wait_with_peak_rss(child.id());
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status == 0, "{args:?} failed with status {status}: {log}");
        Cost {
            wall: started.elapsed().as_secs_f64(),
            rss: rss_kb as f64 / 1024.0,
            cpu,
            emulators_cpu: own_cpu() - cpu_before,
            log,
        }
    }

    /// The delivery limit's moves in a worker log: "1 → 2 → 3 → 2 …",
    /// shortened to its first and last moves when long.
    fn limit_moves(log: &str) -> String {
        let mut limits = vec![1usize];
        for line in log.lines() {
            let Some((_, rest)) = line.split_once("deliveries at once: ") else { continue };
            let n = rest.split(|c: char| !c.is_ascii_digit()).find(|w| !w.is_empty()).and_then(|w| w.parse().ok());
            if let (Some(n), false) = (n, rest.starts_with("at most")) {
                limits.push(n);
            }
        }
        let show = |s: &[usize]| s.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" → ");
        let moves = if limits.len() > 24 {
            format!("{} … {}", show(&limits[..12]), show(&limits[limits.len() - 12..]))
        } else {
            show(&limits)
        };
        let peak = limits.iter().max().unwrap_or(&1);
        let tail = &limits[limits.len() / 2..];
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        format!("{} moves, peak {peak}, mean of the later half {mean:.1}: {moves}", limits.len() - 1)
    }

    /// Waits for `pid`; returns its exit status, peak RSS (KiB) and CPU
    /// seconds (from `wait4`'s rusage of the reaped child). The
    /// peak is the kernel's high-water mark of the process's own memory
    /// (`VmHWM`, reset at exec), read until it exits: `wait4`'s
    /// `ru_maxrss` would also count the benchmark's own pages the child
    /// shared between fork and exec.
    fn wait_with_peak_rss(pid: u32) -> (i32, i64, f64) {
        let status_file = format!("/proc/{pid}/status");
        let mut peak = 0;
        loop {
            let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
            });
            peak = hwm.unwrap_or(0).max(peak);
            let mut status = 0;
            // SAFETY: plain syscall on our own child, into a zeroed rusage.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let pid = libc::pid_t::try_from(pid).expect("a process id is a pid_t");
            let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if got == pid {
                // A process ended by a signal (an abort) is no success: as
                // the shell says it, 128 and the signal.
                let code =
                    if libc::WIFSIGNALED(status) { 128 + libc::WTERMSIG(status) } else { libc::WEXITSTATUS(status) };
                return (code, peak, seconds(usage.ru_utime) + seconds(usage.ru_stime));
            }
            assert_eq!(got, 0, "waitpid");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Plex requests since the last clear, by kind.
    #[derive(Default)]
    struct PlexCounts {
        pages: usize,
        reads: usize,
        writes: usize,
        uploads: usize,
    }

    fn plex_counts(plex: &PlexEmulator) -> PlexCounts {
        let mut c = PlexCounts::default();
        for r in plex.requests() {
            if r.path.ends_with("/posters") || r.path.ends_with("/arts") {
                c.uploads += 1;
            } else if r.is_write() {
                c.writes += 1;
            } else if r.path.starts_with("/library/sections/") && r.path.ends_with("/all") {
                c.pages += 1;
            } else {
                c.reads += 1;
            }
        }
        c
    }

    /// The CLI and the emulators of one library.
    struct Bed<'a> {
        exe: &'a Path,
        data: &'a Path,
        stash: &'a StashEmulator,
        plex: &'a PlexEmulator,
    }

    /// Runs `args` and prints its row; requests are counted per `per` scenes.
    fn run(bed: &Bed, what: &str, args: &[&str], n: usize, per: usize) {
        let Bed { exe, data, stash, plex } = *bed;
        plex.clear_requests();
        let stash_before = (stash.request_count(), stash.image_requests());
        let Cost { wall: secs, rss, cpu, emulators_cpu, log } = cli(exe, data, stash, args);
        let images = stash.image_requests();
        let images = images.served + images.not_modified - stash_before.1.served - stash_before.1.not_modified;
        let graphql = stash.request_count() - stash_before.0 - images;
        let c = plex_counts(plex);
        let total = c.pages + c.reads + c.writes + c.uploads;
        let per_scene = |x: usize| x as f64 / per.max(1) as f64;
        let per_1000 = |s: f64| s * 1000.0 / n as f64;
        println!(
            "| {n:>7} | {what:<14} | {secs:>8.1} s | {:>6.3} | {:.3} / {:.3} / {:.3} / {:.3} | {:>6.2} | {:.4} / {:.3} | {rss:>5.1} MB | {:.3} / {:.3} |",
            per_scene(total),
            per_scene(c.pages),
            per_scene(c.reads),
            per_scene(c.writes),
            per_scene(c.uploads),
            c.pages as f64 * 100.0 / n as f64,
            graphql as f64 / n as f64,
            images as f64 / n as f64,
            per_1000(cpu),
            per_1000(emulators_cpu),
        );
        eprintln!("  {n} {what}: delivery limit {}", limit_moves(&log));
    }

    /// Edits every hundredth scene in Stash, then re-syncs.
    async fn edit_one_in_100(bed: &Bed<'_>, n: usize) {
        let edited: Vec<u64> = bed.stash.with_state(|s| s.scenes.keys().copied().step_by(100).collect());
        for id in &edited {
            let q = "mutation($i: SceneUpdateInput!) { sceneUpdate(input: $i) { id } }";
            common::graphql(bed.stash, q, json!({"i": {"id": id.to_string(), "details": format!("Edited {id}.")}}))
                .await;
        }
        tokio::task::block_in_place(|| run(bed, "1 % edited", &["sync", "--all"], n, edited.len()));
    }

    #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    pub async fn main() {
        let exe = common::release_binary();
        let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .map(|s| s.trim().parse().expect("sizes are numbers"))
            .collect();
        let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        let latency = env("SCALE_LATENCY_MS", 0);
        let capacity = usize::try_from(env("SCALE_PLEX_CAPACITY", 6)).expect("SCALE_PLEX_CAPACITY fits a usize");
        let cap = env("SCALE_CONCURRENCY", 8);
        let runs = std::env::var("SCALE_RUNS").unwrap_or_else(|_| "first,unchanged,edited,reconcile,paths".into());
        let wanted = |run: &str| runs.split(',').any(|r| r.trim() == run);
        println!(
            "Plex latency {latency} ms, {capacity} requests answered at once, plexConcurrency {cap}; requests per scene of the library (first, unchanged), per edited scene (1 %)"
        );
        println!("|  scenes | run            |    wall    | Plex req/scene | pages / item reads / writes / uploads | pages per 100 scenes | Stash req/scene: GraphQL / images | peak RSS | CPU s per 1000 scenes: PlexSync / emulators |");
        println!("|--------:|----------------|-----------:|------:|---|------:|---|------:|---|");
        for n in sizes {
            let generated = Instant::now();
            let spec = emulators::LibrarySpec { scenes: n, seed: 7, ..Default::default() };
            let lib = emulators::Library::generate(&spec);
            let mapping = format!("{} => {}", lib.stash_prefix, lib.plex_prefix);
            let (stash, plex) = common::emulators_of(lib).await;
            // No partial scans: the emulated Plex would add the scenes it
            // lacks, and the unchanged re-sync would deliver them for the
            // first time.
            stash.set_plugin_settings(
                "PlexSync",
                json!({"plexUrl": plex.url().as_str(), "plexToken": "bench-token", "skipUnorganized": false,
                       "pathMappings": mapping, "partialScan": false, "plexConcurrency": cap}),
            );
            eprintln!("{n} scenes generated in {:.1} s", generated.elapsed().as_secs_f64());
            plex.record_queries(false);
            plex.faults(|f| {
                f.config.latency_ms = latency;
                f.config.capacity = capacity;
            });
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("plexsync");
            let bed = Bed { exe: &exe, data: &data, stash: &stash, plex: &plex };
            let sync_all = ["sync", "--all"];
            tokio::task::block_in_place(|| run(&bed, "first sync", &sync_all, n, n));
            let in_plex = plexsync::store::Store::open(&data.join("queue.sqlite")).unwrap().stats().unwrap().synced;
            eprintln!("{in_plex} of {n} scenes are in Plex and were delivered");
            if wanted("unchanged") {
                tokio::task::block_in_place(|| run(&bed, "unchanged", &sync_all, n, n));
            }
            if wanted("edited") {
                edit_one_in_100(&bed, n).await;
            }
            // Reconcile reads every item, as many at once as deliveries
            // (against a Plex as slow as SCALE_RECONCILE_LATENCY_MS, if set).
            let slow = env("SCALE_RECONCILE_LATENCY_MS", latency);
            plex.faults(|f| f.config.latency_ms = slow);
            let what = if slow == latency { "reconcile".to_string() } else { format!("reconcile {slow} ms") };
            if wanted("reconcile") {
                tokio::task::block_in_place(|| run(&bed, &what, &["reconcile"], n, n));
            }
            plex.faults(|f| f.config.latency_ms = latency);
            if latency == 0 && wanted("paths") {
                tokio::task::block_in_place(|| run(&bed, "paths suggest", &["paths", "suggest"], n, n));
            }
        }
    }
}
