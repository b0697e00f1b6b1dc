//! Scenarios of things people do in Stash that change what Plex shows,
//! driven as Stash drives them: the plugin installed from its manifest,
//! mutations over GraphQL that fire Stash's hooks (or none, where Stash
//! fires none), and no task run by hand afterwards. After each, every
//! affected Plex item shows what Stash has, and no other item was written.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::{eventually, Bed};
use emulators::plex::{Image, Item, TagKind};
use emulators::stash::state::fixture_image;
use serde_json::json;

/// Fast retries and `skipUnorganized` at its default (on), as a person has
/// it. No partial scans: a scene Plex lacks stays out of Plex, so every
/// write seen during a scenario belongs to the scenario.
fn settings() -> serde_json::Value {
    json!({"retryScale": 0.02, "drainPerSec": 1000, "partialScan": false, "skipUnorganized": true})
}

/// What Plex shows of `scene` that differs from Stash (title, summary,
/// studio, genres, actors, collections as StashPlexAgent's defaults make
/// them, poster).
fn differences(bed: &Bed, scene: u64, item: &Item) -> Vec<String> {
    let (s, studio, parent, performers, tags) = bed.stash.with_state(|st| {
        let s = st.scenes[&scene].clone();
        let studio = s.studio.and_then(|id| st.studios.get(&id)).cloned();
        let parent = studio.as_ref().and_then(|x| x.parent).and_then(|p| st.studios.get(&p)).map(|p| p.name.clone());
        let names = |ids: &[u64], of: &dyn Fn(u64) -> Option<String>| -> BTreeSet<String> {
            ids.iter().filter_map(|id| of(*id)).map(|n| n.to_lowercase()).collect()
        };
        let performers = names(&s.performers, &|id| st.performers.get(&id).map(|p| p.name.clone()));
        let tags = names(&s.tags, &|id| st.tags.get(&id).map(|t| t.name.clone()));
        (s, studio.map(|x| x.name), parent, performers, tags)
    });
    let set = |kind| item.tag_names(kind).iter().map(|n| n.to_lowercase()).collect::<BTreeSet<_>>();
    let mut collections: BTreeSet<String> = studio.iter().map(|n| format!("site: {}", n.to_lowercase())).collect();
    collections.extend(parent.iter().map(|n| format!("studio: {}", n.to_lowercase())));
    let poster = match (&s.cover, &item.poster) {
        // The same bytes, a JPEG of a JPEG XL cover, Plex's frame for an AVIF one.
        (Some(cover), poster) => emulators::stash::state::poster_shows(cover, poster.as_ref()),
        // No cover in Stash: Plex keeps the frame it extracted (or its agent's image).
        (None, Some(Image::Frame | Image::Url(_))) => true,
        _ => false,
    };
    let checks = [
        ("title", item.field("title") == s.title.as_deref()),
        ("summary", item.field("summary").unwrap_or("") == s.details.as_deref().unwrap_or("")),
        ("studio", item.field("studio") == studio.as_deref()),
        ("genres", set(TagKind::Genre) == tags),
        ("actors", set(TagKind::Actor) == performers),
        ("collections", set(TagKind::Collection) == collections),
        ("poster", poster),
    ];
    checks.iter().filter(|(_, ok)| !ok).map(|(name, _)| format!("scene {scene}: {name}")).collect()
}

/// Every Plex item, to compare before and after.
fn snapshot(bed: &Bed) -> BTreeMap<u64, Item> {
    bed.plex.with_state(|s| s.items.clone())
}

/// The ratingKeys PlexSync wrote to (edits, uploads, refreshes).
fn written_items(bed: &Bed) -> BTreeSet<u64> {
    bed.plex
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .flat_map(|r| {
            let from_path = r.path.split("/metadata/").nth(1).and_then(|rest| rest.split('/').next());
            let ids = r.param("id").or(from_path).unwrap_or("");
            ids.split(',').filter_map(|id| id.parse().ok()).collect::<Vec<u64>>()
        })
        .collect()
}

