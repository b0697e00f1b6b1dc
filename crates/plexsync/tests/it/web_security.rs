//! The daemon as an attacker's web page would try it: a name rebound to
//! 127.0.0.1 on every route (the page's, the JSON endpoints', the
//! provider's), cross-site and wrong-port posts, missing or wrong keys,
//! and requests too big or malformed. (Framing is tried in a real browser
//! in `browser.rs`.)
#![cfg(unix)]

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, HOST, ORIGIN};
use serde_json::json;

use crate::common::daemon::Daemon;
use crate::common::Bed;

const EVIL: &str = "evil.example";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The page's form key and the provider's secret, as the page shows them.
async fn key_and_secret(daemon: &Daemon) -> (String, String) {
    let url = daemon.provider_url(None).await;
    (daemon.form_key(None).await, url.rsplit('/').next().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_name_is_refused_on_every_route_and_origins_are_judged_by_the_daemons_names() {
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    let env = [("PLEXSYNC_PROVIDER", "true"), ("PLEXSYNC_DAEMON_HOSTS", "plexsync.lan")];
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &env).unwrap();
    let port: u16 = daemon.url.rsplit(':').next().unwrap().parse().unwrap();
    let (key, secret) = key_and_secret(&daemon).await;
    let http = no_redirects();
    let at = |path: &str| format!("{}{path}", daemon.url);
    let form = vec![("key", key.clone()), ("scene", "1".to_string())];

    // Every route, as a rebinding page sends it: its own name, its own
    // origin, "same-origin" by the browser's account, the right key.
    let evil_host = format!("{EVIL}:{port}");
    let evil_origin = format!("http://{EVIL}:{port}");
    let mut rebound = HeaderMap::new();
    rebound.insert(HOST, HeaderValue::from_str(&evil_host).unwrap());
    rebound.insert(ORIGIN, HeaderValue::from_str(&evil_origin).unwrap());
    rebound.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
    let provider = format!("/provider/{secret}");
    let gets = ["/", "/healthz", "/metrics", "/?scene=1", &provider, &format!("{provider}/library/metadata/1")];
    for path in gets {
        let r = http.get(at(path)).headers(rebound.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 421, "GET {path}");
        assert!(r.text().await.unwrap().contains("daemonHosts"), "the refusal names the setting");
    }
    for action in ["sync", "retry-dead", "purge-dead", "reconcile"] {
        let r = http.post(at(&format!("/actions/{action}"))).headers(rebound.clone()).form(&form).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 421, "POST /actions/{action}");
    }
    let matches = format!("{provider}/library/metadata/matches");
    let r = http.post(at(&matches)).headers(rebound.clone()).json(&json!({"type": 1, "filename": "x.mp4"})).send();
    assert_eq!(r.await.unwrap().status().as_u16(), 421, "POST matches");
    assert!(!daemon.log.lock().unwrap().contains("status page:"), "no action ran");

    // The daemon's own names work; an address always does.
    for host in [format!("plexsync.lan:{port}"), format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let r = http.get(at("/healthz")).header(HOST, host.as_str()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }

    // Origins are judged by the daemon's names and port, not by `Host`.
    let post = |origin: Option<String>, site: Option<&'static str>, key: &str| {
        let mut req = http.post(at("/actions/retry-dead")).form(&[("key", key)]);
        if let Some(origin) = origin {
            req = req.header(ORIGIN, origin);
        }
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        post(Some(format!("http://127.0.0.1:{}", port + 1)), Some("same-site"), &key).await,
        403,
        "another port"
    );
    assert_eq!(post(Some(evil_origin.clone()), Some("cross-site"), &key).await, 403, "another site");
    assert_eq!(post(Some(evil_origin), None, &key).await, 403, "another origin without Sec-Fetch-Site");
    assert_eq!(post(Some(format!("http://127.0.0.1:{port}")), Some("same-origin"), "wrong").await, 403, "a wrong key");
    let r =
        http.post(at("/actions/retry-dead")).header(ORIGIN, format!("http://127.0.0.1:{port}")).send().await.unwrap();
    assert!(r.status().is_client_error(), "no key at all: {}", r.status());
    assert_eq!(post(Some(format!("http://127.0.0.1:{port}")), Some("same-origin"), &key).await, 303, "the page itself");
    assert_eq!(post(Some("https://plexsync.lan".into()), Some("same-origin"), &key).await, 303, "through a proxy");
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let status = http.request(method.clone(), at("/actions/purge-dead")).send().await.unwrap().status();
        assert!(status.is_client_error(), "{method} does not act: {status}");
    }

    // What a browser is told: no framing, no sniffing, no referrer, no CORS.
    let r = http.get(at("/")).send().await.unwrap();
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer", "the provider's URL on the page never leaks");
    assert_eq!(h["x-content-type-options"], "nosniff");
    for path in ["/healthz", "/metrics", &provider] {
        let r = http.get(at(path)).header(ORIGIN, evil_host.as_str()).send().await.unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(r.headers().keys().all(|k| !k.as_str().starts_with("access-control-")), "{path}: no CORS");
    }
}

