//! Hook-to-exit time of the plugin binary, run exactly as Stash runs it
//! (stdin JSON, pipes read to the end), against the emulators.
//!
//!     cargo bench -p plexsync --bench hook_latency
//!
//! Prints min / median / p95 over many runs for two cases: a worker is
//! already running (the usual case during a bulk edit), and none is (the
//! hook also starts one).

use std::time::Duration;

use emulators::{Library, PlexEmulator, PlexState, StashAuth, StashEmulator, StashState};
use serde_json::json;

const RUNS: usize = 200;

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.2} ms, median {:.2} ms, p95 {:.2} ms over {} runs",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 95 / 100]),
        times.len()
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let exe = std::env::var("PLEXSYNC_BIN").unwrap_or_else(|_| {
        let mut p = std::env::current_exe().unwrap();
        p.pop();
        p.pop();
        p.join("plexsync").display().to_string()
    });
    assert!(std::path::Path::new(&exe).exists(), "build the binary first (cargo build --release -p plexsync): {exe}");
    let exec = vec![exe, "plugin".to_string()];
    let lib = Library::sample(500, 3);
    let stash = StashEmulator::start(StashState::from_library(&lib), StashAuth::default()).await.unwrap();
    let plex = PlexEmulator::start(PlexState::from_library(&lib), "bench-token").await.unwrap();
    stash.set_plugin_settings(
        "PlexSync",
        json!({"plexUrl": plex.url().as_str(), "plexToken": "bench-token", "skipUnorganized": false,
               "pathMappings": format!("{} => {}", lib.stash_prefix, lib.plex_prefix)}),
    );
    let ids: Vec<u64> = stash.with_state(|s| s.scenes.keys().copied().collect());
    let dir = tempfile::tempdir().unwrap();

    // A worker holds the queue: the hook only enqueues.
    let lock = plexsync::worker::try_lock(&dir.path().join("plexsync")).unwrap().unwrap();
    let mut busy = Vec::new();
    for i in 0..RUNS {
        let id = ids[i % ids.len()];
        let run = stash
            .run_hook(&exec, dir.path(), id, "Scene.Update.Post", json!({"id": id.to_string()}), &["id", "title"])
            .await
            .unwrap();
        assert!(!run.failed(), "{run:?}");
        busy.push(run.elapsed);
    }
    println!("hook with a worker running:  {}", summary(busy));
    drop(lock);

    // No worker: the hook also starts one. A fresh data folder per run, so
    // no earlier worker (asleep for a scene Plex lacks) is still there.
    let in_plex: Vec<u64> =
        lib.scenes.iter().zip(&ids).filter(|(s, _)| s.in_plex && s.organized).map(|(_, id)| *id).collect();
    let mut cold = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..RUNS / 4 {
        let fresh = tempfile::tempdir().unwrap();
        let id = in_plex[i % in_plex.len()];
        let run = stash
            .run_hook(&exec, fresh.path(), id, "Scene.Update.Post", json!({"id": id.to_string()}), &["id", "title"])
            .await
            .unwrap();
        assert!(!run.failed(), "{run:?}");
        cold.push(run.elapsed);
        dirs.push(fresh);
    }
    println!("hook starting a worker:      {}", summary(cold));
    // Let the started workers finish their one scene before the folders go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(dirs);
}
