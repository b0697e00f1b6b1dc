//! What one edit in Stash costs in Plex requests, once a library is synced.
//!
//!     cargo build --release -p plexsync && cargo bench -p plexsync --bench edit_cost
//!
//! PlexSync (the release binary) is installed from its manifest into the
//! Stash emulator holding 5 000 scenes, all of them in Plex, and syncs them. Then, driven
//! over GraphQL as a person's browser would (Stash fires the hooks):
//!
//! - **one field**: the details of 100 scenes edited one at a time;
//! - **bulk tag**: one tag added to all 5 000 scenes in one bulk edit;
//! - **new cover**: the cover of 100 scenes replaced;
//!
//! and for each, the Plex requests per edited scene (reads, writes, image
//! uploads apart), the Stash requests PlexSync made per edited scene (the
//! edit's own mutations and image answers apart), and Stash's image
//! answers (downloads, `304`s).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use emulators::{PlexEmulator, StashEmulator};
use plexsync::store::Store;
use serde_json::json;

/// Plex requests since the last clear: (reads, writes other than uploads, uploads).
fn plex_requests(plex: &PlexEmulator) -> (usize, usize, usize) {
    let requests = plex.requests();
    let uploads = requests.iter().filter(|r| r.path.ends_with("/posters") || r.path.ends_with("/arts")).count();
    let writes = requests.iter().filter(|r| r.is_write()).count() - uploads;
    (requests.len() - writes - uploads, writes, uploads)
}

/// Runs `edit` (which sends `own` requests to Stash itself) and prints
/// what delivering it cost.
async fn measure(
    what: &str,
    scenes: usize,
    own: usize,
    emulators: (&StashEmulator, &PlexEmulator),
    data: &Path,
    edit: impl std::future::Future<Output = ()>,
) {
    let (stash, plex) = emulators;
    plex.clear_requests();
    let images = stash.image_requests();
    let asked = stash.request_count();
    let started = Instant::now();
    edit.await;
    common::drained(data).await;
    let (reads, writes, uploads) = plex_requests(plex);
    let shared = shareable_edits(plex);
    let after = stash.image_requests();
    let image_answers = after.served - images.served + after.not_modified - images.not_modified;
    let graphql = stash.request_count() - asked - own - image_answers;
    let per = |n: usize| n as f64 / scenes as f64;
    println!(
        "{what:<12} {scenes:>5} scenes: {:.3} Plex requests per scene ({:.3} reads, {:.3} writes, {uploads} uploads); {:.3} Stash requests per scene besides images; Stash images: {} downloads, {} not modified; {:.1} s",
        per(reads + writes + uploads),
        per(reads),
        per(writes),
        per(graphql),
        after.served - images.served,
        after.not_modified - images.not_modified,
        started.elapsed().as_secs_f64(),
    );
    println!(
        "{:<12} edits: {} with {} different parameter sets (what one multi-id edit could carry)",
        "", shared.0, shared.1
    );
}

/// The edits since the last clear, and how many different sets of
/// parameters (the item's id aside) they sent: edits with the same set are
/// what Plex's multi-id edit (`id=1,2,3`) could carry in one request
/// under either tag semantics.
fn shareable_edits(plex: &PlexEmulator) -> (usize, usize) {
    let edits: Vec<Vec<(String, String)>> = plex
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/all"))
        .map(|r| {
            let mut query: Vec<(String, String)> = r.query.into_iter().filter(|(k, _)| k != "id").collect();
            query.sort();
            query
        })
        .collect();
    let sets: std::collections::BTreeSet<&Vec<(String, String)>> = edits.iter().collect();
    (edits.len(), sets.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let exe = common::release_binary();
    let n = 5_000;
    // Every scene in Plex: a scene Plex lacks is retried (and reads what
    // Plex added) whatever the edit, which is not what an edit costs.
    let spec = emulators::LibrarySpec { scenes: n, seed: 3, missing_rate: 0.0, ..Default::default() };
    let (stash, plex) = common::emulators_of(emulators::Library::generate(&spec)).await;
    let config = tempfile::tempdir().unwrap();
    let folder = common::install(config.path(), &exe);
    stash.install_plugins(config.path(), &folder).unwrap();
    let data = config.path().join("plexsync");

    let started = Instant::now();
    stash.run_plugin_task("PlexSync", "Sync all scenes", json!({})).await.unwrap();
    common::drained(&data).await;
    let queue = Store::open(&data.join("queue.sqlite")).unwrap();
    let synced: Vec<u64> = stash
        .with_state(|s| s.scenes.keys().copied().collect::<Vec<_>>())
        .into_iter()
        .filter(|id| queue.record(&id.to_string()).unwrap().is_some())
        .collect();
    println!(
        "first sync: {} of {n} scenes in Plex delivered in {:.1} s",
        synced.len(),
        started.elapsed().as_secs_f64()
    );

    let sample: Vec<u64> = synced.iter().copied().step_by(synced.len() / 100).take(100).collect();
    measure("one field", sample.len(), sample.len(), (&stash, &plex), &data, async {
        for id in &sample {
            let q = "mutation($i: SceneUpdateInput!) { sceneUpdate(input: $i) { id } }";
            common::graphql(
                &stash,
                q,
                json!({"i": {"id": id.to_string(), "details": format!("Edited details of {id}.")}}),
            )
            .await;
        }
    })
    .await;

    let tag = stash.with_state(|s| s.add_tag("Bulk Added"));
    measure("bulk tag", synced.len(), 1, (&stash, &plex), &data, async {
        let all: Vec<String> = stash.with_state(|s| s.scenes.keys().map(u64::to_string).collect());
        let q = "mutation($i: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $i) { id } }";
        common::graphql(&stash, q, json!({"i": {"ids": all, "tag_ids": {"ids": [tag.to_string()], "mode": "ADD"}}}))
            .await;
    })
    .await;

    measure("new cover", sample.len(), sample.len(), (&stash, &plex), &data, async {
        for id in &sample {
            let png = emulators::stash::state::fixture_image(id + 1_000_000);
            let data_url = emulators::stash::state::data_url(&png);
            let q = "mutation($i: SceneUpdateInput!) { sceneUpdate(input: $i) { id } }";
            common::graphql(&stash, q, json!({"i": {"id": id.to_string(), "cover_image": data_url}})).await;
        }
    })
    .await;
    drop(config);
    tokio::time::sleep(Duration::from_millis(500)).await;
}
