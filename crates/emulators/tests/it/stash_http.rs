//! The Stash emulator seen by a plain GraphQL client, and the plugin runner.

use std::path::Path;
use std::time::Duration;

use emulators::plugin::LogLevel;
use emulators::{Library, StashAuth, StashEmulator, StashState};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "stash-api-key";

async fn start(scenes: usize) -> StashEmulator {
    let auth = StashAuth::login(Some(KEY));
    StashEmulator::start(StashState::from_library(&Library::sample(scenes, 9)), auth).await.unwrap()
}

async fn gql(stash: &StashEmulator, query: &str, variables: Value) -> Value {
    let (status, body) = gql_status(stash, query, variables).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn gql_status(stash: &StashEmulator, query: &str, variables: Value) -> (StatusCode, Value) {
    let resp = Client::new()
        .post(stash.url().join("graphql").unwrap())
        .header("ApiKey", KEY)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
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
    let cookie = format!("other=1; session={}", stash.login_cookie());
    let by_cookie = c.post(url.clone()).header("Cookie", cookie).json(&body).send().await.unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);
    assert!(by_cookie.headers()["set-cookie"].to_str().unwrap().starts_with("session="), "refreshed");
    let forged = c.post(url).header("Cookie", "session=made-up").json(&body).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_expire_after_the_max_age_unless_refreshed() {
    let auth = StashAuth::login(None).max_session_age(Duration::from_secs(2));
    let stash = StashEmulator::start(StashState::from_library(&Library::sample(2, 9)), auth).await.unwrap();
    let url = stash.url().join("graphql").unwrap();
    let body = json!({"query": "{ configuration { general { apiKey } } }"});
    let c = Client::new();
    let send = |cookie: String| c.post(url.clone()).header("Cookie", format!("session={cookie}")).json(&body).send();
    let first = stash.login_cookie();
    let ok = send(first.clone()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let refreshed = ok.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap()[8..].to_string();
    let answer: Value = ok.json().await.unwrap();
    assert_eq!(answer["data"]["configuration"]["general"]["apiKey"], "", "no API key generated");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(send(first).await.unwrap().status(), StatusCode::UNAUTHORIZED, "expired");
    assert_eq!(send(refreshed).await.unwrap().status(), StatusCode::UNAUTHORIZED, "a refresh lasts max age too");
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
    assert!(scene["updated_at"].as_str().unwrap().ends_with("-05:00"), "the server's offset");
}

/// `ids` as Stash's `id IN (…)`: each scene once, in the sort's order,
/// unknown ids absent, with the other criteria still applied.
#[tokio::test]
async fn find_scenes_by_ids_answers_each_known_scene_once() {
    let stash = start(30).await;
    let q = "query($ids: [ID!], $f: FindFilterType, $sf: SceneFilterType) {
        findScenes(ids: $ids, filter: $f, scene_filter: $sf) { count scenes { id organized } } }";
    let ids_of = |r: &Value| -> Vec<u64> {
        let scenes = r["data"]["findScenes"]["scenes"].as_array().unwrap().iter();
        scenes.map(|s| s["id"].as_str().unwrap().parse().unwrap()).collect()
    };
    let all = ids_of(&gql(&stash, q, json!({"f": {"per_page": -1}})).await);
    let (a, b, c) = (all[2], all[6], all[11]);
    let ids = json!([c.to_string(), a.to_string(), c.to_string(), "999999999", b.to_string()]);
    let r = gql(&stash, q, json!({"ids": ids, "f": {"per_page": -1}})).await;
    assert!(r.get("errors").is_none(), "{r}");
    assert_eq!(ids_of(&r), [a, b, c]);
    assert_eq!(r["data"]["findScenes"]["count"], 3);
    let desc = gql(&stash, q, json!({"ids": ids, "f": {"per_page": -1, "sort": "id", "direction": "DESC"}})).await;
    assert_eq!(ids_of(&desc), [c, b, a]);
    let organized = gql(&stash, q, json!({"ids": ids, "f": {"per_page": -1}, "sf": {"organized": true}})).await;
    for s in organized["data"]["findScenes"]["scenes"].as_array().unwrap() {
        assert_eq!(s["organized"], true, "{organized}");
    }
}

#[tokio::test]
async fn updated_at_filter_finds_what_changed() {
    let stash = start(30).await;
    let q = "query($f: FindFilterType, $sf: SceneFilterType) { findScenes(filter: $f, scene_filter: $sf) { count scenes { id title updated_at } } }";
    let now = chrono::Utc::now() - chrono::Duration::seconds(1);
    // In the server's own offset (the default zone is UTC-5).
    let local = now.with_timezone(&chrono::FixedOffset::west_opt(5 * 3600).unwrap());
    let vars = json!({"f": {"per_page": 100, "sort": "updated_at", "direction": "ASC"},
                      "sf": {"updated_at": {"value": local.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "modifier": "GREATER_THAN"}}});
    let r = gql(&stash, q, vars.clone()).await;
    assert_eq!(r["data"]["findScenes"]["count"], 0, "fixture scenes were last edited in the past");
    let id = stash.with_state(|s| *s.scenes.keys().nth(4).unwrap());
    assert!(stash.update_scene(id, |s| s.title = Some("Changed".into())));
    let r = gql(&stash, q, vars).await;
    assert_eq!(r["data"]["findScenes"]["count"], 1);
    assert_eq!(r["data"]["findScenes"]["scenes"][0]["id"], id.to_string());
    assert_eq!(r["data"]["findScenes"]["scenes"][0]["title"], "Changed");
    let stored = r["data"]["findScenes"]["scenes"][0]["updated_at"].as_str().unwrap().to_string();
    assert!(stored.ends_with("-05:00"), "stored in the server's offset: {stored}");
    // As text, like pkg/sqlite: the same instant in UTC compares greater
    // than the edit, so a UTC cursor misses it.
    let utc =
        json!({"f": {"per_page": 100}, "sf": {"updated_at": {"value": now.to_rfc3339(), "modifier": "GREATER_THAN"}}});
    assert_eq!(gql(&stash, q, utc).await["data"]["findScenes"]["count"], 0, "text comparison, not instants");
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
async fn malformed_queries_fail_like_gqlgen() {
    let stash = start(2).await;
    let refused = |(status, body): (StatusCode, Value), code: &str| {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], code, "{body}");
        assert_eq!(body["data"], Value::Null);
        body["errors"][0]["message"].as_str().unwrap().to_string()
    };
    let unknown = gql_status(&stash, "{ findScenes { count scenes { no_such_field } } }", json!({})).await;
    assert!(refused(unknown, "GRAPHQL_VALIDATION_FAILED").contains("no_such_field"));
    let bad_syntax = gql_status(&stash, "{ findScenes { count ", json!({})).await;
    refused(bad_syntax, "GRAPHQL_PARSE_FAILED");
    let bad_enum = gql_status(
        &stash,
        "{ findScenes(scene_filter: {updated_at: {value: \"x\", modifier: SOMETIMES}}) { count } }",
        json!({}),
    )
    .await;
    assert!(refused(bad_enum, "GRAPHQL_VALIDATION_FAILED").contains("SOMETIMES"));
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
    assert!(after.updated_at >= before.updated_at);

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

/// A plugin folder holding `id.yml` with `manifest` and an executable `run.sh`.
fn plugin_folder(config: &Path, id: &str, manifest: &str, script: &str) -> std::path::PathBuf {
    let folder = config.join("plugins").join(id);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(format!("{id}.yml")), manifest).unwrap();
    let sh = folder.join("run.sh");
    std::fs::write(&sh, format!("#!/bin/sh\n{script}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    folder
}

const ECHO: &str = r#"input=$(cat); printf '\001i\002got input\n\001p\0020.5\nplain\n' >&2; printf '{"output": {"argv": "%s", "input": %s}}' "$*" "$input""#;

#[tokio::test]
async fn manifests_are_read_and_exec_resolved_as_stash_does() {
    let config = tempdir().join("resolve");
    // `{pluginDir}` in the first element is never substituted: no start.
    let old = plugin_folder(
        &config,
        "Old",
        "name: Old\nexec: [\"{pluginDir}/run.sh\"]\ninterface: raw\ntasks:\n  - name: T\n",
        ECHO,
    );
    let stash = start(1).await;
    stash.install_plugins(&config, &old).unwrap();
    assert!(stash.run_plugin_task("Old", "T", json!({})).await.is_err(), "{{pluginDir}}/run.sh does not exist");

    // First element joined to the folder; `{pluginDir}` in later ones;
    // task execArgs appended; defaultArgs fill what args lack.
    let manifest = "name: New\nexec:\n  - run.sh\n  - \"{pluginDir}/x\"\ninterface: raw\nerrLog: info\ntasks:\n  - name: T\n    execArgs: [extra]\n    defaultArgs:\n      mode: a\n      other: b\n";
    let new = plugin_folder(&config, "New", manifest, ECHO);
    stash.install_plugins(&config, &new).unwrap();
    let run = stash.run_plugin_task("New", "T", json!({"mode": "given"})).await.unwrap();
    assert!(!run.failed(), "{run:?}");
    let out = run.output.clone().unwrap();
    assert_eq!(out["argv"], format!("{}/x extra", new.display()));
    assert_eq!(out["input"]["args"], json!({"mode": "given", "other": "b"}));
    let conn = &out["input"]["server_connection"];
    assert_eq!(conn["Host"], "0.0.0.0");
    assert!(conn.get("ApiKey").is_none(), "Stash never passes an API key");
    assert_eq!(conn["PluginDir"], new.to_str().unwrap());
    assert_eq!(run.progress, [0.5]);
    assert_eq!(run.messages_at(LogLevel::Info), ["got input", "plain"], "unprefixed lines at errLog's level");
    let op = stash.run_plugin_operation("New", json!({"x": 1})).await.unwrap();
    assert_eq!(op.output.unwrap()["input"]["args"], json!({"x": 1}), "no defaultArgs for an operation");

    // Unknown keys are refused, as yaml.v2 strict mode does.
    let bad = plugin_folder(&config, "Bad", "name: Bad\nexec: [run.sh]\nbogus: 1\n", ECHO);
    assert!(stash.install_plugins(&config, &bad).unwrap_err().contains("bogus"));
}

#[tokio::test]
async fn hooks_fire_one_scene_after_another_and_nest_up_to_the_depth_limit() {
    let stash = start(3).await;
    let config = tempdir().join("hooks");
    // A hook that sleeps, then re-sends its own scene's update with the
    // cookie it was given: Stash runs the hook again, nested, until depth 10.
    let script = r#"exec python3 "$(dirname "$0")/hook.py""#;
    let python = r#"import json, sys, time, urllib.request
d = json.load(sys.stdin)
time.sleep(0.05)
c = d["server_connection"]
q = {"query": 'mutation { sceneUpdate(input: {id: "%s", title: "x"}) { id } }' % d["args"]["hookContext"]["id"]}
r = urllib.request.Request("http://127.0.0.1:%d/graphql" % c["Port"], data=json.dumps(q).encode(),
    headers={"Cookie": "session=" + c["SessionCookie"]["Value"], "Content-Type": "application/json"})
urllib.request.urlopen(r).read()
print("{}")
"#;
    let manifest = "name: Loop\nexec: [run.sh]\nhooks:\n  - name: H\n    triggeredBy: [Scene.Update.Post]\n";
    let folder = plugin_folder(&config, "Loop", manifest, script);
    std::fs::write(folder.join("hook.py"), python).unwrap();
    stash.install_plugins(&config, &folder).unwrap();
    let id = stash.with_state(|s| *s.scenes.keys().next().unwrap());
    let r =
        gql(&stash, "mutation($i: ID!) { sceneUpdate(input: {id: $i, title: \"t\"}) { id } }", json!({"i": id})).await;
    assert!(r["errors"].is_null(), "{r}");
    let runs = stash.hook_runs();
    assert_eq!(runs.len(), 10, "nested until the depth limit (an ApiKey-only request has no cookie list)");
    assert_eq!(runs.iter().map(|r| r.depth).max(), Some(10));
    assert_eq!(stash.hooks_skipped(), 1);

    // A bulk edit: one hook per scene, in a row, the answer after the last.
    stash.clear_hook_runs();
    let config2 = tempdir().join("bulk");
    let quiet = plugin_folder(
        &config2,
        "Quiet",
        "name: Quiet\nexec: [run.sh]\nhooks:\n  - name: H\n    triggeredBy: [Scene.Update.Post]\n",
        "cat >/dev/null; sleep 0.1; echo '{}'",
    );
    let s2 = start(3).await;
    s2.install_plugins(&config2, &quiet).unwrap();
    let ids: Vec<String> = s2.with_state(|s| s.scenes.keys().map(u64::to_string).collect());
    let started = std::time::Instant::now();
    let r =
        gql(&s2, "mutation($i: [ID!]) { bulkSceneUpdate(input: {ids: $i, rating100: 60}) { id } }", json!({"i": ids}))
            .await;
    assert!(r["errors"].is_null(), "{r}");
    assert!(started.elapsed() >= Duration::from_millis(300), "three hooks of 0.1 s in a row: {:?}", started.elapsed());
    assert_eq!(s2.hook_runs().iter().map(|r| r.id.to_string()).collect::<Vec<_>>(), ids);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("emulators-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Path::new(&dir).is_dir());
    dir
}

#[tokio::test]
async fn renaming_a_performer_studio_or_tag_fires_only_its_own_hook_and_bumps_only_its_own_time() {
    let stash = start(20).await;
    let config = tempdir().join("objects");
    let manifest = "name: Watch\nexec: [run.sh]\nhooks:\n  - name: H\n    triggeredBy: [Performer.Update.Post, Studio.Update.Post, Tag.Update.Post, Scene.Update.Post]\n";
    let folder = plugin_folder(&config, "Watch", manifest, ECHO);
    stash.install_plugins(&config, &folder).unwrap();
    let (performer, studio, tag, parent) = stash.with_state(|s| {
        let scene =
            s.scenes.values().find(|sc| !sc.performers.is_empty() && !sc.tags.is_empty() && sc.studio.is_some());
        let scene = scene.expect("a scene with a performer, a tag and a studio");
        let parent = s.studios.keys().copied().find(|id| Some(*id) != scene.studio).unwrap();
        (scene.performers[0], scene.studio.unwrap(), scene.tags[0], parent)
    });
    let scenes_before: Vec<String> = stash.with_state(|s| s.scenes.values().map(|sc| sc.updated_at.clone()).collect());
    let performer_before = stash.with_state(|s| s.performers[&performer].updated_at.clone());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let q = "mutation($i: ID!) { performerUpdate(input: {id: $i, name: \"Renamed\"}) { id name updated_at } }";
    let r = gql(&stash, q, json!({"i": performer.to_string()})).await;
    assert_eq!(r["data"]["performerUpdate"]["name"], "Renamed", "{r}");
    assert_ne!(r["data"]["performerUpdate"]["updated_at"], performer_before.as_str());
    let q = "mutation($i: ID!, $p: ID) { studioUpdate(input: {id: $i, parent_id: $p}) { parent_studio { id } } }";
    let r = gql(&stash, q, json!({"i": studio.to_string(), "p": parent.to_string()})).await;
    assert_eq!(r["data"]["studioUpdate"]["parent_studio"]["id"], parent.to_string(), "{r}");
    let q = "mutation($i: ID!) { tagUpdate(input: {id: $i, name: \"New Tag Name\"}) { name } }";
    assert_eq!(gql(&stash, q, json!({"i": tag.to_string()})).await["data"]["tagUpdate"]["name"], "New Tag Name");

    let hooks: Vec<(String, u64)> = stash.hook_runs().iter().map(|h| (h.hook_type.clone(), h.id)).collect();
    assert_eq!(
        hooks,
        [
            ("Performer.Update.Post".to_string(), performer),
            ("Studio.Update.Post".to_string(), studio),
            ("Tag.Update.Post".to_string(), tag)
        ],
        "no scene hook"
    );
    let input = &stash.hook_runs()[0].run.output.clone().unwrap()["input"]["args"]["hookContext"];
    assert_eq!(input["inputFields"], json!(["id", "name"]), "{input}");
    let scenes_after: Vec<String> = stash.with_state(|s| s.scenes.values().map(|sc| sc.updated_at.clone()).collect());
    assert_eq!(scenes_before, scenes_after, "no scene's updated_at moved");
    let scene =
        gql(&stash, "{ findScenes(filter: {per_page: -1}) { scenes { performers { name } } } }", json!({})).await;
    assert!(scene.to_string().contains("Renamed"), "scenes show the new name");
}

#[tokio::test]
async fn images_carry_an_etag_answer_if_none_match_with_304_and_default_to_an_svg() {
    let stash = start(1).await;
    let (scene, performer) =
        stash.with_state(|s| (*s.scenes.keys().next().unwrap(), *s.performers.keys().next().unwrap()));
    let new = stash.scan_new(&[vec![("/data/new.mp4".into(), 10, 1.0)]]).await[0];
    let get = |path: String, etag: Option<String>| {
        let mut req = Client::new().get(stash.url().join(&path).unwrap()).header("ApiKey", KEY);
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        req.send()
    };
    let first = get(format!("scene/{scene}/screenshot?t=1"), None).await.unwrap();
    assert_eq!(first.headers()["content-type"], "image/png");
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    // Another `?t=` (any edit of the scene) is the same image.
    let again = get(format!("scene/{scene}/screenshot?t=2"), Some(etag.clone())).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let fresh = get(format!("scene/{new}/screenshot"), None).await.unwrap();
    assert_eq!(fresh.headers()["content-type"], "image/svg+xml", "a scanned scene has no cover yet");
    stash.generate_cover(new, emulators::stash::state::fixture_image(99));
    let covered = get(format!("scene/{new}/screenshot"), Some(etag)).await.unwrap();
    assert_eq!(covered.status(), StatusCode::OK);
    assert_eq!(covered.headers()["content-type"], "image/png");
    assert_eq!(stash.image_requests().not_modified, 1);
    assert_eq!(stash.image_requests().served, 3);

    let data = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let body = gql(
        &stash,
        "mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { image_path } }",
        json!({"i": {"id": performer.to_string(), "image": null}}),
    )
    .await;
    let path = body["data"]["performerUpdate"]["image_path"].as_str().unwrap();
    assert!(path.contains("?t=") && path.ends_with("&default=true"), "{path}");
    let body = gql(
        &stash,
        "mutation($i: PerformerUpdateInput!) { performerUpdate(input: $i) { image_path } }",
        json!({"i": {"id": performer.to_string(), "image": data}}),
    )
    .await;
    assert!(!body["data"]["performerUpdate"]["image_path"].as_str().unwrap().contains("default"));
}

/// What Stash's UI relies on: the page at any address without an extension
/// with Stash's content security policy (a plugin's `ui.csp` added), where
/// each plugin's files are (`plugins { paths }`), and Stash's answer to an
/// operation of a plugin it does not have.
#[tokio::test]
async fn the_ui_page_plugin_paths_and_an_unknown_plugin_are_answered_as_stash_does() {
    let config = tempdir().join("ui");
    let manifest = "name: Ui\nexec: [run.sh]\ninterface: raw\nui:\n  javascript: [ui.js, https://cdn.example/x.js]\n  csp:\n    connect-src: [https://api.example]\n";
    let folder = plugin_folder(&config, "Ui", manifest, ECHO);
    std::fs::write(folder.join("ui.js"), "1").unwrap();
    let stash = start(1).await;
    stash.install_plugins(&config, &folder).unwrap();
    stash.set_ui_page("<!doctype html><title>Stash</title>");

    let client = Client::new();
    for path in ["", "scenes/42", "scenes/42?qfp"] {
        let page = client.get(stash.url().join(path).unwrap()).header("ApiKey", KEY).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(
            csp.starts_with(
                "default-src data: 'self' 'unsafe-inline'; connect-src data: 'self' ws: wss: https://api.example;"
            ),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self' http://www.gstatic.com https://www.gstatic.com 'unsafe-inline' 'unsafe-eval' https://cdn.example/x.js;"), "{csp}");
        assert_eq!(page.headers()["referrer-policy"], "same-origin");
        assert!(page.text().await.unwrap().contains("<title>Stash</title>"));
    }
    let missing = client.get(stash.url().join("x.js").unwrap()).header("ApiKey", KEY).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND, "a file name is not the page");

    let plugins = gql(&stash, "{ plugins { id enabled paths { javascript css } } }", json!({})).await;
    let ui = &plugins["data"]["plugins"][0];
    assert_eq!(ui["id"], "Ui");
    let local = stash.url().join("plugin/Ui/javascript").unwrap().to_string();
    assert_eq!(ui["paths"]["javascript"], json!(["https://cdn.example/x.js", local]));
    assert_eq!(ui["paths"]["css"], Value::Null);

    let operation = "mutation($id: ID!) { runPluginOperation(plugin_id: $id, args: {}) }";
    let unknown = gql(&stash, operation, json!({"id": "Missing"})).await;
    let message = unknown["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("Internal system error. Error <runtime error"), "{unknown}");
    assert_eq!(unknown["data"]["runPluginOperation"], Value::Null);
}
