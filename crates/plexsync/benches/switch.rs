//! What switching from StashPlexAgent costs, and a first sync that makes
//! every kind of collection, in Plex requests per scene.
//!
//!     cargo build --release -p plexsync && cargo bench -p plexsync --bench switch
//!
//! - **switch**: a Plex library as the agent left it at its default
//!   preferences (`emulators::legacy_agent`; half the scenes hold nothing
//!   the agent got wrong, the others a date, a summary with newlines or a
//!   half star), the agent's preferences in Plex; the task "Migrate
//!   settings: apply", then "Sync all scenes".
//! - **every collection**: a library new to PlexSync, with the site,
//!   studio, group, performer, rating, organized and tag collections on.
//!
//! For each: Plex requests per scene in Plex (reads, writes, uploads), and
//! how many items were written to at all.

mod common;

use std::time::{Duration, Instant};

use emulators::PlexEmulator;
use serde_json::json;

fn report(what: &str, plex: &PlexEmulator, items: usize, started: Instant) {
    let requests = plex.requests();
    let uploads = requests.iter().filter(|r| r.path.ends_with("/posters") || r.path.ends_with("/arts")).count();
    let writes = requests.iter().filter(|r| r.is_write()).count() - uploads;
    let reads = requests.len() - writes - uploads;
    let written: std::collections::BTreeSet<String> = requests
        .iter()
        .filter(|r| r.is_write())
        .filter_map(|r| {
            r.param("id")
                .or(r.param("key"))
                .map(str::to_string)
                .or_else(|| r.path.split('/').nth(3).map(str::to_string))
        })
        .collect();
    let per = |n: usize| n as f64 / items as f64;
    println!(
        "{what:<16} {items:>5} items: {:.3} Plex requests per item ({:.3} reads, {:.3} writes, {:.3} uploads); {} items written to; {:.1} s",
        per(requests.len()),
        per(reads),
        per(writes),
        per(uploads),
        written.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let exe = common::release_binary();
    let n = 2_000;
    let spec = emulators::LibrarySpec { scenes: n, seed: 5, missing_rate: 0.0, ..Default::default() };

    // The switch.
    let lib = emulators::Library::generate(&spec);
    let (stash, plex) = common::emulators_of(lib.clone()).await;
    let equal = stash.with_state(|s| emulators::legacy_agent::agreeing_half(s).len());
    let items = stash.with_state(|s| {
        plex.with_state(|p| {
            let prefs = [("CreateSiteCollectionTags", "true"), ("CreateStudioCollectionTags", "true")];
            let prefs = prefs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            p.legacy_agents.insert(emulators::legacy_agent::AGENT_ID.into(), prefs);
            emulators::legacy_agent::write_library(p, s, &lib.stash_prefix, &lib.plex_prefix)
        })
    });
    let config = tempfile::tempdir().unwrap();
    let folder = common::install(config.path(), &exe);
    stash.install_plugins(config.path(), &folder).unwrap();
    let data = config.path().join("plexsync");
    stash.run_plugin_task("PlexSync", "Migrate settings: apply", json!({})).await.unwrap();
    plex.clear_requests();
    let started = Instant::now();
    stash.run_plugin_task("PlexSync", "Sync all scenes", json!({})).await.unwrap();
    common::drained(&data).await;
    println!("switch: {items} items the agent wrote, {equal} of the scenes as PlexSync would write them");
    report("switch", &plex, items, started);
    drop((stash, plex, config));

    // A first sync with every collection on.
    let (stash, plex) = common::emulators_of(emulators::Library::generate(&spec)).await;
    let mut settings = stash.with_state(|s| s.plugins["PlexSync"].clone());
    let all_tags: Vec<String> = stash.with_state(|s| s.tags.keys().map(u64::to_string).collect());
    for (k, v) in [
        ("AddOrganizedCollectionTag", json!(true)),
        ("CreateMovieCollectionTags", json!(true)),
        ("CreatePerformerCollectionTags", json!(true)),
        ("CreateRatingTags", json!(true)),
        ("CreateTagCollectionTags", json!(all_tags.join(","))),
        ("AppendPerformerTags", json!(true)),
    ] {
        settings[k] = v;
    }
    stash.set_plugin_settings("PlexSync", settings);
    let config = tempfile::tempdir().unwrap();
    let folder = common::install(config.path(), &exe);
    stash.install_plugins(config.path(), &folder).unwrap();
    let data = config.path().join("plexsync");
    plex.clear_requests();
    let started = Instant::now();
    stash.run_plugin_task("PlexSync", "Sync all scenes", json!({})).await.unwrap();
    common::drained(&data).await;
    let items = plex.with_state(|p| p.items.len());
    report("every collection", &plex, items, started);
    drop(config);
    tokio::time::sleep(Duration::from_millis(500)).await;
}
