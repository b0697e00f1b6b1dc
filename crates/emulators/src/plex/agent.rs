//! Plex as the client of a custom metadata provider (PMS 1.43+), as the
//! provider documentation and a real server's log describe it: adding a
//! provider fetches and checks its manifest; a new item in a section whose
//! agent is the provider is matched by a `POST …/matches` (what Plex
//! knows: type, a title made of the file name, the file's path) and, when
//! the best answer scores over 85, read with `GET …/metadata/{ratingKey}`;
//! the item takes every field it does not have locked, and the poster and
//! background are downloaded. A refresh matches again with the stored
//! guid; Fix Match asks with `manual=1` and reads the guid chosen.
//!
//! As a real PMS since 1.43 does (facts: "Seen in the field since"): an
//! image URL on a LAN address is fetched through Plex's cloud, which
//! refuses it; only the documented 200, 400, 404 and 500 are understood,
//! and any failure leaves the item unmatched with no retry; an item needs
//! `originallyAvailableAt`, and a `Collection` needs its `guid` and `key`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::state::{content_key, unix_now, Image, Item, PlexState, Provider, Pull, Tag, TagKind};
use super::Shared;

/// Plex's own match API treats a score over this as a match.
pub const MATCH_SCORE: u64 = 85;
/// Reported as Plex's provider request timeout.
const TIMEOUT: Duration = Duration::from_secs(90);
/// The provider calls made at once.
const AT_ONCE: usize = 4;

/// Every field an answer may set, by its name in a provider item and on
/// a Plex item (and its lock).
const SCALARS: &[&str] = &[
    "title",
    "summary",
    "tagline",
    "studio",
    "originallyAvailableAt",
    "year",
    "contentRating",
    "originalTitle",
    "titleSort",
];
const TAGS: &[(&str, TagKind)] = &[
    ("Genre", TagKind::Genre),
    ("Role", TagKind::Actor),
    ("Director", TagKind::Director),
    ("Collection", TagKind::Collection),
];

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TIMEOUT).build().expect("a client with defaults builds")
}

/// Fetches the manifest at `root` (as Plex does: `?includePreferences=1`)
/// and checks what Plex requires of it.
pub async fn register(root: &str) -> Result<Provider, String> {
    let mut url = url::Url::parse(root).map_err(|e| format!("provider URL {root:?}: {e}"))?;
    url.query_pairs_mut().append_pair("includePreferences", "1");
    let answer = client().get(url).header("Accept", "application/json").send().await;
    let answer = answer.map_err(|e| format!("provider {root}: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("provider {root}: HTTP {}", answer.status()));
    }
    let manifest: Value = answer.json().await.map_err(|e| format!("provider {root}: not JSON: {e}"))?;
    check_manifest(root, &manifest["MediaProvider"])
}

/// What Plex refuses in a manifest: an identifier without the `custom.`
/// part or with other characters, no title, no movie type with its scheme,
/// no metadata or match feature.
pub fn check_manifest(root: &str, m: &Value) -> Result<Provider, String> {
    let identifier = m["identifier"].as_str().unwrap_or_default();
    let rest = identifier.strip_prefix("tv.plex.agents.custom.").unwrap_or_default();
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
        return Err(format!("identifier {identifier:?} must be tv.plex.agents.custom.<letters, digits, dots>"));
    }
    let title = m["title"].as_str().filter(|t| !t.is_empty()).ok_or("the manifest has no title")?;
    let types = m["Types"].as_array().ok_or("the manifest has no Types")?;
    let movie = types.iter().find(|t| t["type"] == 1).ok_or("Types has no movie (type 1)")?;
    if !movie["Scheme"].as_array().is_some_and(|s| s.iter().any(|s| s["scheme"] == identifier)) {
        return Err("the movie type has no Scheme naming the identifier".into());
    }
    let features = m["Feature"].as_array().ok_or("the manifest has no Feature")?;
    let key =
        |kind: &str| features.iter().find(|f| f["type"] == kind).and_then(|f| f["key"].as_str()).map(str::to_string);
    Ok(Provider {
        identifier: identifier.into(),
        title: title.into(),
        root: root.trim_end_matches('/').into(),
        metadata_key: key("metadata").ok_or("no metadata feature")?,
        match_key: key("match").ok_or("no match feature")?,
        collection_key: key("collection"),
    })
}

