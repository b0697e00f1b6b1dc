//! The packaged plugin, installed from its published plugin source the way
//! Stash's package manager does it, started through its manifest and
//! launcher, and syncing a scene end to end; then updated from the next
//! published version. Needs the package built and published, so it is
//! ignored by default; `scripts/verify-package` makes both and runs it:
//!
//!     scripts/verify-package    (target/site-1: this version; target/site-2: the next)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[cfg(unix)]
use crate::common::daemon::Daemon;
use crate::common::{eventually, Bed};
use emulators::package::{installed, upgradable, HttpSource, Site};
use emulators::StashAuth;
use serde_json::json;

/// A published site `scripts/verify-package` made: `var`, or `default`
/// under the workspace.
fn site(var: &str, default: &str) -> PathBuf {
    let dir = std::env::var(var).unwrap_or_else(|_| default.into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir);
    assert!(dir.join("index.yml").exists(), "run scripts/verify-package first: {} has no index.yml", dir.display());
    dir
}

/// The index of the published site of this version.
fn index() -> PathBuf {
    site("PUBLISHED_SITE", "target/site-1").join("index.yml")
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
/// hook and the worker deliver a scene.
#[tokio::test]
#[ignore = "needs scripts/package and qemu-user-static"]
async fn the_arm64_binary_delivers_under_qemu() {
    delivers_under_qemu("aarch64-unknown-linux-musl", &["qemu-aarch64-static"]).await;
}

/// The 32-bit ARM builds (standard library built from source): armv7 for
/// most 32-bit boards and NAS boxes, armv6 for the Raspberry Pi Zero and 1,
/// run on an ARM1176 CPU so no ARMv7 instruction can slip in.
#[tokio::test]
#[ignore = "needs scripts/package and qemu-user-static"]
async fn the_armv7_binary_delivers_under_qemu() {
    delivers_under_qemu("armv7-unknown-linux-musleabihf", &["qemu-arm-static", "-cpu", "cortex-a7"]).await;
}

#[tokio::test]
#[ignore = "needs scripts/package and qemu-user-static"]
async fn the_armv6_binary_delivers_under_qemu() {
    delivers_under_qemu("arm-unknown-linux-musleabihf", &["qemu-arm-static", "-cpu", "arm1176"]).await;
}

/// `--version` under `qemu` names `target`; a hook and the worker deliver.
/// (Without binfmt_misc, a foreign binary cannot start another one, so the
/// worker is started first, under qemu too, and the hook finds it running.)
async fn delivers_under_qemu(target: &str, qemu: &[&str]) {
    let bed = packaged_bed(json!({"retryScale": 0.02})).await;
    let binary = bed.plugin_dir.join(format!("bin/{target}/plexsync"));
    let command = || {
        let mut c = tokio::process::Command::new(qemu[0]);
        c.args(&qemu[1..]).arg(&binary);
        c
    };
    let version = command().arg("--version").output().await.unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(version.contains(target), "{version}");
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    let data_dir = bed.data_dir();
    let mut worker = command()
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
    let title = format!("From {target}");
    bed.stash.update_scene(ids[1], |s| s.title = Some(title.clone()));
    let input = bed.stash.hook_input("PlexSync", "Scene.Update.Post", ids[1], &["title"]).unwrap();
    let mut exec: Vec<String> = qemu.iter().map(|s| s.to_string()).collect();
    exec.extend([binary.to_str().unwrap().to_string(), "plugin".to_string()]);
    let hook = run(&exec, &input).await;
    assert!(!hook.failed(), "the {target} hook answered: {hook:?}");
    eventually(Duration::from_secs(60), "delivered by the emulated worker", || {
        bed.item_of(ids[1]).field("title") == Some(title.as_str())
    })
    .await;
    worker.kill().await.unwrap();
}

/// Processes whose command line mentions `needle` (wine's processes carry
/// their Windows command line).
fn processes_with(needle: &str) -> usize {
    pids_with(needle).len()
}

/// Ids of the processes whose command line (arguments joined by spaces)
/// contains `needle`.
fn pids_with(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| {
            let line = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&line).replace('\0', " ").contains(needle)
        })
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
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

