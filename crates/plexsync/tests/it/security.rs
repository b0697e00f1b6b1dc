//! Bad input to the plugin, secrets that never leak, images only from Stash.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Bed, PLEX_TOKEN};
use plexsync::clients::stash::Image;
use serde_json::json;

/// Runs the plugin with `stdin` as Stash would, returning (exit code, stdout, stderr).
fn plugin_raw(stdin: &str, data_dir: &std::path::Path) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .arg("plugin")
        .env("PLEXSYNC_DATA_DIR", data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_stdin_gets_a_clear_error_and_leaves_the_queue_alone() {
    let dir = tempfile::tempdir().unwrap();
    let conn = json!({"Scheme": "http", "Host": "127.0.0.1", "Port": 1, "Dir": dir.path()});
    let cases = [
        ("".to_string(), "no input"),
        ("{not json".to_string(), "not JSON"),
        ("[1, 2]".to_string(), "server_connection"),
        (json!({"args": {"mode": "sync_all"}}).to_string(), "server_connection"),
        (json!({"server_connection": {"Port": "nine"}}).to_string(), "unexpected shape"),
        (
            json!({"server_connection": conn, "args": {"hookContext": {"id": 5, "type": "Gallery.Update.Post"}}})
                .to_string(),
            "does not handle the hook",
        ),
        (
            json!({"server_connection": conn, "args": {"hookContext": {"id": "abc", "type": "Scene.Update.Post"}}})
                .to_string(),
            "without a scene id",
        ),
        (
            json!({"server_connection": conn, "args": {"mode": "make_coffee"}}).to_string(),
            "unknown task mode 'make_coffee'",
        ),
        (json!({"server_connection": conn, "args": {}}).to_string(), "the task has no mode"),
    ];
    for (stdin, expected) in cases {
        let (code, stdout, stderr) = plugin_raw(&stdin, dir.path());
        assert_eq!(code, 1, "{stdin}: exit 1, not a panic (101): {stderr}");
        let out: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("JSON output for {stdin}: {stdout}"));
        assert!(out["error"].as_str().unwrap().contains(expected), "{stdin}: {out}");
        assert!(stderr.starts_with("\u{1}e\u{2}"), "logged at error level: {stderr:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!dir.path().join("queue.sqlite").exists(), "no queue was created or touched");
}

#[tokio::test]
async fn settings_of_the_wrong_type_are_named_and_defaults_used() {
    let bed =
        Bed::new(10, json!({"skipUnorganized": "sometimes", "requestTimeoutSecs": "soon", "syncFields": 42})).await;
    let run = bed.task("queue_status").await;
    assert!(!run.failed(), "{run:?}");
    let warnings = run.messages_at(emulators::plugin::LogLevel::Warning).join("\n");
    for setting in ["'skipUnorganized'", "'requestTimeoutSecs'", "'syncFields'"] {
        assert!(warnings.contains(setting), "{setting} in {warnings}");
    }
}

#[tokio::test]
async fn a_hook_for_a_deleted_scene_completes_as_gone() {
    let bed = Bed::new(10, json!({})).await;
    let id = bed.scenes_in_plex()[0];
    bed.stash.with_state(|s| s.scenes.remove(&id));
    assert!(!bed.hook(id, "Scene.Update.Post", &["id", "title"]).await.failed());
    bed.settle().await;
    assert_eq!(bed.queue().stats().unwrap().pending, 0);
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap();
    assert!(log.contains("deleted in Stash"), "{log}");
}

#[tokio::test]
async fn images_come_only_from_stash_and_must_be_images() {
    let bed = Bed::new(5, json!({})).await;
    let client = bed.stash_client();
    let id = bed.stash.with_state(|s| *s.scenes.keys().next().unwrap());
    let url = format!("http://elsewhere.invalid/scene/{id}/screenshot");
    let Image::Fetched { bytes, .. } = client.image(&url, 1_000_000, None).await.unwrap() else { panic!("an image") };
    assert_eq!(&bytes[..4], b"\x89PNG", "fetched from Stash, whatever host the URL named");
    let not_image = client.image("http://elsewhere.invalid/graphql", 1_000_000, None).await.unwrap_err();
    assert!(not_image.message.contains("not an image"), "{not_image}");
    let too_big = client.image(&format!("/scene/{id}/screenshot"), 10, None).await;
    assert!(too_big.is_err(), "relative or oversized: refused");
    let too_big = client.image(&format!("{}scene/{id}/screenshot", bed.stash.url()), 10, None).await.unwrap_err();
    assert!(too_big.message.contains("larger than 10 bytes"), "{too_big}");
}

/// Every secret, and every place output goes: Stash's log and output JSON
/// for hooks and tasks (passing and failing), the worker's log, the CLI's
/// `status --json`, and the queue database's errors and dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_any_output() {
    const API_KEY: &str = "stash-api-key-SECRET-7";
    let bed =
        Bed::new(20, json!({"retryScale": 0.02, "notInPlexHours": 0, "requestTimeoutSecs": 1, "actorImages": true}))
            .await;
    let mut outputs: Vec<String> = Vec::new();
    let mut record = |run: &emulators::plugin::PluginRun| outputs.push(format!("{}\n{}", run.stdout, run.stderr));
    let ids = bed.scenes_in_plex();

    // Passing paths.
    record(&bed.update_hook(ids[0]).await);
    record(&bed.task("sync_all").await);
    bed.settle().await;
    record(&bed.task("queue_status").await);
    record(&bed.task("health_check").await);
    record(&bed.task("explain").await);
    // Failing paths: revoked token (401), outage (refused), hang (timeout),
    // 5xx, a scene not in Plex (dead letter), a Plex URL carrying the token.
    bed.plex.faults(|f| f.config.token_revoked = true);
    record(&bed.edit_hook(ids[1], "edited while Plex fails").await);
    // The worker stops on the auth error and keeps the row; do not wait for
    // the queue to empty, wait for the failure to be recorded.
    let started = std::time::Instant::now();
    while !bed.queue().stats().unwrap().by_class.contains_key("auth") && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    record(&bed.task("health_check").await);
    bed.plex.heal();
    bed.plex.faults(|f| f.config.hang = true);
    record(&bed.edit_hook(ids[2], "edited while Plex fails").await);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    bed.plex.heal();
    bed.plex.faults(|f| f.config.error_rate = 1.0);
    record(&bed.edit_hook(ids[3], "edited while Plex fails").await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    bed.plex.heal();
    bed.plex.down_for(Duration::from_millis(800));
    record(&bed.edit_hook(ids[4], "edited while Plex fails").await);
    let missing = bed.stash.scan_new(&[vec![(format!("{}/gone/x.mp4", bed.lib.stash_prefix), 1, 1.0)]]).await[0];
    record(&bed.stash.hook_runs().into_iter().rfind(|r| r.id == missing).unwrap().run);
    let started = std::time::Instant::now();
    while bed.queue().stats().unwrap().dead == 0 && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bed.configure(json!({"plexUrl": format!("{}?X-Plex-Token={PLEX_TOKEN}", bed.plex.url().as_str().trim_end_matches('/')), "plexToken": "", "retryScale": 0.02}));
    record(&bed.edit_hook(ids[5], "edited while Plex fails").await);
    record(&bed.task("health_check").await);
    bed.configure(json!({"plexUrl": "not a url ?X-Plex-Token=".to_string() + PLEX_TOKEN}));
    record(&bed.task("queue_status").await);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // The CLI, with an API key from the environment.
    let session = bed.session();
    let cli = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["--data-dir", bed.data_dir().to_str().unwrap(), "status", "--json"])
        .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", &session)
        .env("PLEXSYNC_STASH_API_KEY", API_KEY)
        .output()
        .unwrap();
    outputs.push(String::from_utf8_lossy(&cli.stdout).into());
    outputs.push(String::from_utf8_lossy(&cli.stderr).into());
    outputs.push(std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap());
    let queue = bed.queue();
    for state in ["pending", "dead"] {
        outputs.push(format!("{:?}", queue.rows(state, 1_000).unwrap()));
    }
    let all = outputs.join("\n");
    assert!(all.contains("401") || all.contains("plexToken"), "the failures were exercised: {all}");
    assert!(all.contains("timed out"), "the timeout was exercised");
    assert!(queue.stats().unwrap().dead >= 1, "a dead letter exists");
    let hook_session = queue.get_kv(plexsync::store::kv::STASH_SESSION).unwrap().expect("hooks handed their session");
    for secret in [PLEX_TOKEN, session.as_str(), hook_session.as_str(), API_KEY] {
        assert!(!all.contains(secret), "secret {secret} leaked:\n{all}");
    }
}