/// One provider call an item waits for, with what Plex sends.
struct Job {
    rating_key: u64,
    provider: Provider,
    pull: Pull,
    body: Value,
    /// Whether LAN image URLs can be fetched ([`PlexState::lan_images_reachable`]).
    lan_images: bool,
}

/// What Plex sends to match `item`: its type, a title made of the file
/// name, a year found in it, the file's path, and on a re-match its guid.
fn match_body(state: &PlexState, item: &Item, provider: &Provider, manual: bool) -> Value {
    let file = item.files().next().map(|p| p.file.clone()).unwrap_or_default();
    let location =
        state.section(item.section).and_then(|s| s.locations.iter().find(|l| super::state::in_folder(&file, l)));
    let filename = match location {
        Some(l) if !state.provider_full_paths => file[l.trim_end_matches('/').len()..].to_string(),
        _ => file.clone(),
    };
    let stem = super::state::file_stem(&file);
    let mut body = json!({
        "type": 1,
        "title": item.field("title").unwrap_or(stem),
        "filename": filename,
        "includeChildren": 0,
    });
    if let Some(adult) = state.provider_include_adult {
        body["includeAdult"] = json!(adult);
    }
    if let Some(year) = item.field("year").and_then(|y| y.parse::<i64>().ok()) {
        body["year"] = json!(year);
    }
    if item.guid.starts_with(&format!("{}://", provider.identifier)) {
        body["guid"] = json!(item.guid);
    }
    if manual {
        body["manual"] = json!(1);
    }
    body
}

/// The items waiting for a provider, taken from the state.
fn take_jobs(state: &mut PlexState) -> Vec<Job> {
    if state.providers.is_empty() {
        return Vec::new();
    }
    let waiting: Vec<u64> = state.items.values().filter(|i| i.pull.is_some()).map(|i| i.rating_key).collect();
    let mut jobs = Vec::new();
    for rk in waiting {
        let item = &state.items[&rk];
        let Some(provider) = state.provider_of(item.section).cloned() else { continue };
        let body = match_body(state, item, &provider, false);
        let pull = state.items.get_mut(&rk).and_then(|mut i| i.pull.take()).expect("waiting");
        jobs.push(Job { rating_key: rk, provider, pull, body, lan_images: state.lan_images_reachable });
    }
    state.pulls_in_flight += jobs.len();
    jobs
}

/// Runs while the emulator runs: finishes scans and answers every item
/// waiting for its provider.
pub(crate) async fn run(shared: Arc<Shared>) {
    let http = client();
    loop {
        let jobs = {
            let mut state = shared.state.lock();
            state.materialize_due(Instant::now());
            take_jobs(&mut state)
        };
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut calls = futures_util::stream::iter(jobs.into_iter().map(|job| {
            let http = http.clone();
            async move {
                let result = pull(&http, &job).await;
                (job, result)
            }
        }))
        .buffer_unordered(AT_ONCE);
        while let Some((job, result)) = calls.next().await {
            let mut state = shared.state.lock();
            state.pulls_in_flight -= 1;
            match result {
                Ok(Some(answer)) => apply(&mut state, job.rating_key, &answer),
                Ok(None) => {}
                Err(e) => {
                    let line = format!("item {}: provider {}: {e}", job.rating_key, job.provider.identifier);
                    tracing::warn!("{line}");
                    state.agent_log.push(line);
                }
            }
        }
    }
}

/// A provider's item and its downloaded images.
pub(crate) struct Answer {
    metadata: Value,
    poster: Option<Vec<u8>>,
    art: Option<Vec<u8>>,
    /// Images that could not be downloaded.
    log: Vec<String>,
    /// Image URLs Plex's cloud refused.
    refused: Vec<String>,
}

/// Plex's provider docs list these answers and no other.
const DOCUMENTED: [u16; 4] = [200, 400, 404, 500];

/// The error of an answer that is not a success, as Plex's log says it.
fn status_error(what: &str, status: reqwest::StatusCode) -> String {
    if DOCUMENTED.contains(&status.as_u16()) {
        format!("{what}: HTTP {status}")
    } else {
        format!("{what}: HTTP {status}, which the provider protocol does not define")
    }
}

