//! Matching accuracy on the labelled corpus, Plex reads of a bulk match,
//! mapping inference and `explain`, all against the emulators over HTTP.

use std::collections::BTreeMap;

use emulators::corpus::{Corpus, Variation, PLEX_PREFIX, STASH_PREFIX};
use emulators::{Library, PlexEmulator, PlexState, StashAuth, StashEmulator, StashState};
use plexsync::clients::plex::PlexClient;
use plexsync::clients::stash::{Scene, StashClient, StashCredentials};
use plexsync::config::{self, Settings};
use plexsync::faces::context::{Context, Sources};
use plexsync::pipeline::matching::{suggest_mappings, LibraryIndex, Match};
use serde_json::json;

const TOKEN: &str = "matching-token";

fn settings(plex: &PlexEmulator, mappings: &str) -> Settings {
    let layer = json!({"plexUrl": plex.url().as_str(), "plexToken": TOKEN, "pathMappings": mappings});
    config::load(&[layer.as_object().unwrap().clone()]).settings
}

async fn all_scenes(stash: &StashEmulator) -> Vec<Scene> {
    let client = StashClient::new(&stash.url(), StashCredentials::default(), &Default::default()).unwrap();
    let mut scenes = Vec::new();
    for page in 1.. {
        let p = client.scenes_page(page, 500, None).await.unwrap();
        let got = p.scenes.len();
        scenes.extend(p.scenes);
        if got == 0 || scenes.len() >= p.count {
            break;
        }
    }
    scenes.sort_by_key(|s| s.id.parse::<u64>().unwrap());
    scenes
}

#[tokio::test]
async fn corpus_recall_and_no_false_positive() {
    let corpus = Corpus::generate(2_600, 5);
    let stash = StashEmulator::start(corpus.stash_state(), StashAuth::default()).await.unwrap();
    let (plex_state, keys) = corpus.plex_state();
    let plex = PlexEmulator::start(plex_state, TOKEN).await.unwrap();
    let s = settings(&plex, &format!("{STASH_PREFIX} => {PLEX_PREFIX}"));
    let client = PlexClient::new(s.plex_url.clone().unwrap(), s.plex_token.clone().unwrap(), &s.plex_http).unwrap();
    let index = LibraryIndex::build(&client, &s).await.unwrap();
    let scenes = all_scenes(&stash).await;
    assert_eq!(scenes.len(), corpus.scenes.len());

    let (mut matchable, mut right, mut false_positives, mut ambiguous) = (0, 0, 0, 0);
    let mut misses: BTreeMap<String, usize> = BTreeMap::new();
    for (scene, truth) in scenes.iter().zip(&corpus.scenes) {
        let expected = truth.answer.map(|i| keys[i].to_string());
        matchable += usize::from(expected.is_some());
        match (index.find(scene, &[], &s.path_maps).unwrap(), &expected) {
            (Match::Found { rating_key, .. }, Some(want)) if &rating_key == want => right += 1,
            (Match::Found { .. }, _) => {
                false_positives += 1;
                *misses.entry(format!("{:?} (wrong item)", truth.variation)).or_default() += 1;
            }
            (Match::Ambiguous { .. }, want) => {
                ambiguous += 1;
                if want.is_some() {
                    *misses.entry(format!("{:?} (ambiguous)", truth.variation)).or_default() += 1;
                }
            }
            (Match::NotFound { .. }, Some(_)) => {
                *misses.entry(format!("{:?} (not found)", truth.variation)).or_default() += 1
            }
            (Match::NotFound { .. }, None) => {}
        }
    }
    let recall = right as f64 / matchable as f64;
    let precision = right as f64 / (right + false_positives) as f64;
    println!(
        "corpus of {} scenes ({matchable} matchable): recall {:.2} %, precision {:.2} %, ambiguous {ambiguous}, false positives {false_positives}, misses {misses:?}",
        scenes.len(),
        recall * 100.0,
        precision * 100.0
    );
    assert!(matchable >= 2_000);
    assert_eq!(false_positives, 0, "{misses:?}");
    assert!(recall >= 0.995, "recall {recall}: {misses:?}");
    let expected_ambiguous = corpus.scenes.iter().filter(|s| s.variation == Variation::AmbiguousCopies).count();
    assert_eq!(ambiguous, expected_ambiguous, "ambiguous copies are never written");
}

