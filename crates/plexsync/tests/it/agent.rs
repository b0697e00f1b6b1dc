//! What StashPlexAgent wrote, PlexSync writes: its preferences by their own
//! names, the content rating a managed user is restricted by, ratings,
//! the collections it made (and none of a person's removed), gates and
//! the Plex link on the scene.

use std::time::Duration;

use serde_json::json;

use crate::common::{eventually, Bed};

/// Both answers a real server may give to an indexed tag edit.
const TAG_SEMANTICS: [bool; 2] = [false, true];

fn collections(bed: &Bed, scene: u64) -> Vec<String> {
    let item = bed.item_of(scene);
    let mut names: Vec<String> =
        item.tag_names(emulators::plex::TagKind::Collection).into_iter().map(str::to_string).collect();
    names.sort();
    names
}

/// A scene in Plex whose studio has a parent studio, with a rating.
fn rated_scene_with_parent_studio(bed: &Bed) -> u64 {
    let id = bed
        .scenes_in_plex()
        .into_iter()
        .find(|id| {
            bed.stash.with_state(|s| {
                s.scenes[id].studio.is_some_and(|st| s.studios[&st].parent.is_some())
                    && !s.scenes[id].performers.is_empty()
            })
        })
        .expect("the sample library has a scene with a parent studio and performers");
    bed.stash.update_scene(id, |s| s.rating100 = Some(85));
    id
}

/// How many items the managed user `child-token` sees in section 1.
async fn managed_user_sees(bed: &Bed) -> usize {
    let url = bed.plex.url().join("library/sections/1/all?type=1").unwrap();
    let answer: serde_json::Value = reqwest::Client::new()
        .get(url)
        .header("X-Plex-Token", "child-token")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["MediaContainer"]["Metadata"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_first_sync_writes_the_agents_library_and_a_managed_user_sees_none_of_it() {
    let bed = Bed::new(20, json!({})).await;
    bed.plex.add_managed_user("child-token", &["G", "PG"]);
    assert!(managed_user_sees(&bed).await > 0, "unrated items are shown to a managed user");

    let id = rated_scene_with_parent_studio(&bed);
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;

    let item = bed.item_of(id);
    let (studio, parent) = bed.stash.with_state(|s| {
        let st = &s.studios[&s.scenes[&id].studio.unwrap()];
        (st.name.clone(), s.studios[&st.parent.unwrap()].name.clone())
    });
    assert_eq!(collections(&bed, id), [format!("Site: {studio}"), format!("Studio: {parent}")]);
    assert_eq!(item.field("contentRating"), Some("XXX"));
    assert_eq!(item.field("rating"), Some("8.5"));
    assert!(item.locked.contains("contentRating") && item.locked.contains("rating"));
    assert_eq!(item.user_rating, None, "the user rating needs SaveUserRatings");

    // Every synced item is XXX: the managed user sees none of the library
    // (the sample's missing scenes never reach Plex, so nothing is left).
    let synced = bed.scenes_in_plex();
    assert!(synced.iter().all(|s| bed.item_of(*s).field("contentRating") == Some("XXX")));
    assert_eq!(managed_user_sees(&bed).await, 0);
    let rk = item.rating_key;
    let direct = reqwest::Client::new()
        .get(bed.plex.url().join(&format!("library/metadata/{rk}")).unwrap())
        .header("X-Plex-Token", "child-token")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 404);
}

#[tokio::test]
async fn an_empty_content_rating_leaves_plexs_field_alone() {
    let bed = Bed::new(10, json!({"contentRating": ""})).await;
    let id = bed.scenes_in_plex()[0];
    let rk = bed.item_of(id).rating_key;
    bed.plex.with_state(|s| s.items.get_mut(&rk).unwrap().fields.insert("contentRating".into(), "R".into()));
    assert!(!bed.edit_hook(id, "new details").await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("contentRating"), Some("R"));
}

#[tokio::test]
async fn every_collection_option_and_a_persons_own_collections_under_both_tag_semantics() {
    for add in TAG_SEMANTICS {
        let bed = Bed::new(
            20,
            json!({
                "AddOrganizedCollectionTag": true, "OrganizedCollectionTagName": "Done",
                "CreateMovieCollectionTags": true, "CreatePerformerCollectionTags": true,
                "CreateRatingTags": true, "CreateAllTagCollectionTags": true,
                "PrefixPerformerCollectionTags": "Performer: ",
            }),
        )
        .await;
        bed.plex.with_state(|s| s.tag_edits_add = add);
        let id = rated_scene_with_parent_studio(&bed);
        bed.stash.update_scene(id, |s| s.organized = true);
        let group = bed.stash.with_state(|s| s.add_group("Beach Series"));
        bed.stash.update_scene(id, |s| s.groups = vec![group]);
        // A person's own collection, made in Plex before the switch.
        let rk = bed.item_of(id).rating_key;
        bed.plex.with_state(|s| {
            let tag = emulators::plex::state::Tag { id: 999_999, tag: "Favourites".into(), role: None, thumb: None };
            s.items.get_mut(&rk).unwrap().tags.entry(emulators::plex::TagKind::Collection).or_default().push(tag);
        });
        assert!(!bed.edit_hook(id, "first").await.failed());
        bed.settle().await;

        let (performers, tags) = bed.stash.with_state(|s| {
            let sc = &s.scenes[&id];
            let p: Vec<String> = sc.performers.iter().map(|p| format!("Performer: {}", s.performers[p].name)).collect();
            let t: Vec<String> = sc.tags.iter().map(|t| s.tags[t].name.clone()).collect();
            (p, t)
        });
        let have = collections(&bed, id);
        for want in ["Done", "Rating: 8 Stars", "Movie: Beach Series", "Favourites"] {
            assert!(have.contains(&want.to_string()), "add={add}: {want} missing from {have:?}");
        }
        for want in performers.iter().chain(&tags) {
            assert!(have.contains(want), "add={add}: {want} missing from {have:?}");
        }
        assert!(have.iter().any(|c| c.starts_with("Site: ")) && have.iter().any(|c| c.starts_with("Studio: ")));

        // The scene leaves its group and loses its rating and performers:
        // their collections go, the person's stays.
        bed.stash.update_scene(id, |s| {
            s.groups.clear();
            s.rating100 = None;
            s.performers.clear();
        });
        assert!(!bed.edit_hook(id, "second").await.failed());
        bed.settle().await;
        let have = collections(&bed, id);
        assert!(have.contains(&"Favourites".to_string()), "add={add}: {have:?}");
        for gone in performers.iter().map(String::as_str).chain(["Rating: 8 Stars", "Movie: Beach Series"]) {
            assert!(!have.iter().any(|c| c == gone), "add={add}: {gone} still in {have:?}");
        }
        assert_eq!(bed.item_of(id).field("rating"), None, "a cleared rating is cleared in Plex");
    }
}

#[tokio::test]
async fn user_ratings_follow_stash_and_cost_nothing_when_unchanged() {
    let bed = Bed::new(10, json!({"SaveUserRatings": true})).await;
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| s.rating100 = Some(60));
    assert!(!bed.edit_hook(id, "rated").await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).user_rating, Some(6.0));

    let rates = |bed: &Bed| bed.plex.requests().iter().filter(|r| r.path == "/:/rate").count();
    bed.plex.clear_requests();
    assert!(!bed.edit_hook(id, "rating unchanged").await.failed());
    bed.settle().await;
    assert_eq!(rates(&bed), 0, "an unchanged rating costs no request");

    bed.stash.update_scene(id, |s| s.rating100 = None);
    assert!(!bed.edit_hook(id, "unrated").await.failed());
    bed.settle().await;
    assert_eq!(rates(&bed), 1);
    assert_eq!(bed.item_of(id).user_rating, None, "cleared with Stash's rating");
}

