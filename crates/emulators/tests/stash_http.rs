//! The Stash emulator seen by a plain GraphQL client, and the plugin runner.

use std::path::Path;
use std::time::Duration;

use emulators::plugin::LogLevel;
use emulators::{Library, StashAuth, StashEmulator, StashState};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "stash-api-key";

async fn start(scenes: usize) -> StashEmulator {
    let auth = StashAuth { api_key: Some(KEY.into()), session: Some("cookie-value".into()) };
    StashEmulator::start(StashState::from_library(&Library::sample(scenes, 9)), auth).await.unwrap()
}

async fn gql(stash: &StashEmulator, query: &str, variables: Value) -> Value {
    let resp = Client::new()
        .post(stash.url().join("graphql").unwrap())
        .header("ApiKey", KEY)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

const SCENE_DATA: &str = "fragment SceneData on Scene {
  id title code details director urls date rating100 organized created_at updated_at
  files { path basename size duration fingerprints { type value } }
  paths { screenshot }
  studio { id name parent_studio { name } }
  performers { id name disambiguation image_path }
  tags { id name }
  stash_ids { endpoint stash_id } }";

#[tokio::test]
async fn auth_by_api_key_or_session_cookie() {
    let stash = start(3).await;
    let url = stash.url().join("graphql").unwrap();
    let body = json!({"query": "{ version { version } }"});
    let c = Client::new();
    assert_eq!(c.post(url.clone()).json(&body).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.post(url.clone()).header("ApiKey", "wrong").json(&body).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(c.post(url.clone()).header("ApiKey", KEY).json(&body).send().await.unwrap().status(), StatusCode::OK);
    let by_cookie = c.post(url).header("Cookie", "other=1; session=cookie-value").json(&body).send().await.unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);
}