/// Waits until every scene of `affected` shows what Stash has, then checks
/// that only their items were written and every other item is unchanged.
async fn converges(bed: &Bed, affected: &[u64], before: &BTreeMap<u64, Item>, what: &str) {
    let wrong = || -> Vec<String> { affected.iter().flat_map(|id| differences(bed, *id, &bed.item_of(*id))).collect() };
    let limit = Duration::from_secs(60);
    let started = std::time::Instant::now();
    while !wrong().is_empty() {
        assert!(started.elapsed() < limit, "{what}: not converged within {limit:?}: {:?}", wrong());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bed.settle().await;
    assert!(wrong().is_empty(), "{what}: stays converged: {:?}", wrong());
    let mine: BTreeSet<u64> = affected.iter().map(|id| bed.item_of(*id).rating_key).collect();
    let stray: Vec<u64> = written_items(bed).difference(&mine).copied().collect();
    assert!(stray.is_empty(), "{what}: items written that show none of the change: {stray:?}");
    let after = snapshot(bed);
    for (rk, item) in before.iter().filter(|(rk, _)| !mine.contains(rk)) {
        assert_eq!(Some(item), after.get(rk), "{what}: item {rk} changed");
    }
}

/// Syncs every scene and returns those that were delivered (in Plex,
/// organized, matched), with the items as they are now.
async fn synced(bed: &Bed) -> (Vec<u64>, BTreeMap<u64, Item>) {
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let queue = bed.queue();
    let delivered: Vec<u64> =
        bed.scenes_in_plex().into_iter().filter(|id| queue.record(&id.to_string()).unwrap().is_some()).collect();
    bed.plex.clear_requests();
    (delivered, snapshot(bed))
}

/// Scenes (among `of`) that have `object` per `list`.
fn showing(bed: &Bed, of: &[u64], list: fn(&emulators::stash::StashScene) -> Vec<u64>, object: u64) -> Vec<u64> {
    of.iter().copied().filter(|id| list(&bed.stash.scene(*id).unwrap()).contains(&object)).collect()
}

#[tokio::test]
async fn scenario_rename_a_performer_used_by_300_scenes() {
    let bed = Bed::new(360, settings()).await;
    let star = bed.stash.with_state(|s| s.add_performer("Popular Person"));
    for id in bed.scenes_in_plex().into_iter().take(310) {
        bed.stash.with_state(|s| {
            let mut scene = s.scenes.get_mut(&id).unwrap();
            scene.performers.push(star);
            scene.organized = true;
        });
    }
    let (delivered, before) = synced(&bed).await;
    let affected = showing(&bed, &delivered, |s| s.performers.clone(), star);
    assert!(affected.len() >= 300, "the 310 were delivered but for duplicates: {}", affected.len());

    let q = "mutation($i: ID!) { performerUpdate(input: {id: $i, name: \"Renamed Star\"}) { id } }";
    bed.graphql(q, json!({"i": star.to_string()})).await;
    converges(&bed, &affected, &before, "performer renamed").await;
    let edits = bed.plex.requests().iter().filter(|r| r.is_write()).count();
    assert_eq!(edits, affected.len(), "one edit per scene, no image upload");
}

#[tokio::test]
async fn scenario_merge_two_tags() {
    let bed = Bed::new(60, settings()).await;
    let (a, b) = bed.stash.with_state(|s| (s.add_tag("Open Air Shoot"), s.add_tag("Open-Air Shoots")));
    for (i, id) in bed.scenes_in_plex().into_iter().take(30).enumerate() {
        // A third has each tag, a third both.
        let tags = [vec![a], vec![b], vec![a, b]][i % 3].clone();
        bed.stash.with_state(|s| s.scenes.get_mut(&id).unwrap().tags.extend(tags));
    }
    let (delivered, before) = synced(&bed).await;
    let mut affected = showing(&bed, &delivered, |s| s.tags.clone(), a);
    affected.extend(showing(&bed, &delivered, |s| s.tags.clone(), b));
    affected.sort();
    affected.dedup();

    let q = "mutation($s: [ID!]!, $d: ID!) { tagsMerge(input: {source: $s, destination: $d}) { id } }";
    bed.graphql(q, json!({"s": [a.to_string()], "d": b.to_string()})).await;
    converges(&bed, &affected, &before, "tags merged").await;
    for id in &affected {
        let genres: Vec<String> = bed.item_of(*id).tag_names(TagKind::Genre).iter().map(|g| g.to_string()).collect();
        assert!(!genres.contains(&"Open Air Shoot".to_string()), "scene {id}: {genres:?}");
    }
}

#[tokio::test]
async fn scenario_reparent_a_studio() {
    let bed = Bed::new(60, settings()).await;
    let (delivered, before) = synced(&bed).await;
    let studio = delivered.iter().find_map(|id| bed.stash.scene(*id).unwrap().studio).expect("a studio");
    let affected = showing(&bed, &delivered, |s| s.studio.into_iter().collect(), studio);
    let parent = bed.stash.with_state(|s| s.add_studio("Brand New Network", None));

    let q = "mutation($i: ID!, $p: ID) { studioUpdate(input: {id: $i, parent_id: $p}) { id } }";
    bed.graphql(q, json!({"i": studio.to_string(), "p": parent.to_string()})).await;
    converges(&bed, &affected, &before, "studio re-parented").await;
}

#[tokio::test]
async fn scenario_delete_a_tag() {
    let bed = Bed::new(60, settings()).await;
    let (delivered, before) = synced(&bed).await;
    let tag = delivered.iter().find_map(|id| bed.stash.scene(*id).unwrap().tags.first().copied()).expect("a tag");
    let affected = showing(&bed, &delivered, |s| s.tags.clone(), tag);
    let name = bed.stash.with_state(|s| s.tags[&tag].name.clone());

    let q = "mutation($i: ID!) { tagDestroy(input: {id: $i}) }";
    bed.graphql(q, json!({"i": tag.to_string()})).await;
    converges(&bed, &affected, &before, "tag deleted").await;
    assert!(affected.iter().all(|id| !bed.item_of(*id).tag_names(TagKind::Genre).contains(&name.as_str())));
}

/// What happens to a new scene after a scan, in some order.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The generate task makes the cover: no hook.
    Cover,
    /// Identify fills the metadata (Scene.Update.Post with the fields).
    Identify,
    /// A person ticks "organized" (Scene.Update.Post).
    Organize,
}

