//! What PlexSync adds to a person's bulk edit in Stash. Stash runs a
//! plugin's hook once per scene, one after another, inside the request
//! (Stash's `pkg/plugin` hook executor), so every millisecond of a hook is a millisecond the
//! person waits, times the number of scenes.
//!
//!     cargo build --release -p plexsync && cargo bench -p plexsync --bench bulk_edit
//!
//! For 500 and 5 000 scenes: a `bulkSceneUpdate` (add a tag) sent over
//! HTTP to the Stash emulator, once without the plugin and once with
//! PlexSync installed from its manifest (the release binary); prints the
//! seconds PlexSync added, and per-hook median and p95, also per half of
//! the edit (the cost must not grow with the edit's size). The first hook
//! also starts the worker, which delivers while the edit goes on.

mod common;

use std::time::{Duration, Instant};

use common::{install, median_p95, release_binary};
use emulators::StashEmulator;
use serde_json::json;

async fn bulk_add_tag(stash: &StashEmulator, ids: &[u64], tag: u64) -> Duration {
    let query = "mutation Bulk($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id } }";
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    let started = Instant::now();
    common::graphql(stash, query, json!({"input": {"ids": ids, "tag_ids": {"ids": [tag.to_string()], "mode": "ADD"}}}))
        .await;
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let exe = release_binary();
    for n in [500usize, 5_000] {
        let (stash, plex) = common::emulators(n).await;
        let ids: Vec<u64> = stash.with_state(|s| s.scenes.keys().copied().collect());
        let (tag_a, tag_b) = stash.with_state(|s| (s.add_tag("Bench A"), s.add_tag("Bench B")));

        let without = bulk_add_tag(&stash, &ids, tag_a).await;
        let config = tempfile::tempdir().unwrap();
        let folder = install(config.path(), &exe);
        stash.install_plugins(config.path(), &folder).unwrap();
        let with = bulk_add_tag(&stash, &ids, tag_b).await;

        let runs = stash.hook_runs();
        assert_eq!(runs.len(), n, "one hook per scene");
        assert!(runs.iter().all(|r| !r.run.failed()), "every hook succeeded");
        let times: Vec<Duration> = runs.iter().map(|r| r.run.elapsed).collect();
        let (median, p95) = median_p95(times.clone());
        let (first, _) = median_p95(times[..n / 2].to_vec());
        let (second, _) = median_p95(times[n / 2..].to_vec());
        println!(
            "{n:>5} scenes: edit {:.2} s without PlexSync, {:.2} s with ({:.2} s added); per hook median {median:.2} ms, p95 {p95:.2} ms; median of the first half {first:.2} ms, of the second {second:.2} ms",
            without.as_secs_f64(),
            with.as_secs_f64(),
            (with.saturating_sub(without)).as_secs_f64(),
        );
        drop(stash);
        drop(plex);
        // The worker stops once its data folder is gone.
        drop(config);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
