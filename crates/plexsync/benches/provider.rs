//! The metadata provider at scale: the release `plexsync daemon` with
//! `provider` on, over a Stash of 100 000 scenes, called as Plex calls it
//! (loopback HTTP, no credentials).
//!
//!     cargo build --release -p plexsync && cargo bench -p plexsync --bench provider
//!
//! `PROVIDER_SCENES` changes the size (default 100000). Prints how long
//! the index of Stash's files took to read, then p50/p95 of a match (a
//! file's path relative to the library root, answered from the index), of
//! a metadata call for a scene not read before (one Stash `findScene` in
//! it), and of that `findScene` asked of Stash directly, so the provider's
//! own share of a metadata call is the difference.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Calls of each kind (fewer in a small library: each scene once).
const MATCHES: usize = 2000;
const METADATA: usize = 1000;

/// p50 and p95 of `times`, in ms.
fn percentiles(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let at = |percent: usize| times[(times.len() * percent / 100).min(times.len() - 1)].as_secs_f64() * 1000.0;
    (at(50), at(95))
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("PROVIDER_SCENES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let lib = emulators::Library::sample(n, 3);
    let (stash, _plex) = common::emulators_of(lib.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::release_binary())
        .args(["--data-dir", data.path().to_str().unwrap(), "daemon", "--listen", "127.0.0.1:0"])
        .env("PLEXSYNC_STASH_URL", stash.url().as_str())
        .env("PLEXSYNC_STASH_SESSION", stash.login_cookie())
        .env("PLEXSYNC_PROVIDER", "true")
        .env("PLEXSYNC_RECONCILE_HOURS", "0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let lines = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut url, mut answered) = (String::new(), None);
    let indexed = loop {
        let line = rx.recv_timeout(Duration::from_secs(600)).expect("the daemon indexes Stash's files");
        if let Some(addr) = line.split("listening on ").nth(1) {
            url = addr.split_whitespace().next().unwrap().to_string();
        }
        if line.contains("Stash answers") {
            answered = Some(Instant::now());
        }
        if line.contains("Stash scenes indexed by file") {
            break answered.expect("Stash answered first").elapsed();
        }
    };
    let http = reqwest::Client::new();
    let page = http.get(&url).send().await.unwrap().text().await.unwrap();
    let root = page.split("Metadata provider").nth(1).and_then(|r| r.split("<pre class=\"trace\">").nth(1));
    let root = root.and_then(|r| r.split("</pre>").next()).expect("the page shows the provider's URL").to_string();

    let matches = MATCHES.min(n / 2);
    let metadata = METADATA.min(n / 4);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut scenes: Vec<(u64, String)> = stash.with_state(|s| {
        s.scenes.values().map(|sc| (sc.id, sc.files[0].path.replacen(&lib.stash_prefix, "", 1))).collect()
    });
    scenes.shuffle(&mut rng);

    let mut times = Vec::new();
    let mut right = 0;
    for (id, file) in scenes.iter().take(matches) {
        let started = Instant::now();
        let answer: Value = http
            .post(format!("{root}/library/metadata/matches"))
            .json(&json!({"type": 1, "filename": file, "includeAdult": 1}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        times.push(started.elapsed());
        let got = answer["MediaContainer"]["Metadata"][0]["ratingKey"].as_str().and_then(|k| k.parse::<u64>().ok());
        right += usize::from(got == Some(*id));
    }
    let (match50, match95) = percentiles(&mut times);

    let mut times = Vec::new();
    for (id, _) in scenes.iter().skip(matches).take(metadata) {
        let started = Instant::now();
        let status = http.get(format!("{root}/library/metadata/{id}")).send().await.unwrap().status();
        times.push(started.elapsed());
        assert!(status.is_success(), "metadata of {id}: {status}");
    }
    let (meta50, meta95) = percentiles(&mut times);

    let mut times = Vec::new();
    let query = "query Scene($id: ID!) { findScene(id: $id) { id title details date urls organized updated_at files { path size duration } paths { screenshot } studio { id name parent_studio { id name } } performers { id name image_path } tags { id name } } }";
    for (id, _) in scenes.iter().skip(matches + metadata).take(metadata) {
        let started = Instant::now();
        let response = http
            .post(stash.url().join("graphql").unwrap())
            .header("Cookie", format!("session={}", stash.login_cookie()))
            .json(&json!({"query": query, "variables": {"id": id.to_string()}}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let _ = response.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    let (stash50, stash95) = percentiles(&mut times);
    let _ = child.kill();
    let _ = child.wait();

    println!("provider over {n} Stash scenes (release daemon, loopback HTTP)");
    println!("  index of Stash's files read in {:.1} s", indexed.as_secs_f64());
    println!("  match ({matches} files, relative paths): p50 {match50:.2} ms, p95 {match95:.2} ms; {right} of {matches} answered with their own scene");
    println!("  metadata ({metadata} scenes, none cached): p50 {meta50:.2} ms, p95 {meta95:.2} ms");
    println!("  Stash's findScene alone: p50 {stash50:.2} ms, p95 {stash95:.2} ms");
    println!(
        "  provider's own share of a metadata call: p50 {:.2} ms, p95 {:.2} ms",
        meta50 - stash50,
        meta95 - stash95
    );
}