fn url_of(provider: &Provider, key: &str) -> String {
    format!("{}{}", provider.root, key)
}

async fn post_match(http: &reqwest::Client, provider: &Provider, body: &Value) -> Result<Vec<Value>, String> {
    let url = url_of(provider, &provider.match_key);
    let answer = http.post(&url).json(body).header("Accept", "application/json").send().await;
    let answer = answer.map_err(|e| format!("match: {e}"))?;
    if !answer.status().is_success() {
        return Err(status_error("match", answer.status()));
    }
    let v: Value = answer.json().await.map_err(|e| format!("match: not JSON: {e}"))?;
    Ok(v["MediaContainer"]["Metadata"].as_array().cloned().unwrap_or_default())
}

/// Matches (unless a guid was chosen), then reads the metadata; `None`
/// when the provider has no match.
async fn pull(http: &reqwest::Client, job: &Job) -> Result<Option<Answer>, String> {
    let rating_key = match &job.pull {
        Pull::Fix(guid) => guid.rsplit('/').next().unwrap_or_default().to_string(),
        Pull::Match | Pull::Refresh => {
            let candidates = post_match(http, &job.provider, &job.body).await?;
            let best = candidates.first().filter(|c| c["score"].as_u64().unwrap_or(0) > MATCH_SCORE);
            match best.and_then(|c| c["ratingKey"].as_str()) {
                Some(rk) => rk.to_string(),
                None => return Ok(None),
            }
        }
    };
    let metadata = read_metadata(http, &job.provider, &rating_key).await?;
    let image = |kind: &str| {
        metadata["Image"].as_array().and_then(|l| l.iter().find(|i| i["type"] == kind)).and_then(|i| i["url"].as_str())
    };
    // An image that cannot be downloaded leaves the item's own (Plex logs
    // it); the metadata is taken all the same. A LAN URL goes through
    // Plex's cloud, which cannot reach it.
    let (mut log, mut refused) = (Vec::new(), Vec::new());
    let mut fetch = async |url: Option<&str>| match url {
        Some(url) if !job.lan_images && super::state::lan_url(url) => {
            log.push(format!("https://images.plex.tv/photo?url=… ({url}): HTTP 400"));
            refused.push(url.to_string());
            None
        }
        Some(url) => download(http, url).await.map_err(|e| log.push(e)).ok(),
        None => None,
    };
    let poster = fetch(image("coverPoster")).await;
    let art = fetch(image("background")).await;
    Ok(Some(Answer { metadata, poster, art, log, refused }))
}

/// `GET {root}{metadata key}/{ratingKey}`, checked as Plex checks it.
async fn read_metadata(http: &reqwest::Client, provider: &Provider, rating_key: &str) -> Result<Value, String> {
    if rating_key.is_empty() || !rating_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("ratingKey {rating_key:?} has characters Plex refuses"));
    }
    let url = format!("{}/{rating_key}", url_of(provider, &provider.metadata_key));
    let answer = http.get(&url).header("Accept", "application/json").send().await;
    let answer = answer.map_err(|e| format!("metadata: {e}"))?;
    if !answer.status().is_success() {
        return Err(status_error(&format!("metadata {rating_key}"), answer.status()));
    }
    let v: Value = answer.json().await.map_err(|e| format!("metadata: not JSON: {e}"))?;
    let m = v["MediaContainer"]["Metadata"][0].clone();
    check_item(provider, rating_key, &m)?;
    Ok(m)
}