/// The update path: the next version, published to the same site from a
/// later commit, is offered by Stash's "Check for updates" and installed
/// over the first; a scene the first version queued while Plex was down is
/// delivered by the second, and the first version's zip stays reachable
/// (a Stash that read the index before the deploy still gets its zip).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs scripts/verify-package (two published versions)"]
async fn the_next_published_version_is_offered_installed_and_delivers_what_the_first_queued() {
    let (first, second) = (site("PUBLISHED_SITE", "target/site-1"), site("PUBLISHED_NEXT_SITE", "target/site-2"));
    let site = Site::start(first).await.unwrap();
    let source = Arc::new(HttpSource::new(site.url().join("index.yml").unwrap()));
    let (handle, from) = (tokio::runtime::Handle::current(), Arc::clone(&source));
    let install = move |config: &Path| {
        let plugins = config.join("plugins");
        tokio::task::block_in_place(|| handle.block_on(from.install("PlexSync", &plugins))).unwrap()
    };
    let settings = json!({"retryScale": 0.02, "workerIdleSecs": 2});
    let bed = Bed::installed_by(8, settings, StashAuth::login(None), Default::default(), install).await;
    let plugins = bed.dir.path().join("plugins");
    let old = installed(&plugins, "PlexSync").unwrap();
    assert_eq!(binary_version(&bed.plugin_dir), old.version, "the binary says the index's version");
    assert!(!upgradable(&old, &source.list().await.unwrap()[0]), "no update offered before one is published");

    // The first version queues an edit while Plex is down for its backup.
    bed.plex.go_down();
    let ids = bed.scenes_in_plex();
    assert!(bed.stash.edit_scene(ids[0], &["title"], |s| s.title = Some("Queued By The First".into())).await);
    let run = bed.stash.hook_runs().last().expect("the hook ran").run.clone();
    assert!(!run.failed(), "{run:?}");
    assert!(bed.queue().stats().unwrap().pending >= 1, "waiting in the queue");
    // The update comes with a restart: the first version's processes end.
    end_processes_under(&bed.plugin_dir);

    site.deploy(second);
    let offered = source.list().await.unwrap().remove(0);
    assert!(upgradable(&old, &offered), "Check for updates offers {} over {}", offered.date, old.date);
    assert_ne!(offered.version, old.version);
    let old_zip = site.url().join(&format!("PlexSync-{}.zip", old.version)).unwrap();
    assert!(reqwest::get(old_zip).await.unwrap().status().is_success(), "the previous zip is still served");
    let folder = source.install("PlexSync", &plugins).await.unwrap();
    assert_eq!(folder, bed.plugin_dir);
    bed.stash.install_plugins(bed.dir.path(), &folder).unwrap();
    let new = installed(&plugins, "PlexSync").unwrap();
    assert_eq!(new.version, offered.version);
    assert_eq!(binary_version(&folder), new.version, "the update replaced the binary");
    assert!(!upgradable(&new, &source.list().await.unwrap()[0]), "nothing more to offer");

    bed.plex.come_up();
    assert!(bed.stash.edit_scene(ids[1], &["title"], |s| s.title = Some("Sent By The Second".into())).await);
    eventually(Duration::from_secs(60), "both edits delivered by the second version", || {
        bed.item_of(ids[0]).field("title") == Some("Queued By The First")
            && bed.item_of(ids[1]).field("title") == Some("Sent By The Second")
    })
    .await;
    let health = bed.task("health_check").await;
    let reported = health.output.as_ref().map(|o| o.to_string()).unwrap_or_default();
    assert!(reported.contains(&new.version), "the Health check reports {}: {health:?}", new.version);
}

