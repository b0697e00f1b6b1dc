//! The delivery pipeline end to end, over HTTP against both emulators, with
//! the plugin binary run exactly as Stash runs it.

use std::time::Duration;

use crate::common::Bed;
use emulators::plex::TagKind;
use serde_json::json;

/// Gives scene `id` a full set of new metadata, as a person editing in Stash.
fn edit_everything(bed: &Bed, id: u64) -> (String, String, Vec<String>, Vec<String>) {
    bed.stash.with_state(|s| {
        let studio = s.add_studio("Edited Studio & Co", None);
        let perf = s.add_performer("Zoë Performer");
        let tag_a = s.add_tag("Edited Tag");
        let tag_b = s.add_tag("Second = Tag");
        s.update_scene(id, |sc| {
            sc.title = Some("New Title: Tom & Jerry #1".into());
            sc.details = Some("Line one\nLine two with 100% & more".into());
            sc.studio = Some(studio);
            sc.performers = vec![perf];
            sc.tags = vec![tag_a, tag_b];
            sc.date = Some("2021-03-04".into());
            sc.organized = true;
        });
    });
    (
        "New Title: Tom & Jerry #1".into(),
        "Edited Studio & Co".into(),
        vec!["Zoë Performer".into()],
        vec!["Edited Tag".into(), "Second = Tag".into()],
    )
}

#[tokio::test]
async fn a_stash_edit_reaches_plex_locked_and_an_identical_hook_writes_nothing() {
    let bed = Bed::new(40, json!({})).await;
    let id = bed.scenes_in_plex()[3];
    let (title, studio, performers, tags) = edit_everything(&bed, id);

    let run = bed.update_hook(id).await;
    assert!(!run.failed(), "{run:?}");
    assert!(run.output.unwrap().as_str().unwrap().contains("queued"));
    bed.settle().await;

    let item = bed.item_of(id);
    assert_eq!(item.field("title"), Some(title.as_str()));
    assert_eq!(item.field("summary"), Some("Line one\nLine two with 100% & more"));
    assert_eq!(item.field("studio"), Some(studio.as_str()));
    assert_eq!(item.field("originallyAvailableAt"), Some("2021-03-04"));
    assert_eq!(item.field("year"), Some("2021"));
    assert_eq!(item.tag_names(TagKind::Genre), tags);
    assert_eq!(item.tag_names(TagKind::Actor), performers);
    assert_eq!(item.tag_names(TagKind::Collection), [format!("Site: {studio}")]);
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap_or_default();
    let uploaded = |image: &Option<emulators::plex::Image>| matches!(image, Some(emulators::plex::Image::Upload(_)));
    assert!(uploaded(&item.poster) && uploaded(&item.art), "poster and background copied: {log}");
    for field in [
        "title",
        "summary",
        "studio",
        "originallyAvailableAt",
        "year",
        "genre",
        "actor",
        "collection",
        "thumb",
        "art",
        "contentRating",
    ] {
        assert!(item.locked.contains(field), "{field} locked: {:?}", item.locked);
    }
    assert!(
        bed.plex.requests().iter().all(|r| r.token == emulators::plex::TokenUse::Header),
        "token in the header only"
    );

    bed.plex.clear_requests();
    // A second later, so Stash's screenshot URL (`?t=<updated_at>`) differs
    // while the image does not: the content decides, no upload.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = bed.update_hook(id).await;
    assert!(!again.failed());
    bed.settle().await;
    assert_eq!(bed.plex_writes(), 0, "unchanged scene: {:?}", bed.plex.requests());
    assert!(bed.queue().record(&id.to_string()).unwrap().is_some());
}