#[tokio::test]
async fn formatted_titles_and_ignored_tags_follow_the_agents_preferences() {
    let bed = Bed::new(20, json!({})).await;
    let id = bed.scenes_in_plex()[0];
    let (ignored, ambiguous, kept) =
        bed.stash.with_state(|s| (s.add_tag("Hidden"), s.add_tag("Ambiguous Studio"), s.add_tag("Shown")));
    let performer = bed.stash.with_state(|s| s.add_performer("Jane Doe"));
    bed.stash.update_scene(id, |s| {
        s.title = Some("Jane Doe - Beach Day".into());
        s.tags = vec![ignored, ambiguous, kept];
        s.performers = vec![performer];
        s.date = Some("2021-06-01".into());
    });
    bed.configure(json!({"UseFormattedTitle": true, "TitleFormat": "{performer} - {title} ({date})", "IgnoreTags": format!("0, {ignored}")}));
    assert!(!bed.edit_hook(id, "formatted").await.failed());
    bed.settle().await;
    let item = bed.item_of(id);
    assert_eq!(item.field("title"), Some("Jane Doe - Beach Day (2021-06-01)"));
    assert_eq!(item.tag_names(emulators::plex::TagKind::Genre), ["Shown"]);

    // Without a performer, no dangling separator.
    bed.stash.update_scene(id, |s| s.performers.clear());
    assert!(!bed.edit_hook(id, "alone").await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("title"), Some("Jane Doe - Beach Day (2021-06-01)"));
    bed.stash.update_scene(id, |s| s.title = Some("Beach Day".into()));
    assert!(!bed.edit_hook(id, "retitled").await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("title"), Some("Beach Day (2021-06-01)"));
}