/// The version the installed x86_64 binary prints.
fn binary_version(folder: &Path) -> String {
    let binary = folder.join("bin/x86_64-unknown-linux-musl/plexsync");
    let out = std::process::Command::new(&binary).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// Ends every process started from `folder` and waits until none is left.
fn end_processes_under(folder: &Path) {
    end_processes_with(&folder.to_string_lossy());
}

/// Ends every process whose command line (arguments joined by spaces)
/// contains `needle`, and waits until none is left.
fn end_processes_with(needle: &str) {
    let started = std::time::Instant::now();
    loop {
        let pids = pids_with(needle);
        if pids.is_empty() {
            return;
        }
        let _ = std::process::Command::new("kill").arg("-KILL").args(&pids).status();
        assert!(started.elapsed() < Duration::from_secs(10), "processes with {needle} outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container image `scripts/image` built from the package: a
/// `FROM scratch` image whose entrypoint is the daemon, whose version is
/// the package's; `/plexsync --version` and the daemon run in it (buildah's
/// chroot isolation, the host's network) and deliver a queued edit.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/verify-package (the image) and buildah"]
async fn the_image_runs_the_daemon_against_the_emulators() {
    let image =
        format!("{}-amd64", std::env::var("IMAGE_UNDER_TEST").unwrap_or_else(|_| "localhost/plexsync:ci".into()));
    let inspect = buildah(&["inspect", "--type", "image", &image]);
    let config: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let config = &config["OCIv1"]["config"];
    assert_eq!(config["Entrypoint"], json!(["/plexsync", "daemon", "--listen", "0.0.0.0:9977"]));
    assert_eq!(config["Labels"]["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert!(config["Env"].to_string().contains("PLEXSYNC_DATA_DIR=/data"), "{config}");

    let container = Container(buildah(&["from", "--quiet", &image]).trim().to_string());
    let version = buildah(&["run", &container.0, "--", "/plexsync", "--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")) && version.contains("x86_64-unknown-linux-musl"), "{version}");

    let bed = Bed::new(6, json!({"retryScale": 0.02})).await;
    std::fs::create_dir_all(bed.data_dir()).unwrap();
    let mut command = std::process::Command::new("buildah");
    command
        .args(["run", "--volume", &format!("{}:/data", bed.data_dir().display())])
        .args(["--env", &format!("PLEXSYNC_STASH_URL={}", bed.stash.url())])
        .args(["--env", &format!("PLEXSYNC_STASH_SESSION={}", bed.session())])
        .args([&container.0, "--", "/plexsync", "daemon", "--listen", "127.0.0.1:0"]);
    let daemon = Daemon::spawn(command).expect("the daemon started in the image");
    let (status, _) = daemon.get("/healthz", None).await;
    assert_eq!(status, 200);

    let ids = bed.scenes_in_plex();
    assert!(!bed.edit_hook(ids[0], "Delivered From The Image").await.failed());
    eventually(Duration::from_secs(30), "the daemon in the image delivered", || {
        bed.item_of(ids[0]).field("summary") == Some("Delivered From The Image")
    })
    .await;
    let log = daemon.log.lock().unwrap().clone();
    assert!(log.contains("fields written to Plex item"), "the image's daemon, not a plugin worker, delivered: {log}");
    drop(daemon);
    // Killing buildah can leave the process it ran behind.
    end_processes_with("/plexsync daemon --listen 127.0.0.1:0");
}

/// A working container, removed when the test ends.
#[cfg(unix)]
struct Container(String);

#[cfg(unix)]
impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("buildah").args(["rm", &self.0]).output();
    }
}

/// buildah's stdout; panics with its stderr when it fails.
#[cfg(unix)]
fn buildah(args: &[&str]) -> String {
    let out = std::process::Command::new("buildah").args(args).output().expect("buildah is installed");
    assert!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}