#[tokio::test]
async fn two_updates_while_waiting_coalesce_into_one_delivery_of_the_latest() {
    let bed = Bed::new(20, json!({})).await;
    let id = bed.scenes_in_plex()[0];
    // Hold the worker lock so the queued row waits, as during a busy worker.
    let lock = plexsync::pipeline::worker::try_lock(&bed.data_dir()).unwrap().unwrap();
    bed.stash.update_scene(id, |s| s.title = Some("First".into()));
    assert!(!bed.update_hook(id).await.failed());
    bed.stash.update_scene(id, |s| s.title = Some("Second".into()));
    assert!(!bed.update_hook(id).await.failed());
    let stats = bed.queue().stats().unwrap();
    assert_eq!(stats.pending, 1, "one row per scene");
    drop(lock);

    bed.plex.clear_requests();
    let run = bed.task("process_queue").await;
    assert!(!run.failed(), "{run:?}");
    assert_eq!(bed.item_of(id).field("title"), Some("Second"));
    let edits = bed.plex.requests().into_iter().filter(|r| r.method == "PUT").count();
    assert_eq!(edits, 1, "one delivery");
    assert!(!run.progress.is_empty(), "the task reports progress");
}

#[tokio::test]
async fn refresh_mode_refreshes_the_item_holding_the_scenes_file_and_never_a_stale_urls() {
    let bed = Bed::new(20, json!({"syncMode": "refresh"})).await;
    let id = bed.scenes_in_plex()[1];
    let rk = bed.item_of(id).rating_key;
    bed.stash
        .update_scene(id, |s| s.urls = vec!["https://example.com/x".into(), format!("plex/library/metadata/{rk}")]);
    bed.plex.clear_requests();
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    let writes: Vec<_> = bed.plex.requests().into_iter().filter(|r| r.is_write()).collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, "PUT");
    assert_eq!(writes[0].path, format!("/library/metadata/{rk}/refresh"));
    assert_eq!(bed.plex.item(rk).unwrap().refreshes, 1);

    // No Plex URL: the matcher finds the item by its file.
    let other = bed.scenes_in_plex()[2];
    bed.stash.update_scene(other, |s| s.urls.clear());
    let other_rk = bed.item_of(other).rating_key;
    assert!(!bed.update_hook(other).await.failed());
    bed.settle().await;
    assert_eq!(bed.plex.item(other_rk).unwrap().refreshes, 1);

    // A URL naming another video (a rebuilt library, another server):
    // that video is never refreshed, the scene's own item is.
    let third = bed.scenes_in_plex()[3];
    let third_rk = bed.item_of(third).rating_key;
    bed.stash.update_scene(third, |s| s.urls = vec![format!("plex/library/metadata/{rk}")]);
    bed.plex.clear_requests();
    assert!(!bed.update_hook(third).await.failed());
    bed.settle().await;
    // (Earlier scenes may be delivered again meanwhile: a same-second edit.)
    let writes: Vec<String> = bed.plex.requests().into_iter().filter(|r| r.is_write()).map(|r| r.path).collect();
    assert!(writes.contains(&format!("/library/metadata/{third_rk}/refresh")), "{writes:?}");
    assert_eq!(bed.queue().rating_keys(&third.to_string()).unwrap(), [third_rk.to_string()]);
}

#[tokio::test]
async fn skip_unorganized_skips_until_the_scene_is_organized() {
    let bed = Bed::new(20, json!({"skipUnorganized": true})).await;
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| {
        s.organized = false;
        s.title = Some("Not yet".into());
    });
    bed.plex.clear_requests();
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert_eq!(bed.plex_writes(), 0);
    assert_ne!(bed.item_of(id).field("title"), Some("Not yet"));
    bed.stash.update_scene(id, |s| s.organized = true);
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("title"), Some("Not yet"));
}

#[tokio::test]
async fn skip_unorganized_defaults_on_as_in_the_old_plugin() {
    let bed = Bed::new(10, json!({})).await;
    // Remove the test bed's explicit setting: the old default applies.
    bed.stash.with_state(|s| {
        s.plugins["PlexSync"].as_object_mut().unwrap().remove("skipUnorganized");
    });
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| {
        s.organized = false;
        s.title = Some("Unorganized".into());
    });
    bed.plex.clear_requests();
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert_eq!(bed.plex_writes(), 0);
}

