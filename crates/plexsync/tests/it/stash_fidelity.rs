//! PlexSync against a Stash that behaves like Stash's code: installed from
//! its manifest, timestamps as text in the server's zone, sessions that
//! expire.

use std::time::{Duration, Instant};

use crate::common::{eventually, Bed};
use emulators::stash::Zone;
use emulators::StashAuth;
use serde_json::json;

fn fast() -> serde_json::Value {
    json!({"retryScale": 0.02})
}

#[tokio::test]
async fn the_manifest_starts_the_binary_and_the_old_one_could_not() {
    let bed = Bed::new(5, json!({})).await;
    assert!(!bed.task("queue_status").await.failed(), "the committed manifest starts plexsync");
    let yml = bed.plugin_dir.join("PlexSync.yml");
    let old = std::fs::read_to_string(&yml).unwrap().replace("  - plexsync\n", "  - \"{pluginDir}/plexsync\"\n");
    std::fs::write(&yml, old).unwrap();
    let stash = emulators::StashEmulator::start(emulators::StashState::new(), StashAuth::default()).await.unwrap();
    stash.install_plugins(bed.dir.path(), yml.parent().unwrap()).unwrap();
    let err = stash.run_plugin_task("PlexSync", "Queue status", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{{pluginDir}} is not substituted in exec[0]: {err}");
}

/// First sync, then an edit no hook reports; any later hook makes the
/// worker look for changes.
async fn silent_edit_arrives(bed: &Bed) {
    let ids = bed.scenes_in_plex();
    assert!(!bed.update_hook(ids[0]).await.failed());
    bed.settle().await;
    silent_title_reaches_plex(bed, ids[1], ids[2], "Silent").await;
}

/// `scene` gets `title` with no hook (as auto-tag edits); a hook on `other`
/// makes the worker look for changes, and the edit must reach Plex.
async fn silent_title_reaches_plex(bed: &Bed, scene: u64, other: u64, title: &str) {
    assert!(bed.stash.update_scene(scene, |s| s.title = Some(title.into())), "an edit with no hook");
    assert!(!bed.update_hook(other).await.failed());
    eventually(Duration::from_secs(20), &format!("the silent edit {title:?} reached Plex"), || {
        bed.item_of(scene).field("title") == Some(title)
    })
    .await;
}

#[tokio::test]
async fn capture_finds_silent_edits_west_at_and_east_of_utc() {
    for hours in [-8, 0, 10] {
        let bed = Bed::with_zone(12, fast(), StashAuth::login(None), Zone::fixed(hours * 3600)).await;
        let first = bed.stash.with_state(|s| *s.scenes.keys().next().unwrap());
        let stamp = bed.stash.scene(first).unwrap().updated_at;
        assert!(if hours == 0 { stamp.ends_with('Z') } else { !stamp.ends_with('Z') }, "{stamp}");
        silent_edit_arrives(&bed).await;
    }
}

#[tokio::test]
async fn capture_follows_dst_changes_both_ways() {
    for (before, after) in [(-7, -8), (-8, -7)] {
        let at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0) + chrono::Duration::seconds(3);
        let bed =
            Bed::with_zone(12, fast(), StashAuth::login(None), Zone::change_at(before * 3600, at, after * 3600)).await;
        let ids = bed.scenes_in_plex();
        assert!(!bed.update_hook(ids[0]).await.failed());
        bed.settle().await;
        // Cross the change, then edit with no hook: after a fall-back the
        // new text sorts below the last one seen.
        while chrono::Utc::now() < at + chrono::Duration::milliseconds(100) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        silent_title_reaches_plex(&bed, ids[1], ids[2], "After DST").await;
        let stamp = bed.stash.scene(ids[1]).unwrap().updated_at;
        assert!(stamp.ends_with(&format!("-0{}:00", -after)), "written after the change: {stamp}");
    }
}

#[tokio::test]
async fn an_edit_in_the_same_second_as_the_last_look_arrives() {
    let bed = Bed::new(12, fast()).await;
    let ids = bed.scenes_in_plex();
    // Deliver scene 1 and, within the same second, edit it again silently.
    assert!(bed.stash.edit_scene(ids[1], &["title"], |s| s.title = Some("First".into())).await);
    silent_title_reaches_plex(&bed, ids[1], ids[2], "Same Second").await;
}

