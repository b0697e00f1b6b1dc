//! The packaged plugin, installed from its plugin source the way Stash's
//! package manager does it, started through its manifest and launcher, and
//! syncing a scene end to end. Needs `scripts/package` first, so it is
//! ignored by default; `scripts/verify-package` runs it:
//!
//!     scripts/package && cargo test -p plexsync --test it package:: -- --ignored

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{eventually, Bed};
use emulators::StashAuth;
use serde_json::json;

fn index() -> PathBuf {
    let dist = std::env::var("PLEXSYNC_DIST").unwrap_or_else(|_| "dist".into());
    let index = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dist).join("index.yml");
    assert!(index.exists(), "run scripts/package first: {} is missing", index.display());
    index
}

#[tokio::test]
#[ignore = "needs scripts/package"]
async fn the_package_installs_from_its_source_and_syncs_a_scene() {
    let bed = packaged_bed(json!({"retryScale": 0.02})).await;
    assert!(bed.plugin_dir.ends_with("plugins/community/PlexSync"), "{}", bed.plugin_dir.display());
    let manifest = std::fs::read_to_string(bed.plugin_dir.join("manifest")).unwrap();
    for file in ["PlexSync.yml", "plexsync.js", "plexsync.css", "plexsync", "bin/x86_64-unknown-linux-musl/plexsync"] {
        assert!(manifest.contains(file), "{file} in Stash's manifest:\n{manifest}");
    }

    let ids = bed.scenes_in_plex();
    assert!(bed.stash.edit_scene(ids[0], &["title"], |s| s.title = Some("From The Package".into())).await);
    let runs = bed.stash.hook_runs();
    let run = &runs.last().expect("the hook ran").run;
    assert!(!run.failed(), "the launcher started the binary: {run:?}");
    eventually(Duration::from_secs(20), "delivered by the packaged worker", || {
        bed.item_of(ids[0]).field("title") == Some("From The Package")
    })
    .await;

    let version = bed.task("health_check").await;
    let reported = version.output.as_ref().map(|o| o.to_string()).unwrap_or_default();
    assert!(reported.contains(plexsync::BUILD.split(' ').next().unwrap()), "health reports the version: {version:?}");
    assert!(reported.contains("linux-musl"), "health reports the packaged target: {version:?}");
}

#[test]
#[ignore = "needs scripts/package"]
fn an_update_replaces_only_the_packages_files() {
    let index = index();
    let plugins = tempfile::tempdir().unwrap();
    let folder = emulators::package::install(&index, "PlexSync", plugins.path()).unwrap();
    std::fs::write(folder.join("my-notes.txt"), "mine").unwrap();
    std::fs::write(folder.join("plexsync"), "stale").unwrap();
    let again = emulators::package::install(&index, "PlexSync", plugins.path()).unwrap();
    assert_eq!(again, folder);
    assert_eq!(std::fs::read_to_string(folder.join("my-notes.txt")).unwrap(), "mine");
    assert!(std::fs::read_to_string(folder.join("plexsync")).unwrap().starts_with("#!/bin/sh"), "replaced");
}

/// A bed whose PlexSync comes from the package, installed from its source.
async fn packaged_bed(settings: serde_json::Value) -> Bed {
    let index = index();
    let install = |config: &Path| emulators::package::install(&index, "PlexSync", &config.join("plugins")).unwrap();
    Bed::installed_by(8, settings, StashAuth::login(None), Default::default(), install).await
}

async fn run(exec: &[String], input: &serde_json::Value) -> emulators::plugin::PluginRun {
    emulators::plugin::run(exec, input, emulators::plugin::LogLevel::Error).await.unwrap()
}

/// No libc, no /etc, no /proc, no certificates: a chroot into a folder
/// holding only the installed plugin (and, later, its queue). Plex is
/// addressed as `localhost`, which no resolver file names there.
#[tokio::test]
#[ignore = "needs scripts/package and root (chroot)"]
async fn the_static_binary_answers_a_hook_and_delivers_from_an_empty_root() {
    let bed = packaged_bed(json!({"retryScale": 0.02, "workerIdleSecs": 2})).await;
    let plex_port = bed.plex.url().port().unwrap();
    bed.configure(json!({"plexUrl": format!("http://localhost:{plex_port}"), "retryScale": 0.02, "workerIdleSecs": 2}));
    let ids = bed.scenes_in_plex();
    bed.stash.update_scene(ids[0], |s| s.title = Some("From An Empty Root".into()));

    let root = bed.dir.path().to_str().unwrap().to_string();
    let binary = "/plugins/community/PlexSync/bin/x86_64-unknown-linux-musl/plexsync";
    let mut input = bed.stash.hook_input("PlexSync", "Scene.Update.Post", ids[0], &["title"]).unwrap();
    input["server_connection"]["Dir"] = json!("/");
    input["server_connection"]["PluginDir"] = json!("/plugins/community/PlexSync");
    let exec = ["chroot".to_string(), root, binary.to_string(), "plugin".to_string()];
    let hook = run(&exec, &input).await;
    assert!(!hook.failed(), "the hook ran in the empty root: {hook:?}");
    eventually(Duration::from_secs(30), "delivered by a worker in the empty root", || {
        bed.item_of(ids[0]).field("title") == Some("From An Empty Root")
    })
    .await;
    let log = std::fs::read_to_string(bed.dir.path().join("plexsync/worker.log")).unwrap_or_default();
    assert!(!log.contains("ERROR"), "{log}");
}

