//! Stash's real schema is the contract: the emulator's schema is a faithful
//! subset of it, and the emulator refuses what Stash would refuse.

use emulators::stash::contract::RealSchema;
use emulators::{Library, StashAuth, StashEmulator, StashState};
use serde_json::{json, Value};

#[test]
fn the_emulators_schema_is_a_subset_of_stashs() {
    let real = RealSchema::get().expect("Stash's schema under third_party/stash-schema");
    let differences = real.differences(&emulators::stash::schema::sdl()).unwrap();
    assert!(differences.is_empty(), "the emulator differs from Stash:\n{}", differences.join("\n"));
}

#[test]
fn the_comparison_sees_a_renamed_field_and_a_changed_type() {
    let real = RealSchema::get().unwrap();
    let sdl = "type Query { findScene(id: ID!): Scene }\n\
               type Scene { id: ID! title: Int updatedAt: String }";
    let differences = real.differences(sdl).unwrap();
    assert!(differences.iter().any(|d| d.contains("Scene.title: Int here, String in Stash")), "{differences:?}");
    assert!(differences.iter().any(|d| d.contains("Scene.updatedAt is not in Stash's schema")), "{differences:?}");
}

async fn post(stash: &StashEmulator, query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(stash.url().join("graphql").unwrap())
        .json(&json!({"query": query}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_document_stash_would_refuse_is_refused_with_422() {
    let lib = Library::sample(3, 9);
    let stash = StashEmulator::start(StashState::from_library(&lib), StashAuth::default()).await.unwrap();

    let (status, body) = post(&stash, "{ findScenes { count scenes { id updatedAt } } }").await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("updatedAt"), "{body}");
    assert_eq!(body["data"], Value::Null);

    let (status, body) = post(&stash, "{ findScenes { count scenes { id updated_at } } }").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["findScenes"]["count"], 3);
}