/// What Plex refuses in a provider's item ("primary provider failed to
/// return a result"): the required fields, a guid with its type segment,
/// and a `Collection` without the collection feature or its guid and key.
pub fn check_item(provider: &Provider, rating_key: &str, m: &Value) -> Result<(), String> {
    let want_guid = format!("{}://movie/{rating_key}", provider.identifier);
    for (field, ok) in [
        ("ratingKey", m["ratingKey"] == rating_key),
        ("key", m["key"] == format!("{}/{rating_key}", provider.metadata_key)),
        ("guid", m["guid"] == want_guid.as_str()),
        ("type", m["type"] == "movie"),
        ("title", m["title"].as_str().is_some_and(|t| !t.is_empty())),
        // Required; an empty string when there is no date (Plex's example).
        ("originallyAvailableAt", m["originallyAvailableAt"].is_string()),
        // Collections only with the collection feature, each with its guid and key.
        (
            "Collection",
            m["Collection"].as_array().is_none_or(|l| {
                provider.collection_key.is_some() && l.iter().all(|c| c["guid"].is_string() && c["key"].is_string())
            }),
        ),
    ] {
        if !ok {
            return Err(format!(
                "primary provider failed to return a result: {field} is {} in item {rating_key}",
                m[field]
            ));
        }
    }
    Ok(())
}

