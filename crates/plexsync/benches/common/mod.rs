//! What the benchmarks share: emulators with PlexSync configured, a plugin
//! folder holding the manifest, and percentiles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use emulators::{Library, PlexEmulator, PlexState, StashAuth, StashEmulator, StashState};
use serde_json::json;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Stash with a login and a Plex holding the sample library of `scenes`
/// scenes, with PlexSync's settings pointing at that Plex.
pub async fn emulators(scenes: usize) -> (StashEmulator, PlexEmulator) {
    emulators_of(Library::sample(scenes, 3)).await
}

/// The same for a library of the caller's making.
pub async fn emulators_of(lib: Library) -> (StashEmulator, PlexEmulator) {
    let stash = StashEmulator::start(StashState::from_library(&lib), StashAuth::login(None)).await.unwrap();
    let plex = PlexEmulator::start(PlexState::from_library(&lib), "bench-token").await.unwrap();
    stash.set_plugin_settings(
        "PlexSync",
        json!({"plexUrl": plex.url().as_str(), "plexToken": "bench-token", "skipUnorganized": false,
               "pathMappings": format!("{} => {}", lib.stash_prefix, lib.plex_prefix)}),
    );
    (stash, plex)
}

/// `<config>/plugins/PlexSync/` holding the committed manifest; the caller
/// puts the binary in.
pub fn plugin_folder(config: &Path) -> PathBuf {
    let folder = config.join("plugins/PlexSync");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(root().join("plugin/PlexSync.yml"), folder.join("PlexSync.yml")).unwrap();
    folder
}

/// The release binary (`PLEXSYNC_BIN`, or `target/release/plexsync`).
pub fn release_binary() -> PathBuf {
    let exe = std::env::var("PLEXSYNC_BIN").map(PathBuf::from).unwrap_or_else(|_| {
        let mut p = std::env::current_exe().unwrap();
        p.pop();
        p.pop();
        p.join("plexsync")
    });
    assert!(exe.exists(), "build the binary first (cargo build --release -p plexsync): {}", exe.display());
    exe
}

/// README's install step: the binary and the manifest in a plugin folder.
pub fn install(config: &Path, exe: &Path) -> PathBuf {
    let folder = plugin_folder(config);
    #[cfg(unix)]
    std::os::unix::fs::symlink(exe, folder.join("plexsync")).unwrap();
    #[cfg(windows)]
    std::fs::copy(exe, folder.join("plexsync.exe")).map(drop).unwrap();
    folder
}

/// Sends a GraphQL document to Stash as a logged-in person's browser does
/// (mutations fire their hooks); fails the benchmark on any error.
pub async fn graphql(stash: &StashEmulator, query: &str, variables: serde_json::Value) {
    let response = reqwest::Client::new()
        .post(stash.url().join("graphql").unwrap())
        .header("Cookie", format!("session={}", stash.login_cookie()))
        .timeout(Duration::from_secs(3600))
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(answer["errors"].is_null(), "{answer}");
}

/// Waits until the worker has delivered everything (nothing waiting,
/// leased or handed over), after a short quiet period; how long that took.
pub async fn drained(data: &Path) -> Duration {
    let started = std::time::Instant::now();
    let mut quiet = 0;
    while quiet < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let busy = plexsync::store::Store::open(&data.join("queue.sqlite"))
            .and_then(|q| q.stats())
            .map(|s| s.due_now + s.leased + s.requests > 0)
            .unwrap_or(true);
        quiet = if busy { 0 } else { quiet + 1 };
        assert!(started.elapsed() < Duration::from_secs(1800), "the queue did not drain");
    }
    started.elapsed()
}

/// Median and 95th percentile, in milliseconds.
pub fn median_p95(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1000.0;
    (at(50), at(95))
}