const ORDERS: [[Step; 3]; 6] = {
    use Step::*;
    [
        [Cover, Identify, Organize],
        [Cover, Organize, Identify],
        [Identify, Cover, Organize],
        [Identify, Organize, Cover],
        [Organize, Cover, Identify],
        [Organize, Identify, Cover],
    ]
};

#[tokio::test]
async fn scenario_a_scan_of_200_scenes_then_cover_identify_and_organize_in_every_order() {
    let bed = Bed::new(20, settings()).await;
    let (_, before) = synced(&bed).await;
    let (tag, performer, studio) = bed.stash.with_state(|s| {
        (s.add_tag("Identified Genre"), s.add_performer("Identified Person"), s.add_studio("Identified Studio", None))
    });
    let section = bed.plex.with_state(|s| s.sections[0].key);
    let files: Vec<Vec<(String, u64, f64)>> =
        (0..200).map(|i| vec![(format!("{}/Scanned/new {i}.mp4", bed.lib.stash_prefix), 10_000 + i, 60.0)]).collect();
    bed.plex.with_state(|s| {
        for f in &files {
            let plex = f[0].0.replacen(&bed.lib.stash_prefix, &bed.lib.plex_prefix, 1);
            s.add_item(section, &[(plex, f[0].1, 60_000)]);
        }
    });
    let ids = bed.stash.scan_new(&files).await;
    for round in [0, 1, 2] {
        for (i, id) in ids.iter().enumerate() {
            match ORDERS[i % ORDERS.len()][round] {
                Step::Cover => assert!(bed.stash.generate_cover(*id, fixture_image(*id))),
                Step::Identify => assert!(
                    bed.stash
                        .edit_scene(*id, &["title", "details", "tag_ids", "performer_ids", "studio_id"], |s| {
                            s.title = Some(format!("Identified {i}"));
                            s.details = Some(format!("Found by identify, scene {i}."));
                            s.tags = vec![tag];
                            s.performers = vec![performer];
                            s.studio = Some(studio);
                        })
                        .await
                ),
                Step::Organize => assert!(bed.stash.edit_scene(*id, &["organized"], |s| s.organized = true).await),
            }
        }
        // Each step is a separate job in Stash: PlexSync delivers what
        // the scene is between them.
        bed.settle().await;
    }
    converges(&bed, &ids, &before, "scanned, covered, identified, organized").await;
    let uploads: Vec<_> = bed.plex.requests().into_iter().filter(|r| r.path.ends_with("/posters")).collect();
    assert_eq!(uploads.len(), ids.len(), "one poster per scene, the final cover, never Stash's stand-in");
}

