//! The CLI face, configured by a TOML file and environment variables.

use std::process::Command;

use crate::common::{Bed, PLEX_TOKEN};
use serde_json::{json, Value};

/// The CLI's config file for the bed: Stash's URL and the Plex token.
fn config_file(bed: &Bed) -> std::path::PathBuf {
    let config = bed.dir.path().join("plexsync.toml");
    std::fs::write(&config, format!("stashUrl = \"{}\"\nplexToken = \"{PLEX_TOKEN}\"\n", bed.stash.url())).unwrap();
    config
}

fn plexsync(bed: &Bed, args: &[&str]) -> (bool, String, String) {
    let config = config_file(bed);
    let out = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["--config", config.to_str().unwrap(), "--data-dir", bed.data_dir().to_str().unwrap()])
        .args(args)
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .env("PLEXSYNC_PLEX_URL", bed.plex.url().as_str())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

// Multi-threaded: the blocking CLI run must not stall the emulators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_all_and_status_from_a_terminal() {
    // Stash holds only the path mapping; URL and token come from file and environment.
    let bed = Bed::new(30, json!({})).await;
    bed.stash.set_plugin_settings(
        "PlexSync",
        json!({"pathMappings": "/data/videos => /media/library", "skipUnorganized": false}),
    );
    let (ok, stdout, stderr) = plexsync(&bed, &["sync", "--all"]);
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    let in_plex = bed.scenes_in_plex().len();
    assert_eq!(result["stats"]["synced"], in_plex);
    // Not a terminal: plain progress lines, no bar drawing.
    assert!(stderr.contains("reading Plex library Movies"), "library read progress: {stderr}");
    assert!(stderr.contains("scenes queued 30/30") && stderr.contains("scenes delivered"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no terminal codes in a pipe: {stderr}");
    for id in bed.scenes_in_plex() {
        assert_eq!(bed.item_of(id).field("title"), bed.stash.scene(id).unwrap().title.as_deref());
    }

    let (ok, stdout, _) = plexsync(&bed, &["status", "--json"]);
    assert!(ok);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["queue"]["synced"], in_plex);
    assert_eq!(status["queue"]["pending"], 30 - in_plex);
    assert!(!stdout.contains(PLEX_TOKEN) && !stdout.contains("session="), "no secret in status");

    let (ok, stdout, stderr) = plexsync(&bed, &["health"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Movies"));
}

#[tokio::test]
async fn missing_stash_url_says_how_to_set_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["status"])
        .env_remove("PLEXSYNC_STASH_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--stash-url") && stderr.contains("PLEXSYNC_STASH_URL"), "{stderr}");
}

// Multi-threaded: the blocking CLI run must not stall the emulators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_at_a_terminal_shows_the_plugins_queue_without_a_data_dir() {
    let bed = Bed::new(20, json!({"partialScan": false})).await;
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let plugin_queue = bed.queue().stats().unwrap();
    assert!(plugin_queue.synced > 0);
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["status", "--json"])
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .env_remove("PLEXSYNC_DATA_DIR")
        .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["queue"]["synced"], plugin_queue.synced, "{status}");
    assert_eq!(status["queue"]["pending"], plugin_queue.pending);
    assert!(stderr.contains(&bed.data_dir().display().to_string()), "says which folder: {stderr}");
}

/// At a terminal (a pty from util-linux's `script`), long operations draw
/// progress bars, and log lines still arrive whole.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_progress_bars() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to make a terminal");
        return;
    }
    let bed = Bed::new(30, json!({})).await;
    let config = config_file(&bed);
    let command = format!(
        "{} --config {} --data-dir {} sync --all",
        env!("CARGO_BIN_EXE_plexsync"),
        config.display(),
        bed.data_dir().display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .env("PLEXSYNC_PLEX_URL", bed.plex.url().as_str())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("scenes delivered [") && screen.contains("=]"), "a bar: {screen}");
    assert!(screen.contains("scenes queued [========================================] 30/30"), "{screen}");
    assert!(!screen.contains("scenes queued 30/30"), "bars, not lines: {screen}");
    assert!(screen.contains("fields written to Plex item"), "log lines still shown: {screen}");
}