async fn download(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let answer = http.get(url).send().await.map_err(|e| format!("image: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("image {url}: HTTP {}", answer.status()));
    }
    Ok(answer.bytes().await.map_err(|e| format!("image: {e}"))?.to_vec())
}

/// The item takes the answer's values for every field it has not locked;
/// a field the answer leaves out is cleared (the agent's metadata replaces
/// the agent's metadata).
pub(crate) fn apply(state: &mut PlexState, rating_key: u64, answer: &Answer) {
    state.agent_log.extend(answer.log.iter().map(|e| format!("item {rating_key}: {e}")));
    for url in &answer.refused {
        state.through_cloud(url);
    }
    let m = &answer.metadata;
    // An actor's photo is a URL Plex's clients fetch through the cloud.
    for role in m["Role"].as_array().into_iter().flatten() {
        if let Some(thumb) = role["thumb"].as_str() {
            state.through_cloud(thumb);
        }
    }
    let tags: Vec<(TagKind, Vec<Tag>)> = TAGS
        .iter()
        .map(|(element, kind)| {
            let list = m[*element].as_array().cloned().unwrap_or_default();
            let tags = list
                .iter()
                .filter_map(|t| t["tag"].as_str().filter(|s| !s.is_empty()).map(|name| (name.to_string(), t)))
                .map(|(name, t)| Tag {
                    id: state.tag_id(*kind, &name),
                    tag: name,
                    role: t["role"].as_str().map(str::to_string),
                    thumb: t["thumb"].as_str().map(str::to_string),
                })
                .collect();
            (*kind, tags)
        })
        .collect();
    let Some(mut item) = state.items.get_mut(&rating_key) else { return };
    let item = &mut *item;
    for field in SCALARS {
        if item.locked.contains(*field) {
            continue;
        }
        let value = match &m[*field] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match value {
            Some(v) => {
                item.fields.insert(field.to_string(), v);
            }
            // An item always has a title.
            None if *field != "title" => {
                item.fields.remove(*field);
            }
            None => {}
        }
    }
    for (kind, list) in tags {
        if !item.locked.contains(kind.param()) {
            item.tags.insert(kind, list);
        }
    }
    for (lock, bytes, slot) in [("thumb", &answer.poster, &mut item.poster), ("art", &answer.art, &mut item.art)] {
        if let (false, Some(bytes)) = (item.locked.contains(lock), bytes) {
            *slot = Some(Image::Upload(bytes.clone()));
        }
    }
    if let Some(bytes) = &answer.poster {
        let key = content_key(bytes);
        if !item.uploads.contains(&key) {
            item.uploads.push(key);
        }
    }
    item.guid = m["guid"].as_str().unwrap_or_default().to_string();
    item.agent_matched = true;
    item.updated_at = unix_now().max(item.updated_at + 1);
}

/// Fix Match's search: the provider's candidates for `item` with
/// `manual=1`, as Plex lists them (`SearchResult`: guid, name, year, score).
pub(crate) async fn search(
    shared: &Shared,
    rating_key: u64,
    title: Option<String>,
    year: Option<i64>,
) -> Result<Vec<Value>, String> {
    let (provider, mut body) = {
        let state = shared.state.lock();
        let item = state.items.get(&rating_key).ok_or("no such item")?;
        let provider = state.provider_of(item.section).cloned().ok_or("the section's agent is not a provider")?;
        let body = match_body(&state, item, &provider, true);
        (provider, body)
    };
    if let Some(title) = title {
        body["title"] = json!(title);
    }
    if let Some(year) = year {
        body["year"] = json!(year);
    }
    let found = post_match(&client(), &provider, &body).await?;
    Ok(found
        .iter()
        .map(|c| json!({"guid": c["guid"], "name": c["title"], "year": c["year"], "score": c["score"], "thumb": c["thumb"]}))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Value {
        json!({
            "identifier": "tv.plex.agents.custom.example",
            "title": "Example",
            "Types": [{"type": 1, "Scheme": [{"scheme": "tv.plex.agents.custom.example"}]}],
            "Feature": [
                {"type": "metadata", "key": "/library/metadata"},
                {"type": "match", "key": "/library/metadata/matches"},
            ],
        })
    }

    #[test]
    fn an_item_is_refused_as_plex_refuses_it() {
        let p = check_manifest("http://127.0.0.1:1/provider/x", &manifest()).unwrap();
        let good = json!({
            "ratingKey": "7", "key": "/library/metadata/7", "guid": "tv.plex.agents.custom.example://movie/7",
            "type": "movie", "title": "A", "originallyAvailableAt": "",
        });
        assert!(check_item(&p, "7", &good).is_ok());
        let refused = |f: &dyn Fn(&mut Value)| {
            let mut m = good.clone();
            f(&mut m);
            check_item(&p, "7", &m).expect_err("refused")
        };
        assert!(refused(&|m| m["guid"] = json!("tv.plex.agents.custom.example://7")).contains("guid"));
        assert!(refused(&|m| drop(m.as_object_mut().unwrap().remove("originallyAvailableAt")))
            .contains("originallyAvailableAt"));
        assert!(refused(&|m| m["Collection"] = json!([{"tag": "Site: X"}])).contains("Collection"));
        let mut with_feature = manifest();
        with_feature["Feature"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "collection", "key": "/library/collections"}));
        let p = check_manifest("http://127.0.0.1:1/provider/x", &with_feature).unwrap();
        let mut m = good.clone();
        m["Collection"] = json!([{"tag": "Site: X"}]);
        assert!(check_item(&p, "7", &m).is_err(), "a collection needs its guid and key");
        m["Collection"] = json!([{"tag": "Site: X", "guid": "tv.plex.agents.custom.example://collection/1", "key": "/library/collections/1"}]);
        assert!(check_item(&p, "7", &m).is_ok());
        assert!(status_error("metadata 7", reqwest::StatusCode::SERVICE_UNAVAILABLE).contains("does not define"));
        assert!(!status_error("metadata 7", reqwest::StatusCode::INTERNAL_SERVER_ERROR).contains("does not define"));
    }

    #[test]
    fn a_manifest_is_refused_as_plex_refuses_it() {
        let root = "http://127.0.0.1:1/provider/x/";
        let p = check_manifest(root, &manifest()).unwrap();
        assert_eq!(
            (p.root.as_str(), p.match_key.as_str()),
            ("http://127.0.0.1:1/provider/x", "/library/metadata/matches")
        );
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut m = manifest();
            f(&mut m);
            check_manifest(root, &m).expect_err("refused")
        };
        assert!(broken(&|m| m["identifier"] = json!("tv.plex.agents.example")).contains("custom"));
        assert!(broken(&|m| m["identifier"] = json!("tv.plex.agents.custom.has space")).contains("identifier"));
        assert!(broken(&|m| m["identifier"] = json!("tv.plex.agents.custom.")).contains("identifier"));
        assert!(broken(&|m| m["title"] = json!("")).contains("title"));
        assert!(broken(&|m| m.as_object_mut().unwrap().remove("Types").map(drop).unwrap()).contains("Types"));
        assert!(broken(&|m| m["Types"][0]["type"] = json!(2)).contains("movie"));
        assert!(broken(&|m| m["Types"][0]["Scheme"][0]["scheme"] = json!("other")).contains("Scheme"));
        assert!(broken(&|m| m.as_object_mut().unwrap().remove("Feature").map(drop).unwrap()).contains("Feature"));
        assert!(broken(&|m| m["Feature"].as_array_mut().unwrap().truncate(1)).contains("match"));
    }
}
