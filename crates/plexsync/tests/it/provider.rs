//! The metadata provider over HTTP: `plexsync daemon` with `provider` on,
//! and the Plex emulator as its client (it fetches and checks the
//! manifest, matches each scanned file, reads the metadata, re-pulls on
//! refresh, and asks with `manual=1` for Fix Match), as a real PMS runs
//! it: LAN image URLs refused by Plex's cloud, only documented status
//! codes understood, no retry after a failure.
#![cfg(unix)]

use std::process::Command;
use std::time::Duration;

use emulators::plex::Item;
use emulators::stash::state::poster_shows;
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

/// The items matched to a scene that hold its file and do not show its
/// cover yet (push writes only into an item that holds the scene's file;
/// a copy elsewhere that the provider matched by name keeps Plex's frame).
fn posters_not_shown(bed: &Bed) -> Vec<String> {
    let items: Vec<Item> = bed.plex.with_state(|s| s.items.values().cloned().collect());
    items
        .iter()
        .filter_map(|item| {
            let scene = bed.stash.scene(scene_of(item)?)?;
            let own = item.files().any(|f| scene.files.iter().any(|sf| sf.path == stash_path_of(bed, &f.file)));
            if !own {
                return None;
            }
            let shown = poster_shows(scene.cover.as_deref().unwrap_or_default(), item.poster.as_ref());
            (!shown).then(|| format!("item {} (scene {}): {:?}", item.rating_key, scene.id, item.poster))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_200_files_gets_stashs_metadata_and_poster_bytes_equal_to_what_push_writes() {
    let bed = Bed::new(200, json!({"reconcileHours": 0})).await;
    let files = unscanned(&bed);
    let (daemon, _) = registered(&bed, &[("PLEXSYNC_LOG", "plexsync=debug")]).await;
    scan(&bed);
    eventually(Duration::from_secs(60), "Plex scanned every file and asked the provider", || bed.plex.agent_idle())
        .await;
    let started = std::time::Instant::now();
    while !posters_not_shown(&bed).is_empty() && started.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unshown = posters_not_shown(&bed);
    assert!(unshown.is_empty(), "every item holds its scene's poster, uploaded after Plex's read: {unshown:?}");
    let items: Vec<Item> = bed.plex.with_state(|s| s.items.values().cloned().collect());
    assert_eq!(items.len(), files, "one item per file");
    assert!(bed.plex.agent_log().is_empty(), "Plex took every answer: {:?}", bed.plex.agent_log());
    let refused = bed.plex.with_state(|s| s.cloud_refused.clone());
    assert!(refused.is_empty(), "no image URL for Plex's cloud to refuse: {refused:?}");

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
                assert!(poster_shows(&cover, item.poster.as_ref()), "poster of scene {own}: {:?}", item.poster);
                assert!(poster_shows(&cover, item.art.as_ref()), "background of scene {own}");
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
    // What this cost Plex, per matched item: the fields Plex pulled are
    // recorded, not written; images (and collections) are.
    let requests = bed.plex.requests();
    let count = |f: &dyn Fn(&emulators::plex::RequestRecord) -> bool| requests.iter().filter(|r| f(r)).count();
    let uploads = count(&|r| r.method == "POST" && (r.path.ends_with("/posters") || r.path.ends_with("/arts")));
    let edits = count(&|r| r.method == "PUT" && !r.path.ends_with("/refresh"));
    let fields: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "PUT")
        .flat_map(|r| r.query.iter().map(|(k, _)| k.split(['[', '.']).next().unwrap_or(k)))
        .collect();
    // Plex takes no critic rating from a provider item: push writes it.
    let pushed = ["collection", "thumb", "art", "rating", "type", "id"];
    assert!(fields.iter().all(|f| pushed.contains(f)), "only what Plex did not take is edited: {fields:?}");
    let reads = count(&|r| r.method == "GET");
    let per = |n: usize| n as f64 / matched as f64;
    eprintln!(
        "provider scan of {matched} items: Plex requests per item: {:.2} reads, {:.2} uploads, {:.2} edits",
        per(reads),
        per(uploads),
        per(edits)
    );
    assert!(uploads <= 2 * matched, "a poster and a background per item at most: {uploads}");
    assert!(per(reads) < 2.5, "{reads} reads for {matched} items");

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
    // `filename` relative to the library, as Plex's provider docs show it.
    bed.plex.with_state(|s| s.provider_full_paths = false);
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
    let cover = bed.stash.scene(id).unwrap().cover.unwrap();
    eventually(Duration::from_secs(30), "the poster uploaded after Plex's read", || {
        poster_shows(&cover, bed.plex.item(rk).unwrap().poster.as_ref())
    })
    .await;
    let fields: Vec<String> = bed
        .plex
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && !r.path.ends_with("/refresh"))
        .flat_map(|r| r.query.into_iter().map(|(k, _)| k))
        .collect();
    let uncarried = |k: &str| ["collection", "thumb.", "art.", "type", "id"].iter().any(|p| k.starts_with(p));
    assert!(fields.iter().all(|k| uncarried(k)), "refresh mode writes only what the provider cannot carry: {fields:?}");
}

fn plex_path(bed: &Bed, scene: u64) -> String {
    let path = bed.stash.scene(scene).unwrap().files[0].path.clone();
    path.replacen(&bed.lib.stash_prefix, &bed.lib.plex_prefix, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_file_is_never_matched_and_fix_match_ranks_the_candidates() {
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    unscanned(&bed);
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
    // A scene with a performer whose photo Plex is given (`actorImages`).
    let id = bed.scenes_in_plex().into_iter().find(|id| !bed.stash.scene(*id).unwrap().performers.is_empty()).unwrap();
    let performer = bed.stash.scene(id).unwrap().performers[0];
    let photo = emulators::stash::state::fixture_image(77);
    bed.stash.with_state(|s| s.performers.get_mut(&performer).unwrap().image = Some(photo.clone()));
    let env = [("PLEXSYNC_PROVIDER", "true"), ("PLEXSYNC_DAEMON_TOKEN", token), ("PLEXSYNC_ACTOR_IMAGES", "true")];
    let mut daemon = Daemon::start(&bed, "0.0.0.0:0", &env).unwrap();
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
    assert!(cli["provider_url"].as_str().unwrap().contains(&format!(":{port}/")), "where the daemon listens: {cli}");

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
    let item = &item["MediaContainer"]["Metadata"][0];
    for field in ["thumb", "art", "Image", "Collection"] {
        assert!(item.get(field).is_none(), "{field} is written by push after Plex's read: {item}");
    }
    assert!(item["originallyAvailableAt"].is_string(), "{item}");
    let photo_url = item["Role"][0]["thumb"].as_str().unwrap().to_string();
    let images = format!("{}/provider-image/", daemon.url);
    let named = format!("/scene/{id}/performer/{performer}");
    assert!(photo_url.starts_with(&images) && photo_url.ends_with(&named), "from the provider: {photo_url}");
    // Its token opens that one image: not another scene's, not the rest.
    let other = bed.scenes_in_plex().into_iter().find(|o| *o != id).unwrap();
    for tampered in [
        photo_url.replace(&format!("/scene/{id}/"), &format!("/scene/{other}/")),
        photo_url.replace(&named, &format!("/scene/{id}")),
        format!("{photo_url}/x"),
    ] {
        let (status, _) = get(tampered.clone()).await;
        assert_eq!(status, 404, "{tampered}");
    }
    let token = photo_url.trim_start_matches(&images).split('/').next().unwrap().to_string();
    let (status, _) = get(format!("{}/provider/{token}/library/metadata/{id}", daemon.url)).await;
    assert_eq!(status, 404, "an image token is not the provider's secret");
    let answer = http.get(&photo_url).send().await.unwrap();
    assert_eq!(answer.headers()["content-type"], "image/png");
    assert_eq!(answer.bytes().await.unwrap().to_vec(), photo, "Stash's photo, fetched with PlexSync's credentials");

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
async fn the_provider_serves_the_agents_item_and_gallery_images_and_collections_follow_by_push() {
    let bed = Bed::new(8, json!({"reconcileHours": 0, "IncludeGalleryImages": true, "SortGalleryImages": true})).await;
    let id = bed.scenes_in_plex()[0];
    let gallery = bed.stash.with_state(|s| s.add_gallery("Set", &[(600, 900), (1600, 900)]));
    let studio = bed.stash.with_state(|s| *s.studios.keys().next().unwrap());
    bed.stash.update_scene(id, |s| {
        s.galleries = vec![gallery];
        s.rating100 = Some(70);
        s.date = None;
        s.studio = Some(studio);
    });
    let file = plex_path(&bed, id);
    bed.plex.with_state(|s| {
        let rk = s.items.values().find(|i| i.files().any(|f| f.file == file)).unwrap().rating_key;
        s.items.remove(&rk);
        s.add_disk_file(&file, 1000, 60_000, None);
    });
    let (daemon, root) = registered(&bed, &[]).await;
    let http = reqwest::Client::new();
    let item: Value = http.get(format!("{root}/library/metadata/{id}")).send().await.unwrap().json().await.unwrap();
    let item = &item["MediaContainer"]["Metadata"][0];
    assert_eq!(item["contentRating"], "XXX", "{item}");
    assert_eq!(item["isAdult"], true);
    assert_eq!(item["rating"], 7.0);
    assert_eq!(item["originallyAvailableAt"], "", "required, empty without a date, as Plex's example: {item}");
    assert!(item.get("year").is_none());
    let images: Value =
        http.get(format!("{root}/library/metadata/{id}/images")).send().await.unwrap().json().await.unwrap();
    assert_eq!(images["MediaContainer"]["Image"], json!([]), "images are uploaded, not fetched by Plex");

    // Plex scans the file, matches it and reads it; then PlexSync uploads
    // the gallery images and the cover into the item, and the collections.
    scan(&bed);
    eventually(Duration::from_secs(30), "the item matched and its images uploaded", || {
        bed.plex.item_by_file(&file).is_some_and(|i| {
            scene_of(&i) == Some(id)
                && i.uploads.len() >= 2
                && !i.tag_names(emulators::plex::TagKind::Collection).is_empty()
        })
    })
    .await;
    let item = bed.plex.item_by_file(&file).unwrap();
    let portrait = bed.stash.with_state(|s| s.images[&s.galleries[&gallery].images[0]].bytes.clone());
    assert!(item.uploads.contains(&emulators::plex::state::content_key(&portrait)), "{:?}", item.uploads);
    let cover = bed.stash.scene(id).unwrap().cover.unwrap();
    assert!(poster_shows(&cover, item.poster.as_ref()), "the cover is uploaded last, so it is shown");
    assert!(bed.plex.agent_log().is_empty(), "{:?}", bed.plex.agent_log());
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

/// Walking ids as an attacker on the LAN would: with `skipUnorganized`,
/// no unorganized scene's metadata, image list or actor photo is served,
/// nor a scene whose files lie outside the path mappings; each answers
/// exactly as an id Stash never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_every_id_opens_only_what_plex_could_show() {
    let bed = Bed::new(30, json!({"reconcileHours": 0, "skipUnorganized": true})).await;
    let ids: Vec<u64> = bed.stash.with_state(|s| s.scenes.keys().copied().collect());
    let organized = |id: u64| bed.stash.scene(id).is_some_and(|s| s.organized);
    assert!(ids.iter().any(|id| !organized(*id)) && ids.iter().any(|id| organized(*id)), "both kinds");
    // One organized scene moves outside the mappings; another's performer
    // gets a photo.
    let mut shown_ids = ids.iter().copied().filter(|id| organized(*id));
    let outside = shown_ids.next().unwrap();
    bed.stash.update_scene(outside, |s| s.files[0].path = "/elsewhere/private/home-video.mp4".into());
    let pictured = shown_ids.find(|id| !bed.stash.scene(*id).unwrap().performers.is_empty()).unwrap();
    let performer = bed.stash.scene(pictured).unwrap().performers[0];
    bed.stash.with_state(|s| {
        s.performers.get_mut(&performer).unwrap().image = Some(emulators::stash::state::fixture_image(5))
    });
    let (daemon, root) = registered(&bed, &[("PLEXSYNC_ACTOR_IMAGES", "true")]).await;
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(path).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let missing = get(format!("{root}/library/metadata/999999")).await;
    assert_eq!(missing.0, 404);
    let max = ids.iter().max().copied().unwrap_or(0) + 5;
    for id in 1..=max {
        let shown = ids.contains(&id) && organized(id) && id != outside;
        for path in [format!("{root}/library/metadata/{id}"), format!("{root}/library/metadata/{id}/images")] {
            let answer = get(path.clone()).await;
            if shown {
                assert_eq!(answer.0, 200, "{path}: {}", answer.1);
            } else {
                assert_eq!(answer, missing, "{path}: answered as a missing scene");
            }
        }
    }
    // An actor photo's URL stops opening once its scene is unorganized.
    let (_, body) = get(format!("{root}/library/metadata/{pictured}")).await;
    let item: Value = serde_json::from_str(&body).unwrap();
    let roles = item["MediaContainer"]["Metadata"][0]["Role"].as_array().cloned().unwrap_or_default();
    let url = roles.iter().find_map(|r| r["thumb"].as_str().map(String::from)).expect("the photo's URL");
    assert_eq!(get(url.clone()).await.0, 200, "{url}");
    bed.stash.update_scene(pictured, |s| s.organized = false);
    let started = std::time::Instant::now();
    while get(url.clone()).await.0 != 404 {
        assert!(started.elapsed() < Duration::from_secs(20), "the photo of an unorganized scene is still served");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_plex_could_not_be_answered_is_a_500_and_plex_is_asked_to_match_again() {
    let bed = Bed::new(8, json!({"reconcileHours": 0, "retryScale": 0.02})).await;
    let (id, other) = (bed.scenes_in_plex()[0], bed.scenes_in_plex()[1]);
    let file = plex_path(&bed, id);
    unscanned(&bed);
    let (daemon, root) = registered(&bed, &[("PLEXSYNC_LOG", "plexsync=debug")]).await;

    // Stash restarts while Plex scans: the match answers from the index,
    // the metadata cannot be read. Plex keeps the scanner's title.
    bed.stash.set_down(true);
    scan(&bed);
    eventually(Duration::from_secs(30), "Plex scanned and asked", || bed.plex.agent_idle()).await;
    let item = bed.plex.item_by_file(&file).unwrap();
    assert!(!item.agent_matched, "no metadata while Stash is down: {:?}", item.guid);
    let log = bed.plex.agent_log();
    assert!(log.iter().any(|l| l.contains("HTTP 500")), "a documented server error: {log:?}");
    assert!(log.iter().all(|l| !l.contains("does not define")), "only documented answers: {log:?}");

    // Stash is back: PlexSync has Plex match the items again.
    bed.stash.set_down(false);
    eventually(Duration::from_secs(60), "the item matched once Stash answered", || {
        bed.plex.item_by_file(&file).is_some_and(|i| i.agent_matched && scene_of(&i) == Some(id))
    })
    .await;
    assert!(daemon.log.lock().unwrap().contains("match their items again"));

    // A Stash that answers too slowly: a 500 in time, never a hung call
    // (once the scene read Plex's scan made is no longer reused).
    tokio::time::sleep(Duration::from_secs(6)).await;
    bed.stash.stall(Duration::from_secs(15));
    let started = std::time::Instant::now();
    let status = reqwest::Client::new().get(format!("{root}/library/metadata/{other}")).send().await.unwrap().status();
    assert_eq!(status, 500);
    assert!(started.elapsed() < Duration::from_secs(15), "answered before Stash did");
    bed.stash.stall(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_photos_on_the_lan_show_only_where_plex_reaches_them_itself() {
    let bed = Bed::new(8, json!({"reconcileHours": 0})).await;
    let id = bed.scenes_in_plex().into_iter().find(|id| !bed.stash.scene(*id).unwrap().performers.is_empty()).unwrap();
    let performer = bed.stash.scene(id).unwrap().performers[0];
    bed.stash.with_state(|s| {
        s.performers.get_mut(&performer).unwrap().image = Some(emulators::stash::state::fixture_image(5))
    });
    let file = plex_path(&bed, id);
    unscanned(&bed);
    let (daemon, _) = registered(&bed, &[("PLEXSYNC_ACTOR_IMAGES", "true")]).await;
    let photo_of = |rk: u64| {
        let item = bed.plex.item(rk).unwrap();
        let roles = item.tags.get(&emulators::plex::TagKind::Actor).cloned().unwrap_or_default();
        roles.iter().find_map(|t| t.thumb.clone())
    };

    // A real Plex: the daemon's address is on the LAN, Plex's cloud refuses it.
    scan(&bed);
    eventually(Duration::from_secs(30), "the item matched", || {
        bed.plex.item_by_file(&file).is_some_and(|i| scene_of(&i) == Some(id))
    })
    .await;
    let rk = bed.plex.item_by_file(&file).unwrap().rating_key;
    let photo = photo_of(rk).expect("the provider names the photo");
    let bare = photo.split('?').next().unwrap().to_string();
    assert!(bed.plex.with_state(|s| s.cloud_refused.contains(&bare)), "refused through the cloud: {photo}");

    // A Plex told it reaches the LAN itself: nothing refused.
    bed.plex.with_state(|s| {
        s.cloud_refused.clear();
        s.lan_images_reachable = true;
    });
    let http = reqwest::Client::new();
    let refresh = bed.plex.url().join(&format!("library/metadata/{rk}/refresh")).unwrap();
    http.put(refresh).header("X-Plex-Token", PLEX_TOKEN).send().await.unwrap();
    eventually(Duration::from_secs(30), "Plex read the item again", || bed.plex.agent_idle()).await;
    assert!(photo_of(rk).is_some());
    assert!(bed.plex.with_state(|s| s.cloud_refused.is_empty()));
    drop(daemon);
}