#[tokio::test]
async fn clean_titles_rewrites_the_stash_title_and_converges() {
    let bed = Bed::new(20, json!({"cleanTitles": true})).await;
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| s.title = Some("  @Café Night Mp4".into()));
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert_eq!(bed.stash.scene(id).unwrap().title.as_deref(), Some("Cafe Night"));
    assert_eq!(bed.item_of(id).field("title"), Some("Cafe Night"));
    let muts = bed.stash.mutations();
    assert_eq!(muts.len(), 1);
    assert_eq!(muts[0].input_fields, ["id", "title"]);

    // Stash fires a hook for our own write: it is not dropped, and it ends
    // with no Stash write and no Plex write.
    bed.plex.clear_requests();
    assert!(!bed.hook(id, "Scene.Update.Post", &["id", "title"]).await.failed());
    bed.settle().await;
    assert_eq!(bed.stash.mutations().len(), 1);
    assert_eq!(bed.plex_writes(), 0);

    // A person's later edit of the same field is delivered (the old guard dropped such edits).
    bed.stash.update_scene(id, |s| s.title = Some("Person Edit".into()));
    assert!(!bed.hook(id, "Scene.Update.Post", &["id", "title"]).await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("title"), Some("Person Edit"));
}

#[tokio::test]
async fn tag_stash_ids_tags_scenes_by_endpoint() {
    let bed = Bed::new(20, json!({})).await;
    let (stashdb_tag, empty_tag) = bed.stash.with_state(|s| (s.add_tag("StashDB"), s.add_tag("No StashID")));
    bed.configure(json!({"tagStashIDs": true, "tagID_stashdb": stashdb_tag.to_string(), "tagID_emptystashid": empty_tag.to_string()}));
    let ids = bed.scenes_in_plex();
    let (matched, unmatched) = (ids[0], ids[1]);
    bed.stash.update_scene(matched, |s| s.stash_ids = vec![("https://stashdb.org/graphql".into(), "abc".into())]);
    assert!(!bed.update_hook(matched).await.failed());
    assert!(!bed.update_hook(unmatched).await.failed());
    bed.settle().await;
    let m = bed.stash.scene(matched).unwrap();
    assert!(m.tags.contains(&stashdb_tag) && !m.tags.contains(&empty_tag));
    let u = bed.stash.scene(unmatched).unwrap();
    assert!(u.tags.contains(&empty_tag) && !u.tags.contains(&stashdb_tag));
    assert!(bed.item_of(matched).tag_names(TagKind::Genre).contains(&"StashDB"), "the new tag reached Plex too");
    assert!(bed.stash.mutations().iter().all(|m| m.operation == "bulkSceneUpdate"));
}

#[tokio::test]
async fn a_field_dropped_from_sync_fields_is_unlocked_not_cleared() {
    let bed = Bed::new(20, json!({})).await;
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| s.details = Some("A summary".into()));
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert!(bed.item_of(id).locked.contains("summary"));
    bed.configure(json!({"syncFields": "title, genres"}));
    bed.stash.update_scene(id, |s| s.details = Some("Changed but not owned".into()));
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    let item = bed.item_of(id);
    assert_eq!(item.field("summary"), Some("A summary"), "kept");
    assert!(!item.locked.contains("summary"), "unlocked");
    assert!(item.locked.contains("title"));
}

#[tokio::test]
async fn preserve_plex_edits_keeps_what_a_person_edited_in_plex() {
    let bed = Bed::new(20, json!({"preservePlexEdits": true})).await;
    let id = bed.scenes_in_plex()[0];
    let rk = bed.item_of(id).rating_key;
    // A person edits the summary in Plex Web, which locks it; the title
    // is Plex's own (from the file name), unlocked.
    bed.plex.with_state(|s| {
        let mut item = s.items.get_mut(&rk).unwrap();
        item.fields.insert("summary".into(), "Written in Plex".into());
        item.locked.insert("summary".into());
    });
    bed.stash.update_scene(id, |s| {
        s.details = Some("From Stash".into());
        s.title = Some("Stash Title".into());
    });
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    let item = bed.item_of(id);
    assert_eq!(item.field("summary"), Some("Written in Plex"), "a person's edit is kept");
    assert_eq!(item.field("title"), Some("Stash Title"), "Plex's own title is replaced");
    assert!(!item.tag_names(TagKind::Collection).is_empty() || bed.stash.scene(id).unwrap().studio.is_none());
}