/// Sends `request` as is on a new connection and reads what comes back
/// (the server may answer and close before reading it all).
async fn raw(addr: &str, request: String) -> String {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = conn.write_all(request.as_bytes());
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // Up to the end of the status line and headers is enough.
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_too_big_or_malformed_get_a_clear_4xx_and_the_daemon_goes_on() {
    let bed = Bed::new(5, json!({"reconcileHours": 0})).await;
    let daemon = Daemon::start(&bed, "127.0.0.1:0", &[("PLEXSYNC_PROVIDER", "true")]).unwrap();
    let (key, secret) = key_and_secret(&daemon).await;
    let http = no_redirects();
    let at = |path: &str| format!("{}{path}", daemon.url);

    // 1 MB bodies, announced: refused from the length alone, before the
    // body is read (a client still sending would see the connection cut).
    let addr = daemon.url.trim_start_matches("http://").to_string();
    for (path, kind) in [
        ("/actions/sync".to_string(), "application/x-www-form-urlencoded"),
        (format!("/provider/{secret}/library/metadata/matches"), "application/json"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {kind}\r\nContent-Length: 1048576\r\n\r\nkey={key}&"
        );
        let answer = raw(&addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "a 1 MB body to {path}: {:?}", answer.lines().next());
    }
    let r =
        http.post(at(&format!("/provider/{secret}/library/metadata/matches"))).body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "a match call that is not JSON");
    for path in
        [format!("/provider/{secret}/library/metadata/%FF%FE"), "/provider/%FF%FE".into(), "/actions/%FF".into()]
    {
        let status = http.get(at(&path)).send().await.unwrap().status();
        assert!(status.is_client_error(), "{path}: {status}");
    }

    // 10 000 headers.
    let mut request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n");
    for i in 0..10_000 {
        request.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let answer = raw(&addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "10 000 headers: {:?}", answer.lines().next());
    let (status, _) = daemon.health().await;
    assert_eq!(status, 200, "the daemon still answers");
    assert!(!daemon.log.lock().unwrap().contains("panicked"));

    // The form key is the process's: a restart makes a new one, and a
    // page kept open from before can no longer act.
    let mut daemon = daemon;
    daemon.terminate();
    let again = Daemon::start(&bed, "127.0.0.1:0", &[("PLEXSYNC_PROVIDER", "true")]).unwrap();
    let (new_key, new_secret) = key_and_secret(&again).await;
    assert_ne!(new_key, key, "the key rotates");
    assert_eq!(new_secret, secret, "the provider's URL stays (Plex keeps it)");
    let r = http.post(format!("{}/actions/retry-dead", again.url)).form(&[("key", key.as_str())]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "the old key");
    let r =
        http.post(format!("{}/actions/retry-dead", again.url)).form(&[("key", new_key.as_str())]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303, "the new key");
}
