//! The metadata provider over HTTP: `plexsync daemon` with `provider` on,
//! and the Plex emulator as its client (it fetches and checks the
//! manifest, matches each scanned file, reads the metadata, downloads the
//! poster, re-pulls on refresh, and asks with `manual=1` for Fix Match).
#![cfg(unix)]

use std::process::Command;
use std::time::Duration;

use emulators::plex::{Image, Item};
use serde_json::{json, Value};

use crate::common::daemon::Daemon;
use crate::common::{eventually, Bed, PLEX_TOKEN};

const PROVIDER: &str = "tv.plex.agents.custom.plexsync";

/// Every Plex item back to a file on disk waiting for a scan: a library
/// whose files Plex has not met yet.
fn unscanned(bed: &Bed) -> usize {
    bed.plex.with_state(|s| {
        let files: Vec<(String, u64, u64)> = s
            .items
            .values()
            .flat_map(|i| i.files().map(|p| (p.file.clone(), p.size, p.duration_ms)).collect::<Vec<_>>())
            .collect();
        s.items.clear();
        for (path, size, duration) in files {
            s.add_disk_file(&path, size, duration, None);
        }
        s.disk.len()
    })
}

/// A daemon serving the provider, registered in Plex as section 1's agent.
async fn registered(bed: &Bed, env: &[(&str, &str)]) -> (Daemon, String) {
    let mut all = vec![("PLEXSYNC_PROVIDER", "true")];
    all.extend_from_slice(env);
    let daemon = Daemon::start(bed, "127.0.0.1:0", &all).unwrap();
    let url = daemon.provider_url(None).await;
    eventually(Duration::from_secs(20), "the provider indexed Stash's files", || {
        daemon.log.lock().unwrap().contains("Stash scenes indexed by file")
    })
    .await;
    let id = bed.plex.add_provider(&url).await.expect("Plex accepts the manifest");
    assert_eq!(id, PROVIDER);
    bed.plex.set_agent(1, &id);
    (daemon, url)
}

fn scan(bed: &Bed) {
    bed.plex.with_state(|s| s.request_scan(1, None));
}

/// The scene an item was matched to, by its guid.
fn scene_of(item: &Item) -> Option<u64> {
    item.guid.strip_prefix(PROVIDER)?.strip_prefix("://movie/")?.parse().ok()
}