#[tokio::test]
async fn require_url_and_stash_id_gate_a_scene_like_skip_unorganized() {
    let bed = Bed::new(10, json!({"RequireURL": true, "RequireStashID": true})).await;
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| {
        s.urls.clear();
        s.stash_ids.clear();
        s.title = Some("Gated".into());
    });
    bed.plex.clear_requests();
    assert!(!bed.edit_hook(id, "gated").await.failed());
    bed.settle().await;
    assert_eq!(bed.plex_writes(), 0);
    bed.stash.update_scene(id, |s| s.urls = vec!["https://example.com/scene".into()]);
    assert!(!bed.edit_hook(id, "url only").await.failed());
    bed.settle().await;
    assert_eq!(bed.plex_writes(), 0, "RequireStashID still holds it");
    bed.stash.update_scene(id, |s| s.stash_ids = vec![("https://stashdb.org/graphql".into(), "abc".into())]);
    assert!(!bed.edit_hook(id, "both").await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("title"), Some("Gated"));
}

#[tokio::test]
async fn add_plex_url_links_each_item_once_without_a_second_delivery() {
    let bed = Bed::new(10, json!({"AddPlexURL": true})).await;
    let id = bed.scenes_in_plex()[0];
    let rk = bed.item_of(id).rating_key;
    assert!(!bed.edit_hook(id, "link me").await.failed());
    bed.settle().await;
    let link = format!("plex/library/metadata/{rk}");
    eventually(Duration::from_secs(10), "the link on the scene", || bed.stash.scene(id).unwrap().urls.contains(&link))
        .await;
    let writes = bed.stash.mutations().iter().filter(|m| m.operation == "bulkSceneUpdate").count();
    assert_eq!(writes, 1);
    // Stash fired its update hook for that write: PlexSync knew it as its own.
    let own = bed.stash.hook_runs().into_iter().rfind(|r| r.id == id).unwrap();
    assert!(format!("{:?}", own.run.output).contains("AddPlexURL"), "{:?}", own.run.output);

    // Another delivery writes no second link, and a link a person removed
    // is not added back.
    bed.stash.update_scene(id, |s| s.urls.retain(|u| *u != link));
    assert!(!bed.edit_hook(id, "again").await.failed());
    bed.settle().await;
    assert!(!bed.stash.scene(id).unwrap().urls.contains(&link));
    assert_eq!(bed.stash.mutations().iter().filter(|m| m.operation == "bulkSceneUpdate").count(), 1);
}