#[tokio::test]
async fn a_stash_restarted_in_another_zone_loses_nothing() {
    let bed = Bed::with_zone(
        12,
        json!({"retryScale": 0.02, "workerIdleSecs": 0.3}),
        StashAuth::login(None),
        Zone::fixed(10 * 3600),
    )
    .await;
    let ids = bed.scenes_in_plex();
    assert!(!bed.update_hook(ids[0]).await.failed());
    bed.settle().await;
    while plexsync::pipeline::worker::is_running(&bed.data_dir()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Restarted with TZ 18 hours west: new times sort below everything seen.
    bed.stash.with_state(|s| s.zone = Zone::fixed(-8 * 3600));
    silent_title_reaches_plex(&bed, ids[1], ids[2], "New Zone").await;
}

#[tokio::test]
async fn the_worker_outlives_its_session_with_stashs_api_key() {
    let auth = StashAuth::login(Some(crate::common::API_KEY)).max_session_age(Duration::from_secs(2));
    let bed = Bed::with_auth(12, fast(), auth).await;
    let ids = bed.scenes_in_plex();
    let outage = Duration::from_secs(10);
    bed.plex.down_for(outage);
    bed.plex.settled().await;
    let started = Instant::now();
    // The session this hook brings expires five times over during the outage.
    assert!(bed.stash.edit_scene(ids[1], &["title"], |s| s.title = Some("During Outage".into())).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!bed.plex.is_up(), "Plex is still down");
    assert_ne!(bed.item_of(ids[1]).field("title"), Some("During Outage"));
    assert!(bed.queue().stats().unwrap().pending >= 1, "waiting in the queue");
    eventually(Duration::from_secs(40), "delivered after the outage, long after the session expired", || {
        bed.item_of(ids[1]).field("title") == Some("During Outage")
    })
    .await;
    assert!(started.elapsed() >= outage.saturating_sub(Duration::from_millis(500)), "not before Plex was back");
}

#[tokio::test]
async fn without_an_api_key_an_expired_session_says_what_to_set_and_a_new_hook_resumes() {
    let auth = StashAuth::login(None).max_session_age(Duration::from_secs(2));
    let bed = Bed::with_auth(12, json!({"retryScale": 0.02, "workerIdleSecs": 60}), auth).await;
    let ids = bed.scenes_in_plex();
    assert!(!bed.update_hook(ids[0]).await.failed());
    bed.settle().await;
    // The worker's session expires while it idles; then work arrives that
    // no hook brought (as after an outage), so no fresh session comes with it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    bed.queue()
        .enqueue(&plexsync::ids::SceneId::parse(&ids[1].to_string()).unwrap(), plexsync::store::Reason::Manual)
        .unwrap();
    let log_path = bed.data_dir().join("worker.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("Settings → Security → API Key") {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(20), "the worker names the fix: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bed.queue().stats().unwrap().pending >= 1, "nothing is lost");
    bed.stash.update_scene(ids[0], |s| s.title = Some("Resumed".into()));
    assert!(!bed.update_hook(ids[3]).await.failed(), "a new hook brings a fresh session");
    eventually(Duration::from_secs(20), "delivery resumed", || bed.item_of(ids[0]).field("title") == Some("Resumed"))
        .await;
}

#[test]
fn every_document_plexsync_sends_is_valid_in_stashs_schema() {
    let real = emulators::stash::contract::RealSchema::get().expect("Stash's schema under third_party/stash-schema");
    let docs = plexsync::clients::stash::queries::all();
    assert!(docs.len() >= 10, "all of them: {docs:?}");
    for (name, doc) in docs {
        if let Err((code, errors)) = real.check(&doc) {
            panic!("{name} is refused by Stash ({code}):\n{errors}\n{doc}");
        }
    }
}

#[tokio::test]
async fn a_query_stash_refuses_is_reported_not_retried() {
    let bed = Bed::new(2, fast()).await;
    let client = bed.stash_client();
    let err = client
        .query::<serde_json::Value>("read scene", "{ findScenes { scenes { updatedAt } } }", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.class, plexsync::error::ErrorClass::Bug, "{err}");
    assert!(err.to_string().contains("updatedAt"), "Stash's reason is kept: {err}");
}