#[tokio::test]
async fn find_scenes_pages_counts_and_sorts() {
    let stash = start(60).await;
    let q = format!(
        "query($f: FindFilterType) {{ findScenes(filter: $f) {{ count scenes {{ ...SceneData }} }} }} {SCENE_DATA}"
    );
    let mut ids = Vec::new();
    for page in 1..=4 {
        let r = gql(&stash, &q, json!({"f": {"per_page": 25, "page": page, "sort": "updated_at", "direction": "ASC"}}))
            .await;
        assert!(r.get("errors").is_none(), "{r}");
        assert_eq!(r["data"]["findScenes"]["count"], 60);
        let scenes = r["data"]["findScenes"]["scenes"].as_array().unwrap();
        assert_eq!(scenes.len(), [25, 25, 10, 0][page - 1]);
        ids.extend(scenes.iter().map(|s| s["id"].as_str().unwrap().to_string()));
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 60);
    let all = gql(&stash, &q, json!({"f": {"per_page": -1}})).await;
    assert_eq!(all["data"]["findScenes"]["scenes"].as_array().unwrap().len(), 60);
    let scene = &all["data"]["findScenes"]["scenes"][0];
    assert!(scene["files"][0]["size"].as_i64().unwrap() > 0, "Int64 size: {scene}");
    assert!(scene["updated_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn updated_at_filter_finds_what_changed() {
    let stash = start(30).await;
    let q = "query($f: FindFilterType, $sf: SceneFilterType) { findScenes(filter: $f, scene_filter: $sf) { count scenes { id title updated_at } } }";
    let now = chrono::Utc::now() - chrono::Duration::seconds(1);
    let vars = json!({"f": {"per_page": 100, "sort": "updated_at", "direction": "ASC"},
                      "sf": {"updated_at": {"value": now.to_rfc3339(), "modifier": "GREATER_THAN"}}});
    let r = gql(&stash, q, vars.clone()).await;
    assert_eq!(r["data"]["findScenes"]["count"], 0, "fixture scenes were last edited in the past");
    let id = stash.with_state(|s| *s.scenes.keys().nth(4).unwrap());
    assert!(stash.update_scene(id, |s| s.title = Some("Changed".into())));
    let r = gql(&stash, q, vars).await;
    assert_eq!(r["data"]["findScenes"]["count"], 1);
    assert_eq!(r["data"]["findScenes"]["scenes"][0]["id"], id.to_string());
    assert_eq!(r["data"]["findScenes"]["scenes"][0]["title"], "Changed");
}

#[tokio::test]
async fn find_scene_with_everything_and_images_behind_auth() {
    let stash = start(20).await;
    let id = stash.with_state(|s| {
        s.scenes.values().find(|sc| sc.studio.is_some() && !sc.performers.is_empty() && !sc.tags.is_empty()).unwrap().id
    });
    stash.with_state(|s| {
        s.scenes.get_mut(&id).unwrap().stash_ids.push(("https://stashdb.org/graphql".into(), "abc".into()))
    });
    let r = gql(
        &stash,
        &format!("query($id: ID!) {{ findScene(id: $id) {{ ...SceneData }} }} {SCENE_DATA}"),
        json!({"id": id}),
    )
    .await;
    let scene = &r["data"]["findScene"];
    assert_eq!(scene["id"], id.to_string());
    assert!(!scene["performers"].as_array().unwrap().is_empty());
    assert!(!scene["tags"].as_array().unwrap().is_empty());
    assert_eq!(scene["stash_ids"][0]["endpoint"], "https://stashdb.org/graphql");
    assert!(scene["studio"]["name"].is_string());
    let screenshot = scene["paths"]["screenshot"].as_str().unwrap();
    assert!(screenshot.starts_with(stash.url().as_str()));
    let c = Client::new();
    assert_eq!(c.get(screenshot).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let img = c.get(screenshot).header("ApiKey", KEY).send().await.unwrap();
    assert_eq!(img.headers()["content-type"], "image/png");
    assert_eq!(&img.bytes().await.unwrap()[..4], b"\x89PNG");

    let missing = gql(&stash, "{ findScene(id: \"999999\") { id } }", json!({})).await;
    assert_eq!(missing["data"]["findScene"], Value::Null);
}

#[tokio::test]
async fn malformed_queries_fail_like_graphql() {
    let stash = start(2).await;
    let unknown_field = gql(&stash, "{ findScenes { count scenes { no_such_field } } }", json!({})).await;
    assert!(unknown_field["errors"][0]["message"].as_str().unwrap().contains("no_such_field"));
    let bad_syntax = gql(&stash, "{ findScenes { count ", json!({})).await;
    assert!(bad_syntax["errors"].is_array());
    let bad_enum = gql(
        &stash,
        "{ findScenes(scene_filter: {updated_at: {value: \"x\", modifier: SOMETIMES}}) { count } }",
        json!({}),
    )
    .await;
    assert!(bad_enum["errors"].is_array());
}

#[tokio::test]
async fn plugin_settings_come_from_configuration() {
    let stash = start(1).await;
    stash.set_plugin_settings("PlexSync", json!({"plexHost": "plex.lan", "skipUnorganized": false}));
    stash.set_plugin_settings("Other", json!({"x": 1}));
    let r = gql(&stash, "{ configuration { plugins(include: [\"PlexSync\"]) general { apiKey } } }", json!({})).await;
    assert_eq!(
        r["data"]["configuration"]["plugins"],
        json!({"PlexSync": {"plexHost": "plex.lan", "skipUnorganized": false}})
    );
    assert_eq!(r["data"]["configuration"]["general"]["apiKey"], KEY);
    let all = gql(&stash, "{ configuration { plugins } }", json!({})).await;
    assert_eq!(all["data"]["configuration"]["plugins"].as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn mutations_change_scenes_bump_updated_at_and_are_recorded() {
    let stash = start(5).await;
    let ids: Vec<u64> = stash.with_state(|s| s.scenes.keys().take(2).copied().collect());
    let tag = stash.with_state(|s| s.add_tag("Added"));
    let before = stash.scene(ids[0]).unwrap();
    let r = gql(
        &stash,
        "mutation($input: SceneUpdateInput!) { sceneUpdate(input: $input) { id title } }",
        json!({"input": {"id": ids[0], "title": "New", "details": null}}),
    )
    .await;
    assert_eq!(r["data"]["sceneUpdate"]["title"], "New", "{r}");
    let after = stash.scene(ids[0]).unwrap();
    assert_eq!(after.details, None);
    assert_eq!(after.code, before.code, "fields not named stay");
    assert!(after.updated_at > before.updated_at);

    let r = gql(
        &stash,
        "mutation($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id } }",
        json!({"input": {"ids": ids, "tag_ids": {"ids": [tag], "mode": "ADD"},
                         "urls": {"values": ["plex/library/metadata/5"], "mode": "ADD"}}}),
    )
    .await;
    assert_eq!(r["data"]["bulkSceneUpdate"].as_array().unwrap().len(), 2, "{r}");
    for id in &ids {
        let s = stash.scene(*id).unwrap();
        assert!(s.tags.contains(&tag));
        assert!(s.urls.contains(&"plex/library/metadata/5".to_string()));
    }
    let muts = stash.mutations();
    assert_eq!(muts[0].operation, "sceneUpdate");
    assert_eq!(muts[0].input_fields, ["details", "id", "title"]);
    assert_eq!(muts[1].scene_ids, ids);

    let bad = gql(
        &stash,
        "mutation($id: ID!) { sceneUpdate(input: {id: $id, tag_ids: [\"99999\"]}) { id } }",
        json!({"id": ids[0]}),
    )
    .await;
    assert!(bad["errors"][0]["message"].as_str().unwrap().contains("tag 99999 not found"));
}

#[tokio::test]
async fn plugins_run_exactly_as_stash_runs_them() {
    let stash = start(1).await;
    let dir = tempdir();
    // A stand-in plugin: echoes what it got on stdin as its output, logs at
    // two levels and reports progress through Stash's stderr protocol.
    let script =
        r#"input=$(cat); printf '\001i\002got input\n\001p\0020.5\nplain\n' >&2; printf '{"output": %s}' "$input""#;
    let exec = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let run = stash
        .run_hook(&exec, &dir, 7, "Scene.Update.Post", json!({"id": "7", "title": "T"}), &["id", "title"])
        .await
        .unwrap();
    assert!(!run.failed(), "{run:?}");
    let got = run.output.clone().unwrap();
    assert_eq!(got["args"]["hookContext"]["type"], "Scene.Update.Post");
    assert_eq!(got["args"]["hookContext"]["inputFields"], json!(["id", "title"]));
    let conn = &got["server_connection"];
    assert_eq!(conn["Host"], "0.0.0.0");
    assert_eq!(conn["Port"], stash.addr().port());
    assert_eq!(conn["SessionCookie"]["Value"], "cookie-value");
    assert_eq!(conn["Dir"], dir.to_str().unwrap());
    assert_eq!(run.progress, [0.5]);
    assert_eq!(run.messages_at(LogLevel::Info), ["got input", "plain"]);

    let failing =
        vec!["sh".to_string(), "-c".to_string(), r#"cat >/dev/null; echo '{"error": "bad settings"}'"#.to_string()];
    let run = stash.run_task(&failing, &dir, json!({"mode": "sync_all"})).await.unwrap();
    assert!(run.failed());
    assert_eq!(run.error.as_deref(), Some("bad settings"));

    // Stash waits for the pipes: a child holding stdout keeps the run open.
    let lingering =
        vec!["sh".to_string(), "-c".to_string(), "cat >/dev/null; (sleep 0.4; echo) & echo '{}'".to_string()];
    let run = stash.run_task(&lingering, &dir, json!({})).await.unwrap();
    assert!(run.elapsed >= Duration::from_millis(350), "{:?}", run.elapsed);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("emulators-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Path::new(&dir).is_dir());
    dir
}