/// Reconcile reads Plex's items a hundred at a time
/// (`GET /library/metadata/k1,k2,…`), not one request per item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reads_items_in_batches() {
    let bed = Bed::new(150, json!({})).await;
    let (ok, _, stderr) = plexsync(&bed, &["sync", "--all"]);
    assert!(ok, "{stderr}");
    let in_plex = bed.scenes_in_plex();
    let changed = in_plex[7];
    bed.stash.update_scene(changed, |s| s.title = Some("Changed Without A Hook".into()));
    let gone = bed.item_of(in_plex[9]).rating_key;
    bed.plex.with_state(|s| drop(s.items.remove(&gone)));
    bed.plex.clear_requests();
    let (ok, stdout, stderr) = plexsync(&bed, &["reconcile"]);
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["reconcile"]["differ"], 1, "{result}");
    assert_eq!(result["reconcile"]["checked"], 150);
    assert_eq!(result["reconcile"]["missing"], 150 - in_plex.len() + 1, "an item deleted from Plex: {result}");
    let reads: Vec<String> = bed
        .plex
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/library/metadata/"))
        .map(|r| r.path)
        .collect();
    let batched = reads.iter().filter(|p| p.contains(',')).count();
    assert!(batched >= 1 && batched <= in_plex.len().div_ceil(100) + 1, "{reads:?}");
    assert!(reads.len() <= batched + 3, "{} item reads for {} items: {reads:?}", reads.len(), in_plex.len());
    assert_eq!(bed.item_of(changed).field("title"), Some("Changed Without A Hook"), "and delivered");
}

/// `plexsync migrate` reads the agent's preferences file Plex kept and
/// Stash2Plex's settings, shows them beside PlexSync's and writes only with
/// `--apply`; a token is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_shows_then_applies_the_old_settings_and_never_prints_a_token() {
    let bed = Bed::new(10, json!({})).await;
    bed.stash.set_plugin_settings("Stash2Plex", json!({"plex_token": "s2p-token-123456", "sync_background": false}));
    let prefs = bed.dir.path().join("com.plexapp.agents.stashplexagent.xml");
    std::fs::write(
        &prefs,
        "<?xml version='1.0' encoding='utf-8'?>\n<PluginPreferences>\n  <UseFormattedTitle>true</UseFormattedTitle>\n  \
         <PrefixSiteCollectionTags>Site - </PrefixSiteCollectionTags>\n  <APIKey/>\n</PluginPreferences>\n",
    )
    .unwrap();
    let args = ["migrate", "--agent-prefs", prefs.to_str().unwrap()];
    let (ok, stdout, stderr) = plexsync(&bed, &args);
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["applied"], false);
    assert!(!stdout.contains("s2p-token-123456") && !stderr.contains("s2p-token-123456"), "{stdout}{stderr}");
    let settings = shown["settings"].as_array().unwrap();
    assert!(settings.iter().any(|s| s["setting"] == "UseFormattedTitle" && s["value"] == true), "{shown}");
    assert!(bed.stash.with_state(|s| s.plugins["PlexSync"].get("UseFormattedTitle").is_none()), "shown, not written");

    let mappings = bed.stash.with_state(|s| s.plugins["PlexSync"]["pathMappings"].clone());
    assert!(mappings.is_string());
    let (ok, stdout, stderr) = plexsync(&bed, &[&args[..], &["--apply"]].concat());
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("s2p-token-123456"));
    let stored = bed.stash.with_state(|s| s.plugins["PlexSync"].clone());
    assert_eq!(stored["UseFormattedTitle"], true);
    assert_eq!(stored["PrefixSiteCollectionTags"], "Site - ", "a prefix keeps its space");
    assert_eq!(stored["plexToken"], "s2p-token-123456", "Stash2Plex's token carried over");
    assert!(!stored["syncFields"].as_str().unwrap().contains("background"));
    assert_eq!(stored["pathMappings"], mappings, "the rest kept");
}
