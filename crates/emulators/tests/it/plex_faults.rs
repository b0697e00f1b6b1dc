//! Every fault mode of the Plex emulator, as a plain HTTP client sees it.

use std::time::{Duration, Instant};

use emulators::{Library, PlexEmulator, PlexState};
use reqwest::{Client, StatusCode};

const TOKEN: &str = "fault-token";

async fn start() -> PlexEmulator {
    PlexEmulator::start(PlexState::from_library(&Library::sample(20, 5)), TOKEN).await.unwrap()
}

fn client(timeout_ms: u64) -> Client {
    Client::builder().timeout(Duration::from_millis(timeout_ms)).build().unwrap()
}

async fn get(c: &Client, plex: &PlexEmulator, path: &str) -> reqwest::Result<reqwest::Response> {
    c.get(plex.url().join(path).unwrap()).header("X-Plex-Token", TOKEN).send().await
}

#[tokio::test]
async fn an_outage_asked_for_before_the_server_first_ran_still_happens() {
    let plex = start().await;
    plex.down_for(Duration::from_millis(600));
    tokio::time::timeout(Duration::from_secs(2), plex.settled()).await.expect("the port closes");
    assert!(get(&client(2_000), &plex, "/identity").await.unwrap_err().is_connect());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get(&client(2_000), &plex, "/identity").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn down_refuses_connections_and_cuts_open_ones_then_recovers() {
    let plex = start().await;
    let c = client(2_000);
    assert_eq!(get(&c, &plex, "/identity").await.unwrap().status(), StatusCode::OK);
    plex.go_down();
    plex.settled().await;
    assert!(!plex.is_up());
    // The pooled keep-alive connection was cut, and new ones are refused.
    let err = get(&c, &plex, "/identity").await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let err = get(&client(2_000), &plex, "/identity").await.unwrap_err();
    assert!(err.is_connect(), "connection refused: {err:?}");

    plex.come_up();
    plex.settled().await;
    assert_eq!(get(&client(2_000), &plex, "/identity").await.unwrap().status(), StatusCode::OK);

    // Timed outage through the admin API, on the same port.
    let admin = client(2_000)
        .post(plex.url().join("/_emulator/down").unwrap())
        .json(&serde_json::json!({"secs": 0.3}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::ACCEPTED);
    plex.settled().await;
    assert!(get(&client(2_000), &plex, "/identity").await.unwrap_err().is_connect());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&client(2_000), &plex, "/identity").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn maintenance_answers_503_with_plex_body_for_its_window() {
    let plex = start().await;
    plex.maintenance_for(Duration::from_millis(300));
    let c = client(2_000);
    for path in ["/identity", "/library/sections"] {
        let resp = get(&c, &plex, path).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = resp.text().await.unwrap();
        assert!(body.contains("title=\"Maintenance\"") && body.contains("database migrations"), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&c, &plex, "/library/sections").await.unwrap().status(), StatusCode::OK);
    let faults: Vec<_> = plex.requests().into_iter().filter_map(|r| r.fault).collect();
    assert_eq!(faults, ["maintenance", "maintenance"]);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let plex = start().await;
    plex.faults(|f| f.config.latency_ms = 150);
    let started = Instant::now();
    assert_eq!(get(&client(2_000), &plex, "/identity").await.unwrap().status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn hanging_requests_time_out_until_released() {
    let plex = start().await;
    plex.faults(|f| f.config.hang = true);
    let err = get(&client(200), &plex, "/library/sections").await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    plex.faults(|f| f.config.hang = false);
    assert_eq!(get(&client(2_000), &plex, "/library/sections").await.unwrap().status(), StatusCode::OK);
}

async fn error_sequence(plex: &PlexEmulator, seed: u64) -> Vec<u16> {
    plex.faults(|f| {
        f.config.error_rate = 0.3;
        f.reseed(seed);
    });
    let c = client(2_000);
    let mut statuses = Vec::new();
    for _ in 0..200 {
        statuses.push(get(&c, plex, "/library/sections").await.unwrap().status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn random_5xx_follow_the_seeded_rate_and_repeat_with_the_seed() {
    let plex = start().await;
    let first = error_sequence(&plex, 42).await;
    let errors = first.iter().filter(|s| **s >= 500).count();
    assert!((35..=85).contains(&errors), "about 30% of 200, got {errors}");
    assert!(first.iter().all(|s| [200, 500, 502, 503].contains(s)));
    assert_eq!(error_sequence(&plex, 42).await, first, "same seed, same faults");
}

#[tokio::test]
async fn dropped_connections_fail_mid_body() {
    let plex = start().await;
    plex.faults(|f| f.config.drop_next = 1);
    let c = client(2_000);
    let result = match get(&c, &plex, "/library/sections/1/all?type=1").await {
        Ok(resp) => resp.bytes().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(result.is_err(), "the client must see the cut");
    // Only the next response was cut.
    let ok = get(&c, &plex, "/library/sections/1/all?type=1").await.unwrap();
    assert!(ok.bytes().await.is_ok());
    assert_eq!(plex.requests()[0].fault.as_deref(), Some("dropped"));
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after() {
    let plex = start().await;
    plex.faults(|f| {
        f.config.throttle_next = 2;
        f.config.retry_after_secs = 7;
    });
    let c = client(2_000);
    for _ in 0..2 {
        let resp = get(&c, &plex, "/library/sections").await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
    }
    assert_eq!(get(&c, &plex, "/library/sections").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn revoked_token_gets_401_but_identity_still_answers() {
    let plex = start().await;
    plex.faults(|f| f.config.token_revoked = true);
    let c = client(2_000);
    assert_eq!(get(&c, &plex, "/library/sections").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(&c, &plex, "/identity").await.unwrap().status(), StatusCode::OK);
    plex.heal();
    assert_eq!(get(&c, &plex, "/library/sections").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn faults_are_controlled_over_http_too() {
    let plex = start().await;
    let c = client(2_000);
    let admin = |p: &str| plex.url().join(p).unwrap();
    let set = c
        .post(admin("/_emulator/faults"))
        .json(&serde_json::json!({"token_revoked": true, "seed": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(get(&c, &plex, "/library/sections").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let current: serde_json::Value = c.get(admin("/_emulator/faults")).send().await.unwrap().json().await.unwrap();
    assert_eq!(current["token_revoked"], true);
    c.post(admin("/_emulator/faults")).json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(get(&c, &plex, "/library/sections").await.unwrap().status(), StatusCode::OK);

    let m = c.post(admin("/_emulator/maintenance")).json(&serde_json::json!({"secs": 5})).send().await.unwrap();
    assert_eq!(m.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&c, &plex, "/identity").await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);

    let log: Vec<serde_json::Value> = c.get(admin("/_emulator/requests")).send().await.unwrap().json().await.unwrap();
    assert_eq!(log.len(), 3, "admin calls are not logged: {log:?}");
    assert_eq!(log[2]["status"], 503);
}

#[tokio::test]
async fn what_stands_in_front_of_plex_answers_for_it() {
    let plex = PlexEmulator::start(PlexState::from_library(&Library::sample(4, 3)), TOKEN).await.unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(plex.url().join(path).unwrap())
            .header("X-Plex-Token", TOKEN)
            .header("Accept", "application/json")
            .send()
    };

    plex.faults(|f| f.config.login_page = true);
    let page = get("/library/sections").await.unwrap();
    assert_eq!(page.status(), 200, "a login page answers 200");
    assert!(page.text().await.unwrap().contains("<title>Sign in</title>"));
    plex.heal();

    plex.faults(|f| f.config.broken_utf8 = true);
    let body = get("/library/sections/1/all?type=1").await.unwrap().bytes().await.unwrap();
    assert!(std::str::from_utf8(&body).is_err(), "a title's character cut");
    plex.heal();

    plex.faults(|f| f.config.max_request_line = 200);
    let long = format!("/library/sections/1/all?type=1&title={}", "x".repeat(300));
    assert_eq!(get(&long).await.unwrap().status(), 414);
    assert_eq!(get("/library/sections").await.unwrap().status(), 200);
    plex.heal();

    plex.faults(|f| f.config.read_only_token = true);
    assert_eq!(get("/library/sections").await.unwrap().status(), 200, "a shared user lists");
    let edit = client
        .put(plex.url().join("/library/sections/1/all?type=1&id=101&title.value=x").unwrap())
        .header("X-Plex-Token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 403, "but may not edit");
}
