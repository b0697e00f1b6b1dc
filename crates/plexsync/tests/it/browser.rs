//! What a person sees, in headless Chromium: the daemon's status page
//! through a Plex outage, and PlexSync's badge in Stash's UI for a synced,
//! a waiting, a dead-letter and a never-delivered scene. Screenshots are
//! kept under `target/browser/`.
//!
//! Needs Debian's Chromium and `npm ci` in `tests/browser` (`.ci/setup`
//! does both); without them, [`crate::common::tool`]'s policy: skipped
//! with the reason, or failed where `REQUIRE_TEST_TOOLS` is set (CI).
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::daemon::{deliveries, Daemon};
use crate::common::{eventually, Bed};
use serde_json::{json, Value};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Whether the browser is here (see [`crate::common::tool`]).
fn browser_ready() -> bool {
    let ready = browser_dir().join("node_modules/playwright-core").exists() && chromium().exists();
    let how = "install Debian's chromium and run `npm ci` in crates/plexsync/tests/browser";
    crate::common::tool(ready.then_some(()), "the browser", how).is_some()
}

/// Where screenshots go: `target/browser/<name>.png`.
fn screenshot(name: &str) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.png")).to_string_lossy().into_owned()
}

/// What the page shows after `steps` (see `tests/browser/drive.mjs`):
/// its visible text and its DOM.
async fn drive(url: &str, steps: &[String], cookie: Option<&str>) -> (String, String) {
    let page = drive_clean(url, steps, cookie).await;
    (page["text"].as_str().unwrap().to_string(), page["html"].as_str().unwrap().to_string())
}

/// Everything `drive.mjs` reports, after checking the page had no error
/// (a script error, a refused policy, a failed request).
async fn drive_clean(url: &str, steps: &[String], cookie: Option<&str>) -> Value {
    let page = drive_raw(url, steps, cookie).await;
    assert_eq!(page["problems"], json!([]), "errors on the page {url}");
    page
}

