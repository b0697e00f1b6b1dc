//! Hook-to-exit of the shipped binaries: the static musl build (what the
//! package holds), the same through the package's launcher (what Stash runs
//! on Linux), and the glibc build, each answering the same hook 300 times
//! through the Stash-exact plugin runner, with the worker already running.
//!
//!     PLEXSYNC_TARGETS=x86_64-unknown-linux-musl scripts/package \
//!       && cargo build --release -p plexsync --no-default-features --target x86_64-unknown-linux-gnu \
//!       && cargo bench -p plexsync --bench startup
//!
//! Prints per variant the binary's size and the median and p95 of
//! start → exit with stdout closed, and the ratio to the glibc build.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{median_p95, root};

const RUNS: usize = 300;

fn existing(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

/// A plugin folder: the manifest, and `plexsync` as `layout` says.
fn folder(config: &Path, layout: &Layout) -> PathBuf {
    let folder = common::plugin_folder(config);
    match layout {
        Layout::Direct(binary) => std::fs::copy(binary, folder.join("plexsync")).map(drop).unwrap(),
        Layout::Launcher(binary) => {
            std::fs::copy(root().join("plugin/launch.sh"), folder.join("plexsync")).unwrap();
            let dir = folder.join("bin/x86_64-unknown-linux-musl");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(binary, dir.join("plexsync")).unwrap();
        }
    }
    folder
}

enum Layout {
    Direct(PathBuf),
    Launcher(PathBuf),
}

async fn measure(layout: &Layout) -> (f64, f64) {
    let (stash, _plex) = common::emulators(50).await;
    let config = tempfile::tempdir().unwrap();
    let folder = folder(config.path(), layout);
    stash.install_plugins(config.path(), &folder).unwrap();
    let ids: Vec<u64> = stash.with_state(|s| s.scenes.keys().copied().collect());
    // The first hook starts the worker; it is not counted.
    assert!(stash.edit_scene(ids[0], &["title"], |_| {}).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stash.clear_hook_runs();
    for i in 0..RUNS {
        assert!(stash.edit_scene(ids[i % ids.len()], &["title"], |_| {}).await);
    }
    let runs = stash.hook_runs();
    assert!(runs.iter().all(|r| !r.run.failed()), "every hook succeeded");
    median_p95(runs.iter().map(|r| r.run.elapsed).collect())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Built for an explicit target so `cargo bench` (default features, the
    // demo included) does not overwrite it.
    let glibc = existing(
        root().join("target/x86_64-unknown-linux-gnu/release/plexsync"),
        "cargo build --release -p plexsync --no-default-features --target x86_64-unknown-linux-gnu",
    );
    let musl = existing(
        root().join("target/x86_64-unknown-linux-musl/release/plexsync"),
        "PLEXSYNC_TARGETS=x86_64-unknown-linux-musl scripts/package",
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1_048_576.0;
    let (glibc_median, glibc_p95) = measure(&Layout::Direct(glibc.clone())).await;
    println!(
        "glibc (dynamic)        {:>5.1} MB  hook median {glibc_median:.2} ms  p95 {glibc_p95:.2} ms",
        size(&glibc)
    );
    for (name, layout) in
        [("musl (static)", Layout::Direct(musl.clone())), ("musl via launcher", Layout::Launcher(musl.clone()))]
    {
        let (median, p95) = measure(&layout).await;
        println!(
            "{name:<22} {:>5.1} MB  hook median {median:.2} ms  p95 {p95:.2} ms  ({:.2}× glibc's median)",
            size(&musl),
            median / glibc_median
        );
    }
}