#[tokio::test]
async fn destroy_hook_forgets_the_scene() {
    let bed = Bed::new(10, json!({})).await;
    let id = bed.scenes_in_plex()[0];
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert!(bed.queue().record(&id.to_string()).unwrap().is_some());
    assert!(bed.stash.destroy_scene(id).await);
    let run = bed.stash.hook_runs().into_iter().rfind(|r| r.hook_type == "Scene.Destroy.Post").unwrap().run;
    assert!(!run.failed(), "{run:?}");
    assert!(bed.queue().record(&id.to_string()).unwrap().is_none());
}

#[tokio::test]
async fn sync_all_task_queues_everything_and_the_worker_delivers_it() {
    let bed = Bed::new(60, json!({})).await;
    let run = bed.task("sync_all").await;
    assert!(!run.failed(), "{run:?}");
    let msg = run.output.unwrap()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("handed to the background worker"), "{msg}");
    bed.settle().await;
    let in_plex = bed.scenes_in_plex();
    for id in &in_plex {
        let title = bed.stash.scene(*id).unwrap().title.unwrap();
        assert_eq!(bed.item_of(*id).field("title"), Some(title.as_str()), "scene {id}");
    }
    let status = bed.task("queue_status").await;
    let out = status.output.unwrap();
    assert_eq!(out["queue"]["synced"], in_plex.len());
    assert_eq!(out["queue"]["pending"], 60 - in_plex.len(), "scenes Plex lacks wait");
    assert_eq!(out["failing"][0]["error_class"], "not_in_plex");

    let health = bed.task("health_check").await;
    assert!(!health.failed(), "{health:?}");
    assert_eq!(health.output.unwrap()["libraries"], json!(["Movies"]));
    let cleared = bed.task("clear_queue").await;
    assert_eq!(cleared.output.unwrap()["removed"], 60 - in_plex.len());
}

#[tokio::test]
async fn an_unchanged_resync_costs_stash_a_read_per_claimed_batch_not_per_scene() {
    let bed = Bed::new(200, json!({})).await;
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let before = bed.stash.request_count();
    bed.plex.clear_requests();
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let asked = bed.stash.request_count() - before;
    eprintln!("an unchanged re-sync of 200 scenes: {asked} Stash requests (the tasks' own included)");
    assert!(asked <= 40, "{asked} Stash requests for 200 unchanged scenes");
    assert_eq!(bed.plex_writes(), 0, "nothing changed, nothing written");
}

/// Reads of items (`GET /library/metadata/<keys>`, one or many keys) and
/// edits among the Plex requests so far.
fn item_reads_and_edits(bed: &Bed) -> (Vec<String>, usize) {
    let requests = bed.plex.requests();
    let reads = requests
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.path.strip_prefix("/library/metadata/"))
        .filter(|keys| !keys.contains('/'))
        .map(str::to_string)
        .collect();
    let edits = requests.iter().filter(|r| r.method == "PUT" && r.path.ends_with("/all")).count();
    (reads, edits)
}

/// The read before each write (the check that the item still holds the
/// scene's file) is shared: a first sync reads its items a hundred at a
/// time, and a re-sync that finds a few scattered changes reads their
/// items in one request, not one each.
#[tokio::test]
async fn the_reads_before_writes_are_shared_by_many_deliveries() {
    let bed = Bed::new(240, json!({})).await;
    bed.plex.clear_requests();
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let in_plex = bed.scenes_in_plex();
    let (reads, edits) = item_reads_and_edits(&bed);
    eprintln!("first sync of {} items: {} item reads, {edits} edits", in_plex.len(), reads.len());
    assert_eq!(edits, in_plex.len(), "one edit per item");
    let keys: usize = reads.iter().map(|r| r.split(',').count()).sum();
    assert!(keys >= in_plex.len(), "every item was read before its write: {keys} keys read");
    assert!(reads.len() <= in_plex.len().div_ceil(100) + 3, "{} reads: {reads:?}", reads.len());

    let edited: Vec<u64> = in_plex.iter().copied().step_by(40).collect();
    for &id in &edited {
        bed.stash.update_scene(id, |s| s.details = Some(format!("Edited later, scene {id}")));
    }
    bed.plex.clear_requests();
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let (reads, edits) = item_reads_and_edits(&bed);
    assert_eq!(edits, edited.len(), "the edited scenes only");
    assert_eq!(reads.len(), 1, "{} edited scenes among {}: {reads:?}", edited.len(), in_plex.len());
    for id in edited {
        assert_eq!(bed.item_of(id).field("summary"), Some(format!("Edited later, scene {id}").as_str()));
    }
}