/// The arm64 build under qemu-user: `--version` names its target, and a
/// hook and the worker deliver a scene. (Without binfmt_misc, a foreign
/// binary cannot start another one, so the worker is started first, under
/// qemu too, and the hook finds it running.)
#[tokio::test]
#[ignore = "needs scripts/package and qemu-user-static"]
async fn the_arm64_binary_delivers_under_qemu() {
    let bed = packaged_bed(json!({"retryScale": 0.02})).await;
    let binary = bed.plugin_dir.join("bin/aarch64-unknown-linux-musl/plexsync");
    let qemu = "qemu-aarch64-static";
    let version = std::process::Command::new(qemu).arg(&binary).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(version.contains("aarch64-unknown-linux-musl"), "{version}");

    let data_dir = bed.data_dir();
    let mut worker = tokio::process::Command::new(qemu)
        .arg(&binary)
        .args(["worker", "--plugin", "--data-dir"])
        .arg(&data_dir)
        .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the emulated worker holds the lock", || {
        plexsync::pipeline::worker::is_running(&data_dir)
    })
    .await;

    let ids = bed.scenes_in_plex();
    bed.stash.update_scene(ids[1], |s| s.title = Some("From Arm64".into()));
    let input = bed.stash.hook_input("PlexSync", "Scene.Update.Post", ids[1], &["title"]).unwrap();
    let exec = [qemu.to_string(), binary.to_str().unwrap().to_string(), "plugin".to_string()];
    let hook = run(&exec, &input).await;
    assert!(!hook.failed(), "the arm64 hook answered: {hook:?}");
    eventually(Duration::from_secs(60), "delivered by the arm64 worker", || {
        bed.item_of(ids[1]).field("title") == Some("From Arm64")
    })
    .await;
    worker.kill().await.unwrap();
}

/// Processes whose command line mentions `needle` (wine's processes carry
/// their Windows command line).
fn processes_with(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

/// The Windows build under Wine: a hook's stdin gives the right stdout and
/// returns while the worker it started lives on (Stash waits for every copy
/// of the plugin's stdout to close), the worker delivers and then exits.
/// (Wine's process start leaves the parent's Unix stderr in the child; Stash
/// does not wait for stderr, and the runner follows Stash.)
/// Wine 8.0 lacks `bcryptprimitives.dll`, which Rust's std imports for
/// randomness; `scripts/verify-package` builds a stand-in for the test.
#[tokio::test]
#[ignore = "needs scripts/package with the Windows target, and wine"]
async fn the_windows_binary_answers_a_hook_and_its_worker_delivers_under_wine() {
    let bed = packaged_bed(json!({"retryScale": 0.02, "workerIdleSecs": 6})).await;
    let folder = &bed.plugin_dir;
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/wine/bcryptprimitives.dll");
    assert!(shim.exists(), "scripts/verify-package builds {}", shim.display());
    std::fs::copy(&shim, folder.join("bcryptprimitives.dll")).unwrap();
    let data_dir = bed.data_dir();
    std::fs::create_dir_all(data_dir.join("bin")).unwrap();
    std::fs::copy(&shim, data_dir.join("bin/bcryptprimitives.dll")).unwrap();

    let ids = bed.scenes_in_plex();
    bed.stash.update_scene(ids[2], |s| s.title = Some("From Windows".into()));
    let input = bed.stash.hook_input("PlexSync", "Scene.Update.Post", ids[2], &["title"]).unwrap();
    let wine = std::env::var("WINE").unwrap_or_else(|_| "/usr/lib/wine/wine64".into());
    let exec = [wine, folder.join("plexsync.exe").to_str().unwrap().to_string(), "plugin".to_string()];
    let hook = run(&exec, &input).await;
    assert!(!hook.failed(), "the hook answered: {hook:?}");
    assert!(hook.output.as_ref().is_some_and(|o| o.to_string().contains("queued")), "{hook:?}");
    let marker = data_dir.file_name().unwrap().to_string_lossy().to_string();
    let dir_name = bed.dir.path().file_name().unwrap().to_string_lossy().to_string();
    assert!(processes_with(&dir_name) > 0 || processes_with(&marker) > 0, "the worker outlives the hook");
    assert!(hook.elapsed < Duration::from_secs(5), "Stash got its pipes back at once: {:?}", hook.elapsed);

    eventually(Duration::from_secs(60), "delivered by the Windows worker", || {
        bed.item_of(ids[2]).field("title") == Some("From Windows")
    })
    .await;
    eventually(Duration::from_secs(60), "the worker exits when idle", || processes_with(&dir_name) == 0).await;
}

/// Without a binary for the machine, Stash shows an error that says so.
#[cfg(unix)]
#[test]
fn the_launcher_names_a_machine_it_has_no_binary_for() {
    let folder = tempfile::tempdir().unwrap();
    let launcher = folder.path().join("plexsync");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin/launch.sh"), &launcher).unwrap();
    let out = std::process::Command::new("sh").arg(&launcher).arg("plugin").output().unwrap();
    assert!(!out.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON for Stash");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("no binary for this machine"), "{error}");
    assert!(error.contains(&folder.path().display().to_string()), "names where it looked: {error}");
}
