//! The daemon face over HTTP, against the emulators: health through a Plex
//! outage, metrics that count deliveries, the token when it listens beyond
//! loopback, and a clean stop on SIGTERM. It shares the plugin's queue: the
//! plugin's hooks (installed from the manifest) fill it, the daemon delivers.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon::{deliveries, sample, Daemon};
use crate::common::{eventually, Bed, PLEX_TOKEN};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_plex_outage_metrics_count_deliveries_and_sigterm_stops_it() {
    let bed = Bed::new(20, json!({"retryScale": 0.02, "healthOutageSecs": 1, "reconcileHours": 0})).await;
    let mut daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    let (status, body) = daemon.health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");

    let ids = bed.scenes_in_plex();
    for (i, id) in ids.iter().take(3).enumerate() {
        assert!(!bed.edit_hook(*id, &format!("Edited {i}")).await.failed());
    }
    eventually(Duration::from_secs(20), "the daemon delivered the plugin's queue", || {
        ids.iter().take(3).enumerate().all(|(i, id)| bed.item_of(*id).field("summary") == Some(&format!("Edited {i}")))
    })
    .await;
    let (status, text) = daemon.get("/metrics", None).await;
    assert_eq!(status, 200);
    assert!(deliveries(&text, "synced") >= 3.0, "{text}");

    bed.plex.go_down();
    assert!(!bed.edit_hook(ids[3], "During the outage").await.failed());
    let started = Instant::now();
    loop {
        let (status, body) = daemon.health().await;
        if status == 503 {
            assert!(body["reasons"].to_string().contains("plex_unavailable"), "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no 503 during the outage: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, page) = daemon.get("/", None).await;
    assert!(page.contains("Not delivering") && page.contains("plex_unavailable"), "{page}");
    bed.plex.come_up();
    eventually(Duration::from_secs(20), "delivered once Plex is back", || {
        bed.item_of(ids[3]).field("summary") == Some("During the outage")
    })
    .await;
    let (status, body) = daemon.health().await;
    assert_eq!(status, 200, "{body}");
    let (_, text) = daemon.get("/metrics", None).await;
    let plex = |status| sample(&text, "plexsync_requests_total", &[("server", "plex"), ("status", status)]);
    assert!(plex("200") >= 4.0 && plex("error") >= 1.0, "Plex requests by status: {text}");
    assert!(sample(&text, "plexsync_requests_total", &[("server", "stash"), ("status", "200")]) >= 1.0);
    assert!(sample(&text, "plexsync_request_duration_seconds", &[("server", "plex")]) >= 4.0, "{text}");

    // terminate() waits (a bounded wait, not a measure: the stop's time is
    // the startup benchmark's business) and fails past 10 s.
    daemon.terminate();
    assert_eq!(bed.queue().stats().unwrap().leased, 0, "no lease left behind");
    let log = daemon.log.lock().unwrap().clone();
    assert!(log.contains("fields written to Plex item"), "the daemon, not a plugin worker, delivered: {log}");
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_a_token_is_required_and_no_secret_is_ever_served() {
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    let refused = Daemon::start(&bed, "0.0.0.0:0", &[]).err().expect("refused without a token");
    assert!(refused.contains("daemonToken"), "{refused}");

    let token = "daemon-secret-token";
    let mut local = Daemon::start(&bed, "0.0.0.0:0", &[("PLEXSYNC_DAEMON_TOKEN", token)]).unwrap();
    let port = local.url.rsplit(':').next().unwrap().to_string();
    local.url = format!("http://127.0.0.1:{port}");
    for path in ["/healthz", "/metrics", "/"] {
        let (status, _) = local.get(path, None).await;
        assert_eq!(status, 401, "{path} without the token");
        let (status, _) = local.get(path, Some("wrong")).await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, body) = local.get(path, Some(token)).await;
        assert_eq!(status, 200, "{path}: {body}");
        for secret in [PLEX_TOKEN, token, bed.session().as_str()] {
            assert!(!body.contains(secret), "{path} shows a secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_stash_answers_503_with_the_reason_and_still_stops_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["--data-dir", data.path().to_str().unwrap(), "daemon", "--listen", "127.0.0.1:0"])
        .env("PLEXSYNC_STASH_URL", format!("http://127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.split("listening on ").nth(1).and_then(|a| a.split_whitespace().next());
    let url = url.unwrap_or_else(|| panic!("it listens before asking Stash: {first}")).to_string();
    let next: Vec<String> = lines.by_ref().take(3).map_while(Result::ok).collect();
    assert!(next.iter().any(|l| l.contains("trying again")), "it says it waits for Stash: {next:?}");
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "stash_unreachable", "{body}");
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("stash_unreachable: ") && reason.contains("Stash"), "{reason}");
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status().as_u16(), 503);
    assert!(page.text().await.unwrap().contains("waiting for Stash"));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let started = Instant::now();
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?} after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_buttons_act_only_from_the_page_itself() {
    let bed = Bed::new(10, json!({"reconcileHours": 0})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    let key = daemon.form_key(None).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let post = |action: &str, form: Vec<(&str, String)>, headers: Vec<(&str, String)>| {
        let mut req = client.post(format!("{}/actions/{action}", daemon.url)).form(&form);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let id = bed.scenes_in_plex()[0].to_string();
    let own = vec![("Origin", daemon.url.clone()), ("Sec-Fetch-Site", "same-origin".to_string())];

    assert_eq!(post("sync", vec![("scene", id.clone())], own.clone()).await, 403, "no key");
    let with_key = |scene: &str| vec![("key", key.clone()), ("scene", scene.to_string())];
    let elsewhere = vec![("Origin", "http://evil.example".to_string())];
    assert_eq!(post("sync", with_key(&id), elsewhere).await, 403, "another site's page");
    let cross = vec![("Sec-Fetch-Site", "cross-site".to_string())];
    assert_eq!(post("sync", with_key(&id), cross).await, 403, "a cross-site request");
    assert_eq!(post("sync", with_key("1 OR 1"), own.clone()).await, 400, "not a scene id");
    assert_eq!(post("sync", with_key(&id), own.clone()).await, 303);
    eventually(Duration::from_secs(20), "the scene the page asked for was delivered", || {
        daemon.log.lock().unwrap().contains(&format!("scene {id}: "))
    })
    .await;
    for action in ["retry-dead", "purge-dead", "reconcile"] {
        assert_eq!(post(action, vec![("key", key.clone())], own.clone()).await, 303, "{action}");
    }
    eventually(Duration::from_secs(20), "the reconcile ran", || {
        daemon.log.lock().unwrap().contains("Reconcile all: done")
    })
    .await;
    assert_eq!(post("nothing", vec![("key", key.clone())], own).await, 404);
}

/// A setting fixed in Stash reaches a daemon that keeps running: health is
/// 503 with the setting named, then 200, and the waiting scene is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_fixed_in_stash_reaches_the_running_daemon() {
    let bed = Bed::new(5, json!({"retryScale": 0.02, "reconcileHours": 0, "plexToken": ""})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    let (status, body) = daemon.health().await;
    assert_eq!(status, 503, "{body}");
    assert!(body["reasons"].to_string().contains("plexToken is empty"), "{body}");
    let id = bed.scenes_in_plex()[0];
    assert!(!bed.edit_hook(id, "After the fix").await.failed());

    bed.configure(json!({"retryScale": 0.02, "reconcileHours": 0}));
    let started = Instant::now();
    while daemon.health().await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(20), "still unhealthy: {}", daemon.health().await.1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(Duration::from_secs(20), "delivered with the new token", || {
        bed.item_of(id).field("summary") == Some("After the fix")
    })
    .await;
    assert!(daemon.log.lock().unwrap().contains("settings changed in Stash"));
}

/// Another program holds the queue file's write lock (a backup tool, a
/// second copy): `/healthz` keeps answering within its second, names the
/// lock once it has lasted half a minute, and the daemon delivers again
/// once the lock is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_another_program_holds_the_queue_and_names_a_long_lock() {
    let bed = Bed::new(10, json!({"reconcileHours": 0, "retryScale": 0.02})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    eventually(Duration::from_secs(20), "the daemon is up", || bed.data_dir().join("queue.sqlite").exists()).await;
    assert_eq!(daemon.health().await.0, 200);
    let queue = bed.data_dir().join("queue.sqlite");
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(queue).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let _ = held.recv_timeout(Duration::from_secs(60));
        conn.execute_batch("ROLLBACK").unwrap();
    });
    // An edit no hook could queue now: the daemon's capture finds it.
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| s.title = Some("Edited while locked".into()));
    // Each probe has a client deadline of 5 s, five times the daemon's own.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let started = Instant::now();
    let body = loop {
        let asked = client.get(format!("{}/healthz", daemon.url)).send().await;
        let answer = asked.unwrap_or_else(|e| panic!("/healthz did not answer under the lock: {e}"));
        let (status, body): (u16, serde_json::Value) = (answer.status().as_u16(), answer.json().await.unwrap());
        if status == 503 {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(45), "the lock is never named: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(started.elapsed() >= Duration::from_secs(25), "named too soon: {body}");
    assert!(body["reasons"].to_string().contains("queue_locked"), "{body}");
    release.send(()).unwrap();
    holder.join().unwrap();
    eventually(Duration::from_secs(40), "the edit delivered once the lock is let go", || {
        bed.item_of(id).field("title") == Some("Edited while locked")
    })
    .await;
    let (status, body) = daemon.health().await;
    assert_eq!(status, 200, "healthy again: {body}");
}

/// Connections that send nothing, or half a request head, are closed within
/// the daemon's 10 s (they were held forever), while a request beside them
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_within_the_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    assert_eq!(daemon.health().await.0, 200);
    let addr = daemon.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut held = Vec::new();
    for i in 0..100 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        }
        held.push(stream);
    }
    assert_eq!(daemon.health().await.0, 200, "served beside them");
    let started = Instant::now();
    for mut stream in held {
        let mut buf = [0u8; 256];
        // Closed: a read ends (0 bytes, or reset), well before 30 s.
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
        assert!(read.is_ok(), "still open after {:?}", started.elapsed());
    }
}
