//! Nothing is lost: outages, faults, killed workers, late files, changes
//! without hooks, values reset behind our back, dead letters.

use std::time::{Duration, Instant};

use crate::common::{eventually, Bed};
use rand::{RngExt, SeedableRng};
use serde_json::json;

/// Fast retries so tests take seconds; the policy shape stays the default.
fn fast() -> serde_json::Value {
    json!({"retryScale": 0.02, "drainPerSec": 1000})
}

/// Waits until `done()` holds, at most `limit`.
/// Gives every listed scene a new title in Stash (no hook).
fn retitle(bed: &Bed, ids: &[u64], prefix: &str) {
    for id in ids {
        bed.stash.update_scene(*id, |s| s.title = Some(format!("{prefix} {id}")));
    }
}

fn all_titled(bed: &Bed, ids: &[u64], prefix: &str) -> bool {
    ids.iter().all(|id| bed.item_of(*id).field("title") == Some(format!("{prefix} {id}").as_str()))
}

#[tokio::test]
async fn a_long_outage_loses_nothing_burns_nothing_and_probes_little() {
    let bed = Bed::new(220, fast()).await;
    let ids: Vec<u64> = bed.scenes_in_plex().into_iter().take(200).collect();
    assert_eq!(ids.len(), 200);
    // 5 s of maintenance at retryScale 0.02 is like 4 minutes at the defaults.
    let outage = Duration::from_secs(5);
    bed.plex.maintenance_for(outage);
    let started = Instant::now();
    retitle(&bed, &ids, "Outage");
    for id in &ids {
        assert!(!bed.update_hook(*id).await.failed());
    }
    tokio::time::sleep(outage.saturating_sub(started.elapsed()) / 2).await;
    let mid = bed.queue().stats().unwrap();
    assert_eq!(mid.pending, 200, "everything waits");
    assert!(bed.queue().rows("pending", 500).unwrap().iter().all(|r| r.attempts == 0), "no attempt burned");

    // Plex comes back by itself; no new Stash event, no manual step.
    eventually(Duration::from_secs(40), "all 200 delivered after the outage", || all_titled(&bed, &ids, "Outage"))
        .await;
    let during: Vec<_> =
        bed.plex.requests().into_iter().filter(|r| r.fault.as_deref() == Some("maintenance")).collect();
    let probes = during.iter().filter(|r| r.path == "/identity").count();
    assert!(during.len() <= 20, "bounded traffic during the outage: {} requests ({probes} probes)", during.len());
    assert!(probes >= 1, "Plex was probed");
    assert_eq!(bed.queue().stats().unwrap().dead, 0);
}

/// Syncs 30 scenes under `fault` (set before the sync, `heal` after
/// `heal_after`) and checks every scene Plex has converges.
async fn converges_under(settings: serde_json::Value, fault: impl Fn(&Bed), heal_after: Option<Duration>) -> Bed {
    let mut s = fast();
    for (k, v) in settings.as_object().unwrap() {
        s[k] = v.clone();
    }
    let bed = Bed::new(30, s).await;
    let ids = bed.scenes_in_plex();
    retitle(&bed, &ids, "Fault");
    fault(&bed);
    let run = bed.task("sync_all").await;
    assert!(!run.failed(), "{run:?}");
    if let Some(after) = heal_after {
        tokio::time::sleep(after).await;
        bed.plex.heal();
    }
    eventually(Duration::from_secs(60), "convergence", || all_titled(&bed, &ids, "Fault")).await;
    bed
}

#[tokio::test]
async fn converges_after_plex_refuses_connections() {
    let bed = converges_under(json!({}), |b| b.plex.go_down(), Some(Duration::from_secs(2))).await;
    assert!(bed.plex.is_up());
}

#[tokio::test]
async fn converges_through_503_maintenance() {
    converges_under(json!({}), |b| b.plex.maintenance_for(Duration::from_secs(2)), None).await;
}