fn stash_path_of(bed: &Bed, plex_path: &str) -> String {
    plex_path.replacen(&bed.lib.plex_prefix, &bed.lib.stash_prefix, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_200_files_gets_stashs_metadata_with_no_push_equal_to_what_push_writes() {
    let bed = Bed::new(200, json!({"reconcileHours": 0})).await;
    let files = unscanned(&bed);
    let (daemon, _) = registered(&bed, &[("PLEXSYNC_LOG", "plexsync=debug")]).await;
    scan(&bed);
    eventually(Duration::from_secs(60), "Plex scanned every file and asked the provider", || bed.plex.agent_idle())
        .await;
    let items: Vec<Item> = bed.plex.with_state(|s| s.items.values().cloned().collect());
    assert_eq!(items.len(), files, "one item per file");
    assert!(bed.plex.agent_log().is_empty(), "Plex took every answer: {:?}", bed.plex.agent_log());

    let mut matched = 0;
    for item in &items {
        let file = item.files().next().unwrap();
        let own = bed.stash.with_state(|s| {
            let path = stash_path_of(&bed, &file.file);
            s.scenes.values().find(|sc| sc.files.iter().any(|f| f.path == path)).map(|sc| sc.id)
        });
        match (own, scene_of(item)) {
            (Some(own), Some(got)) => {
                assert_eq!(got, own, "{} went to scene {got}, not its own {own}", file.file);
                matched += 1;
                let scene = bed.stash.scene(own).unwrap();
                let cover = scene.cover.clone().expect("fixture scenes have covers");
                assert_eq!(item.poster, Some(Image::Upload(cover.clone())), "poster bytes of scene {own}");
                assert_eq!(item.art, Some(Image::Upload(cover)), "background of scene {own}");
                assert!(item.agent_matched);
            }
            // A copy Plex has beside the library (no Stash file of that
            // path): matched by its name and size only to its own scene.
            (None, Some(got)) => {
                let name = file.file.rsplit('/').next().unwrap();
                let holds = bed.stash.scene(got).unwrap().files.iter().any(|f| f.path.ends_with(&format!("/{name}")));
                assert!(holds, "{} went to scene {got}, which holds no file of that name", file.file);
            }
            (Some(own), None) => {
                panic!("{} (scene {own}) was not matched: {:?} {}", file.file, item.guid, daemon.log.lock().unwrap())
            }
            (None, None) => {}
        }
    }
    assert!(matched >= 190, "{matched} of {files} files matched");
    assert_eq!(bed.plex_writes(), 0, "no push at all: Plex pulled everything");

    // What push would write equals what Plex now shows: a reconcile (push
    // mode) of the fields it compares by value finds nothing to change.
    let out = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["--data-dir", bed.data_dir().to_str().unwrap(), "reconcile"])
        .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .env("PLEXSYNC_SYNC_FIELDS", "title,summary,studio,date,genres,actors,directors,collection,tagline")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reconcile"]["differ"], 0, "{report}");
    assert!(report["reconcile"]["checked"].as_u64().unwrap() >= 200, "{report}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_mode_sends_a_stash_edit_through_the_provider_and_a_locked_field_stays() {
    let bed = Bed::new(12, json!({"reconcileHours": 0, "syncMode": "refresh", "retryScale": 0.02})).await;
    let id = bed.scenes_in_plex()[0];
    unscanned(&bed);
    let (_daemon, _) = registered(&bed, &[]).await;
    scan(&bed);
    eventually(Duration::from_secs(30), "the scene's item matched", || {
        bed.plex.with_state(|s| s.disk.is_empty())
            && bed.plex.item_by_file(&plex_path(&bed, id)).is_some_and(|i| scene_of(&i) == Some(id))
    })
    .await;
    let rk = bed.plex.item_by_file(&plex_path(&bed, id)).unwrap().rating_key;
    // A person's edit in Plex: locked, so no pull may change it.
    bed.plex.with_state(|s| {
        let mut item = s.items.get_mut(&rk).unwrap();
        item.fields.insert("title".into(), "A person's title".into());
        item.locked.insert("title".into());
    });
    let refreshes = bed.plex.item(rk).unwrap().refreshes;
    assert!(!bed.edit_hook(id, "Details edited in Stash").await.failed());
    eventually(Duration::from_secs(30), "the edit reached Plex through a refresh and a pull", || {
        bed.plex.item(rk).unwrap().field("summary") == Some("Details edited in Stash")
    })
    .await;
    let item = bed.plex.item(rk).unwrap();
    assert!(item.refreshes > refreshes, "PlexSync asked Plex to refresh");
    assert_eq!(item.field("title"), Some("A person's title"), "a locked field stays");
    let edits = bed.plex.requests().into_iter().filter(|r| r.method == "PUT" && !r.path.ends_with("/refresh")).count();
    assert_eq!(edits, 0, "refresh mode writes no field itself");
}

fn plex_path(bed: &Bed, scene: u64) -> String {
    let path = bed.stash.scene(scene).unwrap().files[0].path.clone();
    path.replacen(&bed.lib.stash_prefix, &bed.lib.plex_prefix, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_file_is_never_matched_and_fix_match_ranks_the_candidates() {
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    unscanned(&bed);
    bed.plex.with_state(|s| s.provider_full_paths = true);
    let stash = &bed.lib.stash_prefix;
    let ids = bed
        .stash
        .scan_new(&[
            vec![(format!("{stash}/Twins/a/same name.mp4"), 1000, 60.0)],
            vec![(format!("{stash}/Twins/b/same name.mp4"), 2000, 60.0)],
        ])
        .await;
    let (daemon, _) = registered(&bed, &[("PLEXSYNC_LOG", "plexsync=debug")]).await;
    let plex = &bed.lib.plex_prefix;
    bed.plex.with_state(|s| {
        s.add_disk_file(&format!("{plex}/Twins/b/same name.mp4"), 2000, 60_000, None);
        s.add_disk_file(&format!("{plex}/Elsewhere/same name.mp4"), 3000, 60_000, None);
    });
    scan(&bed);
    eventually(Duration::from_secs(30), "every file scanned and asked about", || bed.plex.agent_idle()).await;
    let sure = bed.plex.item_by_file(&format!("{plex}/Twins/b/same name.mp4")).unwrap();
    assert_eq!(scene_of(&sure), Some(ids[1]), "the full path settles it: {}", daemon.log.lock().unwrap());
    let unsure = bed.plex.item_by_file(&format!("{plex}/Elsewhere/same name.mp4")).unwrap();
    assert_eq!(scene_of(&unsure), None, "two scenes could hold it: no automatic match");
    assert!(!unsure.agent_matched);

    // Fix Match: Plex asks with manual=1 and lists the candidates.
    let http = reqwest::Client::new();
    let mut search = bed.plex.url().join(&format!("library/metadata/{}/matches", unsure.rating_key)).unwrap();
    search.query_pairs_mut().append_pair("manual", "1").append_pair("title", "same name");
    let found: Value = http
        .get(search)
        .header("X-Plex-Token", PLEX_TOKEN)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = found["MediaContainer"]["SearchResult"].as_array().unwrap().clone();
    let guids: Vec<&str> = results.iter().map(|r| r["guid"].as_str().unwrap()).collect();
    assert!(guids.len() >= 2, "{found}");
    for id in &ids {
        assert!(guids.contains(&format!("{PROVIDER}://movie/{id}").as_str()), "scene {id} is a candidate: {found}");
    }
    let scores: Vec<u64> = results.iter().map(|r| r["score"].as_u64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    assert!(scores.iter().all(|s| *s < 85), "none would be taken by itself: {scores:?}");

    let chosen = format!("{PROVIDER}://movie/{}", ids[0]);
    let mut fix = bed.plex.url().join(&format!("library/metadata/{}/match", unsure.rating_key)).unwrap();
    fix.query_pairs_mut().append_pair("guid", &chosen).append_pair("name", "same name");
    let status = http.put(fix).header("X-Plex-Token", PLEX_TOKEN).send().await.unwrap().status();
    assert!(status.is_success());
    eventually(Duration::from_secs(10), "the chosen scene's metadata", || {
        bed.plex.item(unsure.rating_key).is_some_and(|i| i.guid == chosen && i.agent_matched)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_answers_only_under_its_secret_and_shows_nothing_secret() {
    let bed = Bed::new(8, json!({"reconcileHours": 0})).await;
    let weak = Daemon::start(
        &bed,
        "0.0.0.0:0",
        &[
            ("PLEXSYNC_PROVIDER", "true"),
            ("PLEXSYNC_DAEMON_TOKEN", "t0ken-of-the-daemon"),
            ("PLEXSYNC_PROVIDER_SECRET", "short"),
        ],
    )
    .err()
    .expect("a weak secret is refused");
    assert!(weak.contains("providerSecret"), "{weak}");

    let token = "t0ken-of-the-daemon";
    let mut daemon =
        Daemon::start(&bed, "0.0.0.0:0", &[("PLEXSYNC_PROVIDER", "true"), ("PLEXSYNC_DAEMON_TOKEN", token)]).unwrap();
    let port = daemon.url.rsplit(':').next().unwrap().to_string();
    daemon.url = format!("http://127.0.0.1:{port}");
    let shown = daemon.provider_url(Some(token)).await;
    let secret = shown.rsplit('/').next().unwrap().to_string();
    assert!(
        shown.starts_with("http://this-machine:"),
        "listening everywhere, the page says to put the address: {shown}"
    );
    let root = format!("{}/provider/{secret}", daemon.url);
    eventually(Duration::from_secs(20), "the provider indexed Stash's files", || {
        daemon.log.lock().unwrap().contains("Stash scenes indexed by file")
    })
    .await;

    // The CLI shows the same secret.
    let out = Command::new(env!("CARGO_BIN_EXE_plexsync"))
        .args(["--data-dir", bed.data_dir().to_str().unwrap(), "provider-url"])
        .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", bed.session())
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cli["provider_url"].as_str().unwrap().ends_with(&format!("/provider/{secret}")), "{cli}");

    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for path in [
        "/provider",
        "/provider/",
        "/provider/wrong-secret-0123456789",
        "/provider/wrong-secret-0123456789/library/metadata/1",
    ] {
        let (status, _) = get(format!("{}{path}", daemon.url)).await;
        assert_eq!(status, 404, "{path}");
    }
    for path in
        ["/nothing", "/library/metadata/1/refresh", "/images/scene/../../graphql", "/library/metadata/1/../../x"]
    {
        let (status, _) = get(format!("{root}{path}")).await;
        assert_eq!(status, 404, "{path}");
    }
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::POST] {
        let status = http.request(method.clone(), format!("{root}/library/metadata/1")).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 404, "{method} is not served: the provider only reads");
    }

    // What Plex is answered, without any credential.
    let id = bed.scenes_in_plex()[0];
    let file = plex_path(&bed, id);
    let mut answers = vec![get(root.clone()).await];
    let matched = http
        .post(format!("{root}/library/metadata/matches"))
        .json(&json!({"type": 1, "filename": file, "includeAdult": 1, "unknownField": [1]}))
        .send()
        .await
        .unwrap();
    answers.push((matched.status().as_u16(), matched.text().await.unwrap()));
    for path in [
        format!("/library/metadata/{id}"),
        format!("/library/metadata/{id}/images"),
        format!("/library/metadata/{id}/extras"),
    ] {
        answers.push(get(format!("{root}{path}")).await);
    }
    let stash_host =
        bed.stash.url().host_str().unwrap().to_string() + ":" + &bed.stash.url().port().unwrap().to_string();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        // Nor the provider's own secret: Plex shows image URLs to its users.
        let session = bed.session();
        for secret in [PLEX_TOKEN, token, &session, &stash_host, &bed.lib.stash_prefix, &secret] {
            assert!(!body.contains(secret), "an answer shows {secret:?}: {body}");
        }
    }
    let matched: Value = serde_json::from_str(&answers[1].1).unwrap();
    assert_eq!(
        matched["MediaContainer"]["Metadata"][0]["ratingKey"],
        id.to_string(),
        "{matched} {}",
        daemon.log.lock().unwrap()
    );
    let item: Value = serde_json::from_str(&answers[2].1).unwrap();
    let poster = item["MediaContainer"]["Metadata"][0]["Image"][0]["url"].as_str().unwrap().to_string();
    let images = format!("{}/provider-image/", daemon.url);
    assert!(poster.starts_with(&images) && poster.ends_with(&format!("/scene/{id}")), "from the provider: {poster}");
    // Its token opens that one image: not another scene's, not the rest.
    let other = bed.scenes_in_plex()[1];
    for tampered in
        [poster.replace(&format!("/scene/{id}"), &format!("/scene/{other}")), format!("{poster}/performer/1")]
    {
        let (status, _) = get(tampered.clone()).await;
        assert_eq!(status, 404, "{tampered}");
    }
    let token = poster.trim_start_matches(&images).split('/').next().unwrap().to_string();
    let (status, _) = get(format!("{}/provider/{token}/library/metadata/{id}", daemon.url)).await;
    assert_eq!(status, 404, "an image token is not the provider's secret");
    let bytes = http.get(&poster).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(
        bytes.to_vec(),
        bed.stash.scene(id).unwrap().cover.unwrap(),
        "Stash's cover, fetched with PlexSync's credentials"
    );

    // A flood of metadata calls for one scene costs Stash one read per cache period.
    let before = bed.stash.request_count();
    let calls: Vec<_> = (0..100).map(|_| get(format!("{root}/library/metadata/{id}"))).collect();
    for (status, _) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    let reads = bed.stash.request_count() - before;
    assert!(reads <= 4, "100 calls cost Stash {reads} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_serves_the_agents_item_content_rating_and_gallery_images() {
    let bed = Bed::new(8, json!({"reconcileHours": 0, "IncludeGalleryImages": true, "SortGalleryImages": true})).await;
    let id = bed.scenes_in_plex()[0];
    let gallery = bed.stash.with_state(|s| s.add_gallery("Set", &[(600, 900), (1600, 900)]));
    let other = bed.stash.with_state(|s| s.add_gallery("Other", &[(600, 900)]));
    bed.stash.update_scene(id, |s| {
        s.galleries = vec![gallery];
        s.rating100 = Some(70);
    });
    let (daemon, root) = registered(&bed, &[]).await;
    let http = reqwest::Client::new();
    let item: Value = http.get(format!("{root}/library/metadata/{id}")).send().await.unwrap().json().await.unwrap();
    let item = &item["MediaContainer"]["Metadata"][0];
    assert_eq!(item["contentRating"], "XXX", "{item}");
    assert_eq!(item["isAdult"], true);
    assert_eq!(item["rating"], 7.0);
    let images = item["Image"].as_array().unwrap();
    let kinds: Vec<&str> = images.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["coverPoster", "background", "coverPoster", "background"], "{item}");
    let (portrait, landscape) = bed.stash.with_state(|s| {
        let ids = &s.galleries[&gallery].images;
        (s.images[&ids[0]].clone(), s.images[&ids[1]].clone())
    });
    let url = images[2]["url"].as_str().unwrap();
    assert!(url.ends_with(&format!("/scene/{id}/gallery/{}", portrait.id)), "{url}");
    assert_eq!(http.get(url).send().await.unwrap().bytes().await.unwrap().to_vec(), portrait.bytes);
    assert!(images[3]["url"].as_str().unwrap().ends_with(&format!("/gallery/{}", landscape.id)));
    // A token opens the image it names, not another gallery's.
    let foreign = bed.stash.with_state(|s| s.galleries[&other].images[0]);
    let tampered = url.replace(&format!("/gallery/{}", portrait.id), &format!("/gallery/{foreign}"));
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 404);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_answers_a_gated_scene_as_a_missing_one() {
    let bed = Bed::new(8, json!({"reconcileHours": 0, "RequireURL": true})).await;
    let (gated, shown) = (bed.scenes_in_plex()[0], bed.scenes_in_plex()[1]);
    bed.stash.update_scene(gated, |s| s.urls.clear());
    bed.stash.update_scene(shown, |s| s.urls = vec!["https://example.com/scene".into()]);
    let (daemon, root) = registered(&bed, &[]).await;
    let http = reqwest::Client::new();
    let status = |path: String| {
        let http = http.clone();
        async move { http.get(path).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(format!("{root}/library/metadata/{shown}")).await, 200);
    for path in [format!("{root}/library/metadata/{gated}"), format!("{root}/library/metadata/{gated}/images")] {
        assert_eq!(status(path.clone()).await, 404, "{path}");
    }
    assert_eq!(status(format!("{root}/library/metadata/999999")).await, 404, "as a missing scene");
    drop(daemon);
}