#[tokio::test]
async fn hooks_return_before_delivery_and_leave_no_pipe_open() {
    let bed = Bed::new(10, json!({})).await;
    // Slow Plex: delivery takes long, the hook must not.
    bed.plex.faults(|f| f.config.latency_ms = 1_500);
    let id = bed.scenes_in_plex()[0];
    let run = bed.update_hook(id).await;
    assert!(!run.failed());
    // Returned before delivery: the row still waits (a delivery takes
    // Plex's 1.5 s at least). How fast a hook answers is measured by the
    // startup benchmark, not asserted here.
    assert!(bed.queue().is_pending(&id.to_string()).unwrap(), "the hook returned after delivery ({:?})", run.elapsed);
    let started = std::time::Instant::now();
    while !plexsync::pipeline::worker::is_running(&bed.data_dir()) {
        assert!(started.elapsed() < Duration::from_secs(5), "a worker was started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bed.plex.heal();
    bed.settle().await;
    assert_eq!(bed.queue().stats().unwrap().pending, 0);
}

#[tokio::test]
async fn missing_settings_keep_the_queue_and_say_what_to_fix() {
    let bed = Bed::new(10, json!({})).await;
    bed.stash.set_plugin_settings("PlexSync", json!({"skipUnorganized": false}));
    let id = bed.scenes_in_plex()[0];
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    let stats = bed.queue().stats().unwrap();
    assert_eq!(stats.pending, 1, "kept");
    assert_eq!(stats.by_class.get("config"), Some(&1));
    let log = std::fs::read_to_string(bed.data_dir().join("worker.log")).unwrap();
    assert!(log.contains("set plexUrl"), "{log}");
    let health = bed.task("health_check").await;
    assert!(health.failed());
    assert!(health.error.unwrap().contains("plexUrl"));
}

#[tokio::test]
async fn committed_manifest_matches_the_settings_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugin/PlexSync.yml");
    let committed = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        committed,
        plexsync::faces::plugin::manifest(),
        "regenerate with `plexsync manifest > plugin/PlexSync.yml`"
    );
    for key in ["plexHost", "plexPort", "plexToken", "skipUnorganized", "cleanTitles", "tagStashIDs", "tagID_stashdb"] {
        assert!(committed.contains(&format!("  {key}:\n")), "old setting {key} kept");
    }
}

#[tokio::test]
async fn a_new_worker_reuses_the_stored_library_index() {
    let bed = Bed::new(300, json!({"workerIdleSecs": 0.2})).await;
    let ids = bed.scenes_in_plex();
    assert!(!bed.update_hook(ids[0]).await.failed());
    bed.settle().await;
    let full_reads = |bed: &Bed| {
        bed.plex
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/library/sections/1/all" && r.param("addedAt>>").is_none())
            .count()
    };
    assert!(full_reads(&bed) >= 1, "the first worker read the library");
    // Wait for that worker to exit, so the next hook starts a new process.
    while plexsync::pipeline::worker::is_running(&bed.data_dir()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bed.plex.clear_requests();
    bed.stash.update_scene(ids[1], |s| s.title = Some("Second Process".into()));
    assert!(!bed.update_hook(ids[1]).await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(ids[1]).field("title"), Some("Second Process"));
    assert_eq!(full_reads(&bed), 0, "no full library read: {:?}", bed.plex.requests());
}
