//! A renamed performer or tag changes what every scene that shows it should
//! show in Plex, with no scene hook and no scene's `updated_at` moving
//! (Stash's hooks fire per object). Driven as Stash drives it: a GraphQL mutation, the
//! emulator fires the object's hook, PlexSync's hook hands the object to the
//! worker, which finds its scenes.

use std::time::Duration;

use crate::common::{eventually, Bed};
use emulators::plex::TagKind;
use serde_json::json;

/// Syncs everything; then picks an object (`of` lists a scene's performers
/// or tags) and returns it, the scenes in Plex that show it, and the others.
async fn synced(bed: &Bed, of: fn(&emulators::stash::StashScene) -> &[u64]) -> (u64, Vec<u64>, Vec<u64>) {
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let in_plex = bed.scenes_in_plex();
    let object = in_plex.iter().find_map(|id| of(&bed.stash.scene(*id).unwrap()).first().copied()).expect("one");
    let (showing, others) = in_plex.iter().partition(|id| of(&bed.stash.scene(**id).unwrap()).contains(&object));
    (object, showing, others)
}

#[tokio::test]
async fn a_renamed_performer_reaches_every_scene_that_shows_it_and_no_other() {
    let bed = Bed::new(40, json!({"retryScale": 0.02})).await;
    let (performer, showing, others) = synced(&bed, |s| &s.performers).await;
    assert!(!showing.is_empty() && !others.is_empty(), "the sample has both");
    let before: Vec<_> = others.iter().map(|id| bed.item_of(*id)).collect();
    bed.plex.clear_requests();

    let q = "mutation($i: ID!) { performerUpdate(input: {id: $i, name: \"Renamed Person\"}) { id } }";
    bed.graphql(q, json!({"i": performer.to_string()})).await;
    eventually(Duration::from_secs(20), "every scene showing the performer", || {
        showing.iter().all(|id| bed.item_of(*id).tag_names(TagKind::Actor).contains(&"Renamed Person"))
    })
    .await;
    bed.settle().await;
    let after: Vec<_> = others.iter().map(|id| bed.item_of(*id)).collect();
    assert_eq!(before, after, "nothing else changed in Plex");
    let writes: Vec<String> = bed.plex.requests().iter().filter(|r| r.is_write()).map(|r| r.path.clone()).collect();
    assert!(writes.len() <= showing.len() * 3, "only the affected items were written: {writes:?}");
}

#[tokio::test]
async fn a_renamed_tag_reaches_the_genres_of_its_scenes() {
    let bed = Bed::new(40, json!({"retryScale": 0.02})).await;
    let (tag, showing, _) = synced(&bed, |s| &s.tags).await;
    let q = "mutation($i: ID!) { tagUpdate(input: {id: $i, name: \"Fresh Genre\"}) { id } }";
    bed.graphql(q, json!({"i": tag.to_string()})).await;
    eventually(Duration::from_secs(20), "every scene with the tag", || {
        showing.iter().all(|id| bed.item_of(*id).tag_names(TagKind::Genre).contains(&"Fresh Genre"))
    })
    .await;
}

#[tokio::test]
async fn a_studio_given_a_new_parent_reaches_the_collections_of_its_scenes() {
    let bed = Bed::new(40, json!({"retryScale": 0.02})).await;
    assert!(!bed.task("sync_all").await.failed());
    bed.settle().await;
    let in_plex = bed.scenes_in_plex();
    let studio = in_plex.iter().find_map(|id| bed.stash.scene(*id).unwrap().studio).expect("a scene with a studio");
    let showing: Vec<u64> =
        in_plex.iter().copied().filter(|id| bed.stash.scene(*id).unwrap().studio == Some(studio)).collect();
    let parent = bed.stash.with_state(|s| s.add_studio("Brand New Network", None));

    let q = "mutation($i: ID!, $p: ID) { studioUpdate(input: {id: $i, parent_id: $p}) { id } }";
    bed.graphql(q, json!({"i": studio.to_string(), "p": parent.to_string()})).await;
    eventually(Duration::from_secs(20), "the new parent in every collection", || {
        showing.iter().all(|id| bed.item_of(*id).tag_names(TagKind::Collection).contains(&"Studio: Brand New Network"))
    })
    .await;
}

#[tokio::test]
async fn a_performer_renamed_with_no_hook_arrives_through_the_watermark() {
    let bed = Bed::new(40, json!({"retryScale": 0.02})).await;
    let (performer, showing, others) = synced(&bed, |s| &s.performers).await;
    // Renamed while PlexSync was disabled (or its hook lost): only the
    // performer's own `updated_at` moved.
    let kind = emulators::stash::ObjectKind::Performer;
    assert!(bed.stash.with_state(|s| s.update_object(kind, performer, Some("Quietly Renamed"))));
    // Any later activity makes the worker look for changes.
    assert!(!bed.update_hook(others[0]).await.failed());
    eventually(Duration::from_secs(40), "every scene showing the performer", || {
        showing.iter().all(|id| bed.item_of(*id).tag_names(TagKind::Actor).contains(&"Quietly Renamed"))
    })
    .await;
}