/// The agent's preferences as Plex keeps them, at their defaults.
fn agents_default_prefs() -> std::collections::BTreeMap<String, String> {
    [
        ("Hostname", "127.0.0.1"),
        ("Port", "9999"),
        ("UseFormattedTitle", "false"),
        ("TitleFormat", "{performer} - {title}"),
        ("IgnoreTags", "0"),
        ("CreateSiteCollectionTags", "true"),
        ("CustomSiteCollectionPrefix", "true"),
        ("PrefixSiteCollectionTags", "Site: "),
        ("CreateStudioCollectionTags", "true"),
        ("CustomStudioCollectionPrefix", "true"),
        ("PrefixStudioCollectionTags", "Studio: "),
        ("RequireOrganized", "false"),
        ("AddPlexURL", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn a_switch_from_the_agent_keeps_its_library_and_costs_nothing_where_nothing_differs() {
    use emulators::legacy_agent;
    let bed = Bed::new(60, json!({})).await;
    // Half the scenes hold nothing the agent got wrong (no date: its date
    // parsing always failed; one-line details; whole-star ratings).
    let equal: std::collections::BTreeSet<u64> =
        bed.stash.with_state(|s| legacy_agent::agreeing_half(s).into_iter().collect());
    let (stash_prefix, plex_prefix) = (bed.lib.stash_prefix.clone(), bed.lib.plex_prefix.clone());
    let written = bed.stash.with_state(|s| {
        bed.plex.with_state(|p| {
            p.legacy_agents.insert(legacy_agent::AGENT_ID.into(), agents_default_prefs());
            legacy_agent::write_library(p, s, &stash_prefix, &plex_prefix)
        })
    });
    let in_plex = bed.scenes_in_plex();
    assert_eq!(written, in_plex.len());
    // Two collections a person made in Plex.
    let hand_made = [(in_plex[0], "Favourites"), (in_plex[1], "Watch Later")];
    for (scene, name) in hand_made {
        let rk = bed.item_of(scene).rating_key;
        bed.plex.with_state(|p| {
            let id = p.tag_id(emulators::plex::TagKind::Collection, name);
            let tag = emulators::plex::state::Tag { id, tag: name.into(), role: None, thumb: None };
            p.items.get_mut(&rk).unwrap().tags.entry(emulators::plex::TagKind::Collection).or_default().push(tag);
        });
    }

    let migrated = bed.task("migrate_apply").await;
    assert!(!migrated.failed(), "{migrated:?}");
    let settings = bed.stash.with_state(|s| s.plugins["PlexSync"].clone());
    assert!(!settings["syncFields"].as_str().unwrap().contains("background"), "{settings}");
    assert_eq!(settings["plexToken"], crate::common::PLEX_TOKEN, "the rest kept");

    bed.plex.clear_requests();
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let requests = bed.plex.requests();
    let written_to = |scene: u64| {
        let rk = bed.item_of(scene).rating_key.to_string();
        let item_path = format!("/library/metadata/{rk}/");
        let ours = |r: &&emulators::plex::RequestRecord| {
            r.param("id") == Some(rk.as_str()) || r.param("key") == Some(rk.as_str()) || r.path.starts_with(&item_path)
        };
        requests.iter().filter(|r| r.is_write()).filter(ours).count()
    };
    let (same, differ): (Vec<u64>, Vec<u64>) = in_plex.iter().partition(|id| equal.contains(id));
    assert!(!same.is_empty() && !differ.is_empty());
    for id in &same {
        assert_eq!(written_to(*id), 0, "scene {id} was as PlexSync would write it: {:?}", bed.item_of(*id));
    }
    let writes = requests.iter().filter(|r| r.is_write()).count();
    let reads = requests.len() - writes;
    eprintln!(
        "switch of {} items ({} already equal): {reads} Plex reads, {writes} writes ({:.2} requests per item)",
        in_plex.len(),
        same.len(),
        requests.len() as f64 / in_plex.len() as f64
    );
    // Every item now shows what the agent would write, with its defects
    // fixed (dates, newlines, half stars), and the hand-made collections.
    for id in &in_plex {
        let item = bed.item_of(*id);
        let scene = bed.stash.scene(*id).unwrap();
        assert_eq!(item.field("title"), scene.title.as_deref(), "scene {id}");
        assert_eq!(item.field("contentRating"), Some("XXX"));
        assert_eq!(item.field("originallyAvailableAt"), scene.date.as_deref(), "scene {id}");
        assert_eq!(item.field("summary").unwrap_or(""), scene.details.as_deref().unwrap_or(""), "scene {id}");
    }
    for (scene, name) in hand_made {
        assert!(collections(&bed, scene).contains(&name.to_string()), "{name} kept");
    }
}

#[tokio::test]
async fn gallery_images_become_extra_posters_and_backgrounds_and_the_cover_stays_shown() {
    for sort in [false, true] {
        let bed = Bed::new(10, json!({"IncludeGalleryImages": true, "SortGalleryImages": sort})).await;
        let id = bed.scenes_in_plex()[0];
        let gallery = bed.stash.with_state(|s| s.add_gallery("Set", &[(600, 900), (1600, 900)]));
        bed.stash.update_scene(id, |s| s.galleries = vec![gallery]);
        assert!(!bed.edit_hook(id, "with a gallery").await.failed());
        bed.settle().await;
        let cover = bed.stash.scene(id).unwrap().cover.unwrap();
        let item = bed.item_of(id);
        assert_eq!(item.poster, Some(emulators::plex::Image::Upload(cover.clone())), "sort={sort}: the cover is shown");
        assert_eq!(item.art, Some(emulators::plex::Image::Upload(cover.clone())), "sort={sort}: and the background");
        let images: Vec<Vec<u8>> =
            bed.stash.with_state(|s| s.galleries[&gallery].images.iter().map(|i| s.images[i].bytes.clone()).collect());
        let uploads_of = |path_end: &str| bed.plex.requests().iter().filter(|r| r.path.ends_with(path_end)).count();
        let key = |b: &[u8]| emulators::plex::state::content_key(b);
        // Every gallery image is among the item's posters (portrait only, when sorted).
        assert!(item.uploads.contains(&key(&images[0])), "sort={sort}: the portrait image is a poster");
        assert_eq!(item.uploads.contains(&key(&images[1])), !sort, "sort={sort}: the landscape one only unsorted");
        let posters = uploads_of("/posters");
        let arts = uploads_of("/arts");
        assert_eq!((posters, arts), if sort { (2, 2) } else { (3, 3) }, "sort={sort}: gallery images, then the cover");

        // Each goes up once.
        bed.plex.clear_requests();
        assert!(!bed.edit_hook(id, "again").await.failed());
        bed.settle().await;
        assert_eq!(uploads_of("/posters") + uploads_of("/arts"), 0);
    }
}