#[tokio::test]
async fn bulk_match_of_10000_scenes_reads_plex_once_per_page() {
    let lib = Library::sample(10_000, 8);
    let stash = StashEmulator::start(StashState::from_library(&lib), StashAuth::default()).await.unwrap();
    let plex = PlexEmulator::start(PlexState::from_library(&lib), TOKEN).await.unwrap();
    let s = settings(&plex, &format!("{} => {}", lib.stash_prefix, lib.plex_prefix));
    let client = PlexClient::new(s.plex_url.clone().unwrap(), s.plex_token.clone().unwrap(), &s.plex_http).unwrap();
    let index = LibraryIndex::build(&client, &s).await.unwrap();
    let scenes = all_scenes(&stash).await;
    let found =
        scenes.iter().filter(|sc| matches!(index.find(sc, &[], &s.path_maps).unwrap(), Match::Found { .. })).count();
    let reads = plex.requests().len();
    println!(
        "bulk match: {} scenes, {found} found, {reads} Plex reads ({:.2} per 100 scenes)",
        scenes.len(),
        reads as f64 * 100.0 / scenes.len() as f64
    );
    assert!(reads * 100 <= scenes.len(), "{reads} reads for {} scenes", scenes.len());
    let in_plex = lib.scenes.iter().filter(|s| s.in_plex).count();
    assert!(found >= in_plex * 99 / 100, "{found} of {in_plex}");
}

#[tokio::test]
async fn paths_suggest_recovers_the_true_prefix_rule() {
    let corpus = Corpus::generate(1_300, 9);
    let (plex_state, _) = corpus.plex_state();
    let plex = PlexEmulator::start(plex_state, TOKEN).await.unwrap();
    let s = settings(&plex, "");
    let client = PlexClient::new(s.plex_url.clone().unwrap(), s.plex_token.clone().unwrap(), &s.plex_http).unwrap();
    let index = LibraryIndex::build(&client, &s).await.unwrap();
    let files: Vec<(String, u64)> =
        corpus.scenes.iter().flat_map(|sc| sc.files.iter().map(|(p, size, _)| (p.clone(), *size))).collect();
    let rules = suggest_mappings(&files, &index).unwrap();
    assert_eq!((rules[0].stash.as_str(), rules[0].plex.as_str()), (STASH_PREFIX, PLEX_PREFIX), "{rules:?}");
    assert!(rules[0].files >= 10 * rules[1].files, "the true rule explains far more files: {rules:?}");
}

/// Emulators and a [`Context`] for `explain`, over the corpus.
async fn explain_bed() -> (Corpus, StashEmulator, PlexEmulator, Vec<u64>, tempfile::TempDir) {
    let corpus = Corpus::generate(26, 3);
    let stash = StashEmulator::start(corpus.stash_state(), StashAuth::default()).await.unwrap();
    let (plex_state, keys) = corpus.plex_state();
    let plex = PlexEmulator::start(plex_state, TOKEN).await.unwrap();
    stash.set_plugin_settings(
        "PlexSync",
        json!({"plexUrl": plex.url().as_str(), "plexToken": TOKEN, "pathMappings": format!("{STASH_PREFIX} => {PLEX_PREFIX}")}),
    );
    (corpus, stash, plex, keys, tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn explain_shows_a_hit_an_ambiguous_case_and_a_miss() {
    let (corpus, stash, _plex, keys, dir) = explain_bed().await;
    let ctx = Context::new(&stash.url(), StashCredentials::default(), dir.path().to_path_buf(), &Sources::default())
        .await
        .unwrap();
    let ids: Vec<u64> = stash.with_state(|s| s.scenes.keys().copied().collect());
    let pick = |v: Variation| corpus.scenes.iter().position(|s| s.variation == v).unwrap();

    let hit = pick(Variation::RenamedFolder);
    let out = plexsync::faces::operations::explain(&ctx, &ids[hit].to_string()).await.unwrap();
    let trace = out["trace"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect::<Vec<_>>().join("\n");
    assert!(trace.contains("exact path: none"), "{trace}");
    assert!(trace.contains("+ size"), "{trace}");
    assert!(trace.contains(&format!("decision: item {}", keys[corpus.scenes[hit].answer.unwrap()])), "{trace}");

    let amb = pick(Variation::AmbiguousCopies);
    let out = plexsync::faces::operations::explain(&ctx, &ids[amb].to_string()).await.unwrap();
    let trace = out["trace"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect::<Vec<_>>().join("\n");
    assert!(trace.contains("decision: ambiguous, nothing written"), "{trace}");
    assert_eq!(out["decision"]["Ambiguous"]["candidates"].as_array().unwrap().len(), 2);

    let miss = pick(Variation::Missing);
    let out = plexsync::faces::operations::explain(&ctx, &ids[miss].to_string()).await.unwrap();
    let trace = out["trace"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect::<Vec<_>>().join("\n");
    assert!(trace.contains(&format!("file {}", corpus.scenes[miss].files[0].0)), "{trace}");
    assert!(trace.contains("/media/library/"), "the mapped path is shown: {trace}");
    assert!(trace.contains("decision: not in Plex"), "{trace}");

    let unknown = plexsync::faces::operations::explain(&ctx, "999999").await.unwrap_err();
    assert!(unknown.message.contains("does not exist"));
}