/// Everything `drive.mjs` reports, errors on the page included.
async fn drive_raw(url: &str, steps: &[String], cookie: Option<&str>) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir().join("drive.mjs")).arg(url).args(steps).env("CHROMIUM", chromium());
    if let Some(cookie) = cookie {
        cmd.env("SESSION_COOKIE", cookie);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output()).await.expect("the browser finished").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser failed at {url} {steps:?}:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_plex_outage_its_waiting_scenes_and_a_scenes_trace() {
    if !browser_ready() {
        return;
    }
    let bed = Bed::new(20, json!({"retryScale": 0.02, "healthOutageSecs": 1, "reconcileHours": 0})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    let ids = bed.scenes_in_plex();
    assert!(!bed.edit_hook(ids[0], "Before the outage").await.failed());
    eventually(Duration::from_secs(20), "delivered", || {
        bed.item_of(ids[0]).field("summary") == Some("Before the outage")
    })
    .await;

    bed.plex.go_down();
    let waiting = &ids[1..4];
    for id in waiting {
        assert!(!bed.edit_hook(*id, "During the outage").await.failed());
    }
    let started = Instant::now();
    while daemon.health().await.0 != 503 {
        assert!(started.elapsed() < Duration::from_secs(20), "no 503 during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = screenshot("status-page-plex-outage");
    let (text, _) = drive(&daemon.url, &[format!("shot:{shot}")], None).await;
    assert!(text.contains("Not delivering") && text.contains("plex_unavailable"), "{text}");
    let waiting_table = text.split("Waiting (").nth(1).and_then(|t| t.split("Dead letters").next()).unwrap_or("");
    for id in waiting {
        assert!(waiting_table.contains(&format!("\n{id}\t")), "scene {id} listed as waiting: {text}");
    }

    bed.plex.come_up();
    eventually(Duration::from_secs(20), "delivered after the outage", || {
        waiting.iter().all(|id| bed.item_of(*id).field("summary") == Some("During the outage"))
    })
    .await;
    assert_eq!(daemon.health().await.0, 200);
    let metrics = daemon.get("/metrics", None).await.1;
    assert!(deliveries(&metrics, "synced") >= 4.0, "{metrics}");

    // The scene search, as a person uses it: type an id, press Show.
    let shot = screenshot("status-page-scene");
    let steps = [
        "fill:input[name=scene]".to_string() + &format!("={}", ids[1]),
        "click:form[method=get] button".to_string(),
        "wait:pre.trace".to_string(),
        format!("shot:{shot}"),
    ];
    let (text, _) = drive(&daemon.url, &steps, None).await;
    assert!(text.contains("Delivering") && !text.contains("Not delivering"), "{text}");
    let item = bed.item_of(ids[1]).rating_key;
    assert!(text.contains(&format!("Scene {}", ids[1])) && text.contains("State: synced"), "{text}");
    assert!(text.contains(&format!("Plex item {item}")), "{text}");
    assert!(text.contains(&format!("decision: item {item}")), "the explain trace: {text}");
    let deliveries_table = text.split("Last deliveries").nth(1).unwrap_or("");
    for id in &ids[..4] {
        assert!(deliveries_table.contains(&format!("\n{id}\t")), "scene {id} among the last deliveries: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stash_ui_badge_shows_synced_waiting_dead_and_unsynced_scenes() {
    if !browser_ready() {
        return;
    }
    let bed = Bed::new(10, json!({"retryScale": 0.02, "notInPlexHours": 0, "partialScan": false})).await;
    let ids = bed.scenes_in_plex();
    let (synced, waiting, unsynced) = (ids[0], ids[1], ids[2]);
    assert!(!bed.edit_hook(synced, "Synced").await.failed());
    eventually(Duration::from_secs(20), "delivered", || bed.item_of(synced).field("summary") == Some("Synced")).await;
    let dead = bed.stash.scan_new(&[vec![(format!("{}/nowhere/x.mp4", bed.lib.stash_prefix), 5, 1.0)]]).await[0];
    let is_dead = || bed.queue().scene_state(&dead.to_string()).unwrap().state == "dead";
    eventually(Duration::from_secs(20), "dead letter", is_dead).await;
    // Change capture looks at a version again when it was first read
    // within its own second (a same-second edit): let that look pass, so
    // the outage below does not hold a second try of the dead scene.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually(Duration::from_secs(20), "still a dead letter", is_dead).await;
    bed.plex.go_down();
    assert!(!bed.edit_hook(waiting, "Waiting").await.failed());
    eventually(Duration::from_secs(20), "the worker saw the outage", || {
        bed.queue().get_kv(plexsync::store::kv::OUTAGE_SINCE).unwrap().is_some_and(|v| v != "0")
    })
    .await;

    let mut scenes = scene_list(&[synced, waiting, dead, unsynced]);
    scenes[0]["resume_time"] = json!(30.0);
    scenes[0]["duration"] = json!(100.0);
    let cookie = stash_ui(&bed, &scenes);
    let url = bed.stash.url().join(&format!("scenes/{synced}")).unwrap().to_string();

    let card = |id: u64, state: &str| format!("#card-{id} .plexsync-badge[data-plexsync-state={state}]");
    let (badge, bar) = (format!("#card-{synced} .plexsync-badge"), format!("#card-{synced} .progress-bar"));
    let shot = screenshot("stash-ui-badges");
    let steps = [
        format!("wait:{}", card(synced, "synced")),
        format!("wait:{}", card(waiting, "waiting")),
        format!("wait:{}", card(dead, "dead")),
        format!("wait:{}", card(unsynced, "unknown")),
        // Its own row at the top of the tab content, not in the tab strip.
        "wait:#scene-page .tab-content > .plexsync-panel .plexsync-synced".to_string(),
        "none:#scene-page .nav-tabs .plexsync-panel".to_string(),
        format!("box:{badge}"),
        format!("box:{bar}"),
        "box:#scene-page .nav-tabs".to_string(),
        "box:#scene-page .plexsync-panel".to_string(),
        format!("shot:{shot}"),
    ];
    let page = drive_clean(&url, &steps, Some(&cookie)).await;
    let (text, html) = (page["text"].as_str().unwrap().to_string(), page["html"].as_str().unwrap().to_string());
    let bottom = |b: &Value| b["y"].as_f64().unwrap() + b["height"].as_f64().unwrap();
    let boxes = &page["boxes"];
    assert!(bottom(&boxes[&badge]) <= boxes[&bar]["y"].as_f64().unwrap(), "the badge clears the resume bar: {boxes}");
    assert!(
        bottom(&boxes["#scene-page .nav-tabs"]) <= boxes["#scene-page .plexsync-panel"]["y"].as_f64().unwrap(),
        "the panel is below the tab links: {boxes}"
    );
    let item = bed.item_of(synced).rating_key;
    assert!(text.contains(&format!("ago to item {item}")), "the page says which item: {text}");
    let badge = |id: u64| {
        html.split(&format!("id=\"card-{id}\"")).nth(1).and_then(|c| c.split("id=\"card-").next()).unwrap_or("")
    };
    assert!(badge(dead).contains("not in Plex yet"), "the dead letter's reason is in its badge: {}", badge(dead));
    assert!(badge(waiting).contains("Plex has not answered"), "why it waits: {}", badge(waiting));

    // Explain and Sync now, from the scene page.
    bed.plex.come_up();
    let shot = screenshot("stash-ui-explain");
    let steps = [
        "wait:#scene-page .plexsync-panel .plexsync-synced".to_string(),
        "click:#scene-page button:has-text('Explain')".to_string(),
        "wait:#scene-page .plexsync-trace".to_string(),
        "click:#scene-page button:has-text('Sync now')".to_string(),
        "wait:#scene-page .plexsync-message".to_string(),
        "wait:#scene-page .plexsync-panel .plexsync-waiting".to_string(),
        format!("shot:{shot}"),
    ];
    let (text, _) = drive(&url, &steps, Some(&cookie)).await;
    assert!(text.contains(&format!("decision: item {item}")), "{text}");
    assert!(text.contains(&format!("scene {synced} queued for Plex")), "{text}");
    let runs = bed.stash.hook_runs().len();
    eventually(Duration::from_secs(20), "Sync now delivered", || !bed.queue().is_pending(&synced.to_string()).unwrap())
        .await;
    assert_eq!(bed.stash.hook_runs().len(), runs, "the UI ran operations, no hook");
}

/// The scenes the harness page shows, as `{id, title}`.
fn scene_list(ids: &[u64]) -> Vec<Value> {
    ids.iter().map(|id| json!({"id": id.to_string(), "title": format!("Scene {id}")})).collect()
}

/// Puts the harness page (`tests/browser/stash-ui.html`) with `scenes` in
/// the bed's Stash; returns a logged-in person's cookie for the browser.
fn stash_ui(bed: &Bed, scenes: &[Value]) -> String {
    let page = std::fs::read_to_string(browser_dir().join("stash-ui.html")).unwrap();
    let umd = |path: &str| std::fs::read_to_string(browser_dir().join("node_modules").join(path)).unwrap();
    let page = page
        .replace("/*REACT*/", &umd("react/umd/react.production.min.js"))
        .replace("/*REACT_DOM*/", &umd("react-dom/umd/react-dom.production.min.js"))
        .replace("/*SCENES*/", &serde_json::to_string(scenes).unwrap());
    bed.stash.set_ui_page(&page);
    format!("session={}", bed.session())
}

/// Stash keeps the scene page mounted when a person steps to the next scene
/// of a queue: the panel follows the new scene and leaves the old one's
/// trace behind. Beside a plugin whose `before` passes only `{children}`
/// on (Stash's example does), the panel finds its scene in the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scene_panel_follows_a_step_to_the_next_scene_and_another_plugins_before() {
    if !browser_ready() {
        return;
    }
    let bed = Bed::new(6, json!({"retryScale": 0.02})).await;
    let ids = bed.scenes_in_plex();
    let (synced, next) = (ids[0], ids[1]);
    assert!(!bed.edit_hook(synced, "Synced").await.failed());
    eventually(Duration::from_secs(20), "delivered", || bed.item_of(synced).field("summary") == Some("Synced")).await;
    let cookie = stash_ui(&bed, &scene_list(&[synced, next]));
    let page = |query: &str| bed.stash.url().join(&format!("scenes/{synced}{query}")).unwrap().to_string();
    let panel = |id: u64| format!("#scene-page .plexsync-panel[data-plexsync-scene=\"{id}\"]");

    let shot = screenshot("stash-ui-next-scene");
    let steps = [
        format!("wait:{} .plexsync-synced", panel(synced)),
        "click:#scene-page button:has-text('Explain')".to_string(),
        "wait:#scene-page .plexsync-trace".to_string(),
        "click:#queue-next".to_string(),
        format!("wait:{} [data-plexsync-state=unknown]", panel(next)),
        "none:#scene-page .plexsync-trace".to_string(),
        format!("none:{}", panel(synced)),
        format!("shot:{shot}"),
    ];
    let (text, _) = drive(&page(""), &steps, Some(&cookie)).await;
    assert!(!text.contains("decision:"), "the first scene's trace is gone: {text}");

    let steps = [format!("wait:{} .plexsync-synced", panel(synced))];
    let (text, _) = drive(&page("?before=children"), &steps, Some(&cookie)).await;
    let item = bed.item_of(synced).rating_key;
    assert!(text.contains(&format!("ago to item {item}")), "{text}");
}

/// Stash shows up to 1000 cards a page; the plugin answers 500 scenes a
/// run. Every card gets its badge, none an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_1000_cards_gets_a_badge_on_every_card() {
    if !browser_ready() {
        return;
    }
    let bed = Bed::new(6, json!({"retryScale": 0.02})).await;
    let synced = bed.scenes_in_plex()[0];
    assert!(!bed.edit_hook(synced, "Synced").await.failed());
    eventually(Duration::from_secs(20), "delivered", || bed.item_of(synced).field("summary") == Some("Synced")).await;
    let ids: Vec<u64> = std::iter::once(synced).chain(100_000..100_999).collect();
    let cookie = stash_ui(&bed, &scene_list(&ids));
    let last = ids[ids.len() - 1];
    let steps = [
        format!("wait:#card-{last} .plexsync-badge[data-plexsync-state=unknown]"),
        format!("wait:#card-{synced} .plexsync-badge[data-plexsync-state=synced]"),
        "none:.plexsync-badge[data-plexsync-state=error]".to_string(),
        "none:.plexsync-badge[data-plexsync-state=pending]".to_string(),
    ];
    let (_, html) = drive(bed.stash.url().as_str(), &steps, Some(&cookie)).await;
    assert_eq!(html.matches("class=\"plexsync-badge").count(), 1000, "a badge on every card");
}

/// A plugin answer that is not PlexSync's JSON (another program in the
/// plugin's place, a broken install) shows as an error on the badge, never
/// as "Not synced".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_plexsyncs_shows_as_an_error() {
    if !browser_ready() {
        return;
    }
    let install = |config: &Path| {
        let folder = crate::common::install_files(config);
        std::fs::remove_file(folder.join("plexsync")).unwrap();
        std::fs::write(folder.join("plexsync"), "#!/bin/sh\ncat >/dev/null\necho 'not what you expected'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(folder.join("plexsync"), std::fs::Permissions::from_mode(0o755)).unwrap();
        folder
    };
    let bed = Bed::installed_by(4, json!({}), emulators::StashAuth::login(None), Default::default(), install).await;
    let id = bed.scenes_in_plex()[0];
    let cookie = stash_ui(&bed, &scene_list(&[id]));
    let steps = [format!("wait:#card-{id} .plexsync-badge[data-plexsync-state=error]")];
    let (_, html) = drive(bed.stash.url().as_str(), &steps, Some(&cookie)).await;
    assert!(html.contains("not PlexSync's"), "the badge says why: {html}");
}

/// Another site's page framing the daemon's (to have a person click
/// "Purge dead letters"): the browser refuses to render it; a frame of a
/// page without those headers, beside it, renders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_page_cannot_frame_the_status_page() {
    if !browser_ready() {
        return;
    }
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[]).unwrap();
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_url = format!("http://{}", site.local_addr().unwrap());
    let framing = format!(
        "<!doctype html><title>another site</title><iframe src=\"{}/\" width=600 height=300></iframe>\
         <iframe src=\"{site_url}/control\" width=300 height=100></iframe>",
        daemon.url
    );
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { axum::response::Html(framing) }))
        .route("/control", axum::routing::get(|| async { axum::response::Html("a page that may be framed") }));
    tokio::spawn(async move { axum::serve(site, app).await });

    let page = drive_raw(&site_url, &[format!("shot:{}", screenshot("framed"))], None).await;
    let frames = page["frames"].as_array().unwrap();
    let text_of = |want: &str| {
        frames.iter().find(|f| f["url"].as_str().unwrap().starts_with(want)).map(|f| f["text"].as_str().unwrap_or(""))
    };
    assert_eq!(
        text_of(&format!("{site_url}/control")),
        Some("a page that may be framed"),
        "framing works here: {page}"
    );
    let framed =
        frames.iter().find(|f| !f["url"].as_str().unwrap().starts_with(&site_url)).expect("the daemon's frame");
    let shown = framed["text"].as_str().unwrap_or("");
    assert!(!shown.contains("PlexSync") && !shown.contains("Dead letters"), "the page rendered in a frame: {framed}");
    let problems = page["problems"].to_string();
    assert!(problems.contains("frame-ancestors") || problems.contains("X-Frame-Options"), "{problems}");
}