#[tokio::test]
async fn converges_through_hanging_responses() {
    let bed = converges_under(
        json!({"requestTimeoutSecs": 1}),
        |b| b.plex.faults(|f| f.config.hang = true),
        Some(Duration::from_secs(3)),
    )
    .await;
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap();
    assert!(log.contains("timed out"), "the timeout was seen: {log}");
}

#[tokio::test]
async fn converges_through_random_5xx() {
    let bed = converges_under(
        json!({}),
        |b| {
            b.plex.faults(|f| {
                f.config.error_rate = 0.3;
                f.reseed(7);
            })
        },
        None,
    )
    .await;
    assert!(bed.plex.requests().iter().any(|r| r.fault.as_deref() == Some("random_5xx")));
}

#[tokio::test]
async fn converges_through_dropped_connections() {
    let bed = converges_under(
        json!({}),
        |b| {
            b.plex.faults(|f| {
                f.config.drop_rate = 0.2;
                f.reseed(11);
            })
        },
        None,
    )
    .await;
    assert!(bed.plex.requests().iter().any(|r| r.fault.as_deref() == Some("dropped")));
}

#[tokio::test]
async fn converges_through_429_and_honours_retry_after() {
    let started = Instant::now();
    let bed = converges_under(
        json!({}),
        |b| {
            b.plex.faults(|f| {
                f.config.throttle_next = 3;
                f.config.retry_after_secs = 2;
            })
        },
        None,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(2), "waited Retry-After");
    assert_eq!(bed.plex.requests().iter().filter(|r| r.status == 429).count(), 3);
}

#[tokio::test]
async fn killed_workers_lose_nothing_and_leave_no_stuck_lease() {
    let bed = Bed::new(500, json!({"retryScale": 0.02, "leaseSecs": 0.5, "drainPerSec": 1000})).await;
    // A little latency, so a run takes seconds and the kills land mid-work.
    bed.plex.faults(|f| f.config.latency_ms = 3);
    let ids = bed.scenes_in_plex();
    retitle(&bed, &ids, "Killed");
    let run = bed.task("clear_queue").await;
    assert!(!run.failed());
    let queue = bed.queue();
    queue
        .enqueue_many(
            &ids.iter().filter_map(|i| plexsync::ids::SceneId::parse(&i.to_string())).collect::<Vec<_>>(),
            plexsync::store::Reason::Manual,
        )
        .unwrap();
    drop(queue);
    let session = bed.session();
    let worker = |exit_when_idle: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexsync"));
        cmd.arg("worker").arg("--data-dir").arg(bed.data_dir());
        if exit_when_idle {
            cmd.arg("--exit-when-idle");
        }
        cmd.env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
            .env("PLEXSYNC_STASH_SESSION", &session)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let mut kills = 0;
    for _ in 0..12 {
        let mut child = worker(false);
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..250))).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        kills += 1;
    }
    let delivered_before_last =
        ids.iter().filter(|id| bed.item_of(**id).field("title") == Some(format!("Killed {id}").as_str())).count();
    let mut last = worker(true);
    let status =
        tokio::time::timeout(Duration::from_secs(60), last.wait()).await.expect("final worker finishes").unwrap();
    assert!(status.success());
    eventually(Duration::from_secs(30), "every scene converges", || all_titled(&bed, &ids, "Killed")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = bed.queue().stats().unwrap();
    assert_eq!(stats.leased, 0, "no lease stays stuck");
    assert_eq!(stats.pending, 0);
    assert_eq!(kills, 12);
    assert!(
        delivered_before_last < ids.len(),
        "the kills interrupted real work ({delivered_before_last} of {})",
        ids.len()
    );
}