#[tokio::test]
async fn scenario_a_scene_whose_two_files_are_two_plex_items() {
    let bed = Bed::new(10, settings()).await;
    let (_, before) = synced(&bed).await;
    let section = bed.plex.with_state(|s| s.sections[0].key);
    let stash_path = |name: &str| format!("{}/Split/{name}", bed.lib.stash_prefix);
    let plex_path = |name: &str| format!("{}/Split/{name}", bed.lib.plex_prefix);
    let (one, two) = bed.plex.with_state(|s| {
        (
            s.add_item(section, &[(plex_path("part 1.mp4"), 111, 60_000)]),
            s.add_item(section, &[(plex_path("part 2.mp4"), 222, 60_000)]),
        )
    });
    // One file whose name and size are two items elsewhere: ambiguous.
    let (dup_a, dup_b) = bed.plex.with_state(|s| {
        (
            s.add_item(section, &[(format!("{}/A/same.mp4", bed.lib.plex_prefix), 333, 60_000)]),
            s.add_item(section, &[(format!("{}/B/same.mp4", bed.lib.plex_prefix), 333, 60_000)]),
        )
    });
    let files = [
        vec![(stash_path("part 1.mp4"), 111, 60.0), (stash_path("part 2.mp4"), 222, 60.0)],
        vec![(format!("{}/Elsewhere/same.mp4", bed.lib.stash_prefix), 333, 60.0)],
    ];
    let ids = bed.stash.scan_new(&files).await;
    let (split, ambiguous) = (ids[0], ids[1]);
    for id in [split, ambiguous] {
        let edited = bed
            .stash
            .edit_scene(id, &["title", "organized"], |s| {
                s.title = Some(format!("Scene {id}"));
                s.organized = true;
            })
            .await;
        assert!(edited);
    }
    let titled = |rk: u64| bed.plex.item(rk).unwrap().field("title").map(str::to_string);
    eventually(Duration::from_secs(30), "both items of the split scene", || {
        [one, two].iter().all(|rk| titled(*rk) == Some(format!("Scene {split}")))
    })
    .await;
    eventually(Duration::from_secs(30), "the other scene waits as ambiguous", || {
        bed.queue().stats().unwrap().by_class.get("ambiguous") == Some(&1)
    })
    .await;
    bed.settle().await;
    let records = bed.queue().records(&split.to_string()).unwrap();
    let keys: BTreeSet<String> = records.iter().map(|r| r.rating_key.clone()).collect();
    assert_eq!(keys, BTreeSet::from([one.to_string(), two.to_string()]), "both items recorded");
    let written = written_items(&bed);
    assert_eq!(written, BTreeSet::from([one, two]), "nothing written for the ambiguous file");
    assert_eq!(before, snapshot(&bed).into_iter().filter(|(rk, _)| before.contains_key(rk)).collect());
    for rk in [dup_a, dup_b] {
        assert!(!titled(rk).unwrap().starts_with("Scene"), "item {rk} untouched");
    }

    let explained = bed.task_with("explain", json!({"scene_id": split.to_string()})).await.output.unwrap();
    let trace = explained["trace"].to_string();
    assert!(trace.contains(&format!("decision: items {one}, {two}")), "{trace}");
    let explained = bed.task_with("explain", json!({"scene_id": ambiguous.to_string()})).await.output.unwrap();
    let trace = explained["trace"].to_string();
    assert!(trace.contains("decision: ambiguous") && trace.contains("one of the scene's files"), "{trace}");
}