#[tokio::test]
async fn a_scene_whose_file_plex_has_not_scanned_syncs_after_the_scan() {
    let bed = Bed::new(10, fast()).await;
    let stash_path = format!("{}/New Studio/late file.mp4", bed.lib.stash_prefix);
    let plex_path = format!("{}/New Studio/late file.mp4", bed.lib.plex_prefix);
    bed.plex.with_state(|s| s.add_disk_file(&plex_path, 1234, 60_000, None));
    let id = bed.stash.scan_new(&[vec![(stash_path, 1234, 60.0)]]).await[0];
    assert!(bed.stash.edit_scene(id, &["title"], |s| s.title = Some("Late Arrival".into())).await);
    eventually(Duration::from_secs(20), "synced once Plex scanned it", || {
        bed.plex.item_by_file(&plex_path).is_some_and(|i| i.field("title") == Some("Late Arrival"))
    })
    .await;
    let scan = bed
        .plex
        .requests()
        .into_iter()
        .find(|r| r.path == "/library/sections/1/refresh")
        .expect("partial scan requested");
    assert_eq!(scan.param("path"), Some(format!("{}/New Studio", bed.lib.plex_prefix).as_str()));
}

#[tokio::test]
async fn without_partial_scans_it_waits_for_plex_to_find_the_file() {
    let bed = Bed::new(10, json!({"retryScale": 0.02, "partialScan": false})).await;
    let plex_path = format!("{}/Auto/found later.mp4", bed.lib.plex_prefix);
    bed.plex.with_state(|s| s.add_disk_file(&plex_path, 99, 1_000, Some(Instant::now() + Duration::from_secs(2))));
    let id = bed.stash.scan_new(&[vec![(format!("{}/Auto/found later.mp4", bed.lib.stash_prefix), 99, 1.0)]]).await[0];
    assert!(bed.stash.edit_scene(id, &["title"], |s| s.title = Some("Found Later".into())).await);
    eventually(Duration::from_secs(30), "synced after Plex's own scan", || {
        bed.plex.item_by_file(&plex_path).is_some_and(|i| i.field("title") == Some("Found Later"))
    })
    .await;
    assert!(bed.plex.requests().iter().all(|r| !r.path.ends_with("/refresh")));
}

#[tokio::test]
async fn a_change_without_a_hook_reaches_plex_through_the_watermark() {
    let bed = Bed::new(20, fast()).await;
    let ids = bed.scenes_in_plex();
    let (first, silent, other) = (ids[0], ids[1], ids[2]);
    assert!(!bed.update_hook(first).await.failed());
    bed.settle().await;
    // Edited in Stash, but no hook fired (plugin disabled, hook lost …).
    bed.stash.update_scene(silent, |s| s.title = Some("No Hook Fired".into()));
    // Any later invocation of the plugin picks it up.
    assert!(!bed.update_hook(other).await.failed());
    eventually(Duration::from_secs(20), "silent change delivered", || {
        bed.item_of(silent).field("title") == Some("No Hook Fired")
    })
    .await;
}

#[tokio::test]
async fn reconcile_repairs_values_reset_behind_our_back() {
    let bed = Bed::new(20, fast()).await;
    let run = bed.task("sync_all").await;
    assert!(!run.failed());
    let ids = bed.scenes_in_plex();
    eventually(Duration::from_secs(20), "first sync", || {
        ids.iter().all(|id| bed.item_of(*id).field("title") == bed.stash.scene(*id).unwrap().title.as_deref())
    })
    .await;
    let victim = ids[4];
    let rk = bed.item_of(victim).rating_key;
    // An agent or a person resets Plex's values; our hashes say nothing changed.
    bed.plex.with_state(|s| {
        let mut item = s.items.get_mut(&rk).unwrap();
        item.fields.insert("title".into(), "Reset by an agent".into());
        item.tags.clear();
    });
    assert!(!bed.update_hook(victim).await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(victim).field("title"), Some("Reset by an agent"), "a plain hook trusts the hashes");

    let run = bed.task("reconcile").await;
    assert!(!run.failed(), "{run:?}");
    eventually(Duration::from_secs(20), "repaired", || {
        bed.item_of(victim).field("title") == bed.stash.scene(victim).unwrap().title.as_deref()
    })
    .await;
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap();
    assert!(log.contains("Reconcile all: done") && log.contains("\"differ\":1"), "{log}");
}

#[tokio::test]
async fn dead_letters_are_listed_retried_and_purged() {
    let bed = Bed::new(10, json!({"retryScale": 0.02, "notInPlexHours": 0, "partialScan": false})).await;
    let id = bed.stash.scan_new(&[vec![(format!("{}/nowhere/x.mp4", bed.lib.stash_prefix), 5, 1.0)]]).await[0];
    eventually(Duration::from_secs(10), "dead letter", || bed.queue().stats().unwrap().dead == 1).await;
    let status = bed.task("queue_status").await.output.unwrap();
    assert_eq!(status["dead"][0]["scene_id"], id.to_string());
    assert_eq!(status["dead"][0]["error_class"], "not_in_plex");
    assert!(status["dead"][0]["last_error"].as_str().unwrap().contains("not in Plex yet"));
    let retried = bed.task("retry_dead").await.output.unwrap();
    assert_eq!(retried["retried"], 1);
    eventually(Duration::from_secs(10), "dead again", || bed.queue().stats().unwrap().dead == 1).await;
    let purged = bed.task("purge_dead").await.output.unwrap();
    assert_eq!(purged["purged"], 1);
    assert_eq!(bed.queue().stats().unwrap().pending + bed.queue().stats().unwrap().dead, 0);
}

#[tokio::test]
async fn a_revoked_token_stops_delivery_keeps_the_queue_and_says_what_to_fix() {
    let bed = Bed::new(10, fast()).await;
    bed.plex.faults(|f| f.config.token_revoked = true);
    let id = bed.scenes_in_plex()[0];
    assert!(!bed.update_hook(id).await.failed());
    eventually(Duration::from_secs(10), "auth failure recorded", || {
        bed.queue().stats().unwrap().by_class.contains_key("auth")
    })
    .await;
    assert_eq!(bed.queue().stats().unwrap().pending, 1);
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap();
    assert!(log.contains("set plexToken to a valid token"), "{log}");
    bed.plex.heal();
    assert!(!bed.update_hook(id).await.failed());
    eventually(Duration::from_secs(20), "delivered once the token works", || bed.queue().stats().unwrap().pending == 0)
        .await;
}

/// The Stash UI script's questions go through `runPluginOperation` as the
/// person's browser sends it, and are answered from the queue alone: with
/// Plex down, no Plex request is made and the answer still comes.
#[tokio::test]
async fn the_ui_operations_answer_from_the_queue_without_asking_plex() {
    let bed = Bed::new(5, json!({"retryScale": 0.02})).await;
    let ids = bed.scenes_in_plex();
    assert!(!bed.edit_hook(ids[0], "Delivered").await.failed());
    eventually(Duration::from_secs(20), "delivered", || bed.item_of(ids[0]).field("summary") == Some("Delivered"))
        .await;
    bed.plex.go_down();
    bed.plex.clear_requests();
    let op = "mutation($args: Map) { runPluginOperation(plugin_id: \"PlexSync\", args: $args) }";
    let args = json!({"mode": "scene_status", "scene_ids": [ids[0].to_string(), ids[1]]});
    let out = bed.graphql(op, json!({"args": args})).await["data"]["runPluginOperation"].clone();
    assert_eq!(out["scenes"][0]["state"], "synced", "{out}");
    assert_eq!(out["scenes"][0]["items"][0]["rating_key"], bed.item_of(ids[0]).rating_key.to_string());
    assert_eq!(out["scenes"][1]["state"], "unknown", "{out}");

    let queued = bed.graphql(op, json!({"args": {"mode": "sync_scene", "scene_id": ids[1].to_string()}})).await;
    assert_eq!(queued["data"]["runPluginOperation"]["scene"]["state"], "waiting", "{queued}");
    assert!(bed.plex.requests().is_empty(), "no Plex request from the UI's operations");

    for (args, field) in [
        (json!({"mode": "scene_status", "scene_ids": ["1 OR 1=1"]}), "scene_ids"),
        (json!({"mode": "sync_scene"}), "scene_id"),
    ] {
        let refused = bed.graphql_answer(op, json!({"args": args})).await;
        let message = refused["errors"][0]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.starts_with(field), "{refused}");
    }
    bed.plex.come_up();
    eventually(Duration::from_secs(20), "Sync now delivered", || !bed.queue().is_pending(&ids[1].to_string()).unwrap())
        .await;
}
