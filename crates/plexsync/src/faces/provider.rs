//! The metadata provider face (Plex Media Server 1.43+): Plex pulls
//! Stash's metadata from the daemon when it scans or refreshes an item,
//! the successor of the legacy agent the old plugin asked Plex to refresh.
//!
//! The protocol: a manifest at the root, `POST …/library/metadata/matches`,
//! `GET …/library/metadata/{ratingKey}` with `/images` and `/extras`
//! (docs/provider.md). Matching is [`reverse`] over an in-memory index of
//! Stash's files; an item is made of the same [`desired`] values push
//! writes, so both deliveries agree.
//!
//! Plex sends providers no credentials. So every route lives under a
//! secret path segment (a capability URL) and anything else is 404; it
//! only reads; an answer holds nothing Plex would not show (no token, key
//! or Stash URL: images are served from here, each under a token that
//! opens that one image, as Plex shows image URLs to its users); Stash sees at most
//! [`STASH_AT_ONCE`] provider requests at a time, and a scene read is
//! reused for [`SCENE_CACHE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use url::Url;

use crate::clients::stash::{Image, Scene};
use crate::config::{Field, Settings};
use crate::error::{Error, ErrorClass};
use crate::faces::context::Context;
use crate::pipeline::desired::{self, Value as Wanted};
use crate::pipeline::reverse::{Candidate, Query, SceneIndex};
use crate::pipeline::sync::GALLERY_IMAGES_MAX;
use crate::secret::Secret;
use crate::store::{kv, Store};

/// Our provider's identifier: Plex requires the `tv.plex.agents.custom.` part.
pub const IDENTIFIER: &str = "tv.plex.agents.custom.plexsync";
/// The provider's name in Plex's settings.
const TITLE: &str = "PlexSync (Stash)";
/// Provider requests that may wait on Stash at once; more wait their turn
/// (Stash's SQLite has answered "database is locked" to floods).
pub const STASH_AT_ONCE: usize = 4;
/// How long a scene read from Stash answers again.
pub const SCENE_CACHE: Duration = Duration::from_secs(5);
/// How long a request waits for a Stash slot before answering 503.
const STASH_WAIT: Duration = Duration::from_secs(30);
/// Scenes changed in Stash reach the index this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A full read catches what no `updated_at` shows (deleted scenes).
const REBUILD_EVERY: Duration = Duration::from_secs(3600);
/// A match that finds nothing reads Stash's latest changes first, at most this often.
const MISS_REFRESH_GAP: Duration = Duration::from_secs(2);
/// The largest image passed on.
const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// Shortest secret path segment accepted.
const SECRET_MIN: usize = 16;

/// Scenes read lately, by id: when, and the scene (`None`: not in Stash).
type SceneCache = Mutex<HashMap<String, (Instant, Option<Arc<Scene>>)>>;

/// What the provider's handlers share.
pub struct Provider {
    ctx: RwLock<Option<Arc<Context>>>,
    secret: RwLock<Option<String>>,
    index: tokio::sync::RwLock<Option<SceneIndex>>,
    scenes: SceneCache,
    stash_slots: tokio::sync::Semaphore,
    last_miss_refresh: Mutex<Option<Instant>>,
}

impl Default for Provider {
    fn default() -> Self {
        Self {
            ctx: RwLock::new(None),
            secret: RwLock::new(None),
            index: tokio::sync::RwLock::new(None),
            scenes: Mutex::new(HashMap::new()),
            stash_slots: tokio::sync::Semaphore::new(STASH_AT_ONCE),
            last_miss_refresh: Mutex::new(None),
        }
    }
}

/// Whether `secret` may be the path segment: long, and URL-safe as is.
fn valid_secret(secret: &str) -> bool {
    secret.len() >= SECRET_MIN && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Refuses a `providerSecret` too weak to stand in for a login.
pub(crate) fn check_secret_setting(secret: Option<&Secret>) -> Result<(), Error> {
    match secret {
        Some(s) if !valid_secret(s.expose()) => Err(Error::new(
            ErrorClass::Config,
            format!(
                "providerSecret must be at least {SECRET_MIN} letters, digits, - or _ (it is the only thing between \
                 the network and the provider); remove it to use a random one kept in the data folder"
            ),
        )),
        _ => Ok(()),
    }
}

/// The provider's secret path segment: `providerSecret`, or a random one
/// made once and kept in the store.
pub(crate) fn secret(store: &Store, settings: &Settings) -> Result<String, Error> {
    check_secret_setting(settings.daemon.provider_secret.as_ref())?;
    if let Some(s) = &settings.daemon.provider_secret {
        return Ok(s.expose().to_string());
    }
    if let Some(s) = store.get_kv(kv::PROVIDER_SECRET)?.filter(|s| valid_secret(s)) {
        return Ok(s);
    }
    let made = hex::encode(rand::random::<[u8; 16]>());
    store.set_kv(kv::PROVIDER_SECRET, &made)?;
    Ok(made)
}

/// The URL to paste into Plex for a daemon listening on `listen`.
pub(crate) fn url(store: &Store, settings: &Settings, listen: &str) -> Result<Url, Error> {
    root_url(listen, &secret(store, settings)?)
}

/// The URL to paste into Plex: the daemon's address and the secret. An
/// address that listens on every interface is named as this machine.
fn root_url(listen: &str, secret: &str) -> Result<Url, Error> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| Error::new(ErrorClass::Config, format!("daemonListen {listen:?} is not an address: {e}")))?;
    let host = if addr.ip().is_unspecified() { "THIS-MACHINE".to_string() } else { addr.ip().to_string() };
    let mut url = Url::parse("http://localhost/").expect("valid");
    url.set_host(Some(&host)).map_err(|e| Error::new(ErrorClass::Config, format!("daemonListen {listen:?}: {e}")))?;
    url.set_port(Some(addr.port())).expect("http URLs take a port");
    url.path_segments_mut().expect("http URLs have a path").clear().extend(["provider", secret]);
    Ok(url)
}

impl Provider {
    /// Puts the settings in use (at the first answer of Stash, and after
    /// every change) and the secret path segment in place.
    pub(crate) fn set_context(&self, ctx: Arc<Context>, secret: String) {
        *self.ctx.write().unwrap_or_else(|e| e.into_inner()) = Some(ctx);
        *self.secret.write().unwrap_or_else(|e| e.into_inner()) = Some(secret);
        self.scenes.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn ctx(&self) -> Option<Arc<Context>> {
        self.ctx.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps the index of Stash's files: read whole at start, when the
    /// path mappings change and every hour; the changes every few seconds.
    pub(crate) async fn keep_fresh(self: Arc<Self>, stop: Arc<std::sync::atomic::AtomicBool>) {
        let mut maps = None;
        // After a failure, the next try waits longer (up to 5 minutes):
        // a Stash in trouble is not read in full every half second.
        let (mut not_before, mut failures) = (Instant::now(), 0u32);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match self.ctx() {
                Some(ctx) if Instant::now() >= not_before => {
                    let outcome = self.keep_fresh_once(&ctx, &mut maps).await;
                    if let Err(e) = outcome {
                        failures += 1;
                        let wait = REFRESH_EVERY.saturating_mul(1 << failures.min(6)).min(Duration::from_secs(300));
                        tracing::warn!("metadata provider: reading Stash's files: {e}; again in {}s", wait.as_secs());
                        not_before = Instant::now() + wait;
                    } else {
                        failures = 0;
                    }
                }
                _ => {}
            }
            crate::pipeline::worker::nap_unless(&stop, Duration::from_millis(500)).await;
        }
    }

    /// Reads the whole index when it is missing, old or made with other
    /// path mappings; otherwise Stash's changes when they are due.
    async fn keep_fresh_once(
        &self,
        ctx: &Context,
        maps: &mut Option<Vec<crate::config::PathMap>>,
    ) -> Result<(), Error> {
        let stale = {
            let index = self.index.read().await;
            index.as_ref().and_then(|i| i.built_at).is_none_or(|t| t.elapsed() > REBUILD_EVERY)
                || maps.as_ref() != Some(&ctx.settings.path_maps)
        };
        if stale {
            let index = SceneIndex::build(&ctx.stash, &ctx.settings.path_maps).await?;
            tracing::info!("metadata provider: {} Stash scenes indexed by file", index.len());
            *self.index.write().await = Some(index);
            *maps = Some(ctx.settings.path_maps.clone());
            Ok(())
        } else {
            self.refresh(ctx, REFRESH_EVERY).await
        }
    }

    /// Reads Stash's changes into the index unless it did within `gap`.
    /// Stash is asked without holding the index, so matches go on meanwhile.
    async fn refresh(&self, ctx: &Context, gap: Duration) -> Result<(), Error> {
        let since = {
            let index = self.index.read().await;
            match index.as_ref() {
                Some(i) if i.refreshed_at.is_none_or(|t| t.elapsed() >= gap) => i.cursor(),
                _ => return Ok(()),
            }
        };
        let rows = ctx.stash.file_rows(since.as_deref(), &mut |_, _| {}).await;
        let mut index = self.index.write().await;
        let Some(index) = index.as_mut() else { return Ok(()) };
        // Tried either way: a failing Stash is asked again after `gap`.
        index.refreshed_at = Some(Instant::now());
        let rows = rows?;
        if !rows.is_empty() {
            tracing::debug!("metadata provider: {} changed scenes read", rows.len());
        }
        index.add_rows(rows);
        Ok(())
    }

    /// One of the [`STASH_AT_ONCE`] turns at Stash, waited for at most
    /// [`STASH_WAIT`].
    async fn stash_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        let waited = tokio::time::timeout(STASH_WAIT, self.stash_slots.acquire()).await;
        let slot = waited
            .map_err(|_| Error::new(ErrorClass::StashUnavailable, "too many provider requests wait for Stash"))?;
        Ok(slot.expect("never closed"))
    }

    /// The scene, read from Stash at most every [`SCENE_CACHE`], by at
    /// most [`STASH_AT_ONCE`] requests at a time.
    async fn scene(&self, ctx: &Context, id: &str) -> Result<Option<Arc<Scene>>, Error> {
        let cached = |scenes: &SceneCache| {
            let scenes = scenes.lock().unwrap_or_else(|e| e.into_inner());
            scenes.get(id).filter(|(at, _)| at.elapsed() < SCENE_CACHE).map(|(_, s)| s.clone())
        };
        if let Some(scene) = cached(&self.scenes) {
            return Ok(scene);
        }
        let _slot = self.stash_slot().await?;
        // Another request may have read it while this one waited.
        if let Some(scene) = cached(&self.scenes) {
            return Ok(scene);
        }
        let scene = ctx.stash.find_scene(id).await?.map(Arc::new);
        let mut scenes = self.scenes.lock().unwrap_or_else(|e| e.into_inner());
        scenes.retain(|_, (at, _)| at.elapsed() < SCENE_CACHE);
        scenes.insert(id.to_string(), (Instant::now(), scene.clone()));
        Ok(scene)
    }
}

impl Provider {
    /// The scene, when it exists and passes the sync's gates; a gated
    /// scene is answered as a missing one.
    async fn shown_scene(&self, ctx: &Context, id: &str) -> Result<Option<Arc<Scene>>, Error> {
        let scene = self.scene(ctx, id).await?;
        Ok(scene.filter(|s| crate::pipeline::library::gate(s, &ctx.settings).is_none()))
    }
}

/// The provider's routes, each under `/provider/<secret>`.
pub(crate) fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/provider/{secret}", any(root))
        .route("/provider/{secret}/", any(root))
        .route("/provider/{secret}/{*rest}", any(entry))
        .route("/provider-image/{token}/{*rest}", any(image_entry))
        .with_state(provider)
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "Not Found\n").into_response()
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "10")], format!("{why}\n")).into_response()
}

/// The context, when `given` is the secret and Stash has answered;
/// otherwise the answer (boxed: a response is large).
fn admitted(p: &Provider, given: &str) -> Result<Arc<Context>, Box<Response>> {
    let secret = p.secret.read().unwrap_or_else(|e| e.into_inner()).clone();
    match secret {
        Some(s) if crate::secret::same(s.as_bytes(), given.as_bytes()) => {
            p.ctx().ok_or_else(|| Box::new(unavailable("waiting for Stash")))
        }
        // Before Stash answered the secret is unknown: nothing to reveal either way.
        None => Err(Box::new(unavailable("waiting for Stash"))),
        Some(_) => Err(Box::new(not_found())),
    }
}

async fn root(State(p): State<Arc<Provider>>, Path(secret): Path<String>, method: Method) -> Response {
    if let Err(refused) = admitted(&p, &secret) {
        return *refused;
    }
    if method != Method::GET && method != Method::HEAD {
        return not_found();
    }
    Json(manifest()).into_response()
}

/// `GET {root}`: who we are and what we answer.
pub fn manifest() -> Value {
    json!({"MediaProvider": {
        "identifier": IDENTIFIER,
        "title": TITLE,
        "version": env!("CARGO_PKG_VERSION"),
        "Types": [{"type": 1, "Scheme": [{"scheme": IDENTIFIER}]}],
        "Feature": [
            {"type": "metadata", "key": "/library/metadata"},
            {"type": "match", "key": "/library/metadata/matches"},
        ],
    }})
}

async fn entry(
    State(p): State<Arc<Provider>>,
    Path((secret, rest)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let ctx = match admitted(&p, &secret) {
        Ok(ctx) => ctx,
        Err(refused) => return *refused,
    };
    let Some(base) = origin(&headers) else {
        return (StatusCode::BAD_REQUEST, "Host header required\n").into_response();
    };
    let images = Images { origin: &base, secret: &secret };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let answer = match (&method, parts.as_slice()) {
        (&Method::GET | &Method::HEAD, []) => Ok(Json(manifest()).into_response()),
        (&Method::POST, ["library", "metadata", "matches"]) => {
            Ok(matches(&p, &ctx, &images, query.as_deref(), &body).await)
        }
        (&Method::GET | &Method::HEAD, ["library", "metadata", rk]) => metadata(&p, &ctx, &images, rk).await,
        (&Method::GET | &Method::HEAD, ["library", "metadata", rk, "images"]) => {
            list_images(&p, &ctx, &images, rk).await
        }
        (&Method::GET | &Method::HEAD, ["library", "metadata", rk, "extras"]) if is_scene_id(rk) => {
            Ok(Json(container(Vec::new())).into_response())
        }
        _ => Ok(not_found()),
    };
    answer.unwrap_or_else(failed)
}

/// The answer to a failure: 503 while Stash does not answer, else 500.
fn failed(e: Error) -> Response {
    {
        tracing::warn!("metadata provider: {e}");
        match e.class {
            ErrorClass::StashUnavailable | ErrorClass::Auth => unavailable("Stash does not answer; try again"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "the provider failed; PlexSync's log says why\n").into_response(),
        }
    }
}

/// `GET /provider-image/{token}/scene/{id}[/performer/{pid}]`: one image,
/// its token checked; the root secret is never needed (nor given).
async fn image_entry(
    State(p): State<Arc<Provider>>,
    Path((token, rest)): Path<(String, String)>,
    method: Method,
) -> Response {
    let secret = p.secret.read().unwrap_or_else(|e| e.into_inner()).clone();
    let (Some(secret), Some(ctx)) = (secret, p.ctx()) else { return unavailable("waiting for Stash") };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (id, of) = match parts.as_slice() {
        ["scene", id] => (*id, Of::Cover),
        ["scene", id, "performer", pid] => (*id, Of::Performer(pid)),
        // The token names the image with its scene: only images of that
        // scene's galleries were ever given one.
        ["scene", id, "gallery", image] => (*id, Of::Gallery(image)),
        _ => return not_found(),
    };
    let named = parts.join("/");
    let good = image_token_ok(&secret, &named, &token);
    if !good || (method != Method::GET && method != Method::HEAD) {
        return not_found();
    }
    image(&p, &ctx, id, of).await.unwrap_or_else(failed)
}

/// Which of a scene's images a URL names.
#[derive(Clone, Copy)]
enum Of<'a> {
    Cover,
    Performer(&'a str),
    Gallery(&'a str),
}

/// Builds the URLs of a scene's images as Plex is to fetch them.
struct Images<'a> {
    /// `http://<Host>/`, as Plex reached the provider.
    origin: &'a Url,
    secret: &'a str,
}

impl Images<'_> {
    /// The URL of the image `segments` names (`scene/<id>[/performer/<pid>]`).
    fn url(&self, segments: &[&str]) -> String {
        let token = image_token(self.secret, &segments.join("/"));
        let mut url = self.origin.clone();
        url.path_segments_mut()
            .expect("http URLs have a path")
            .clear()
            .push("provider-image")
            .push(&token)
            .extend(segments);
        url.to_string()
    }
}

/// The token of one image URL: an HMAC of what it names under the
/// provider's secret. Plex shows image URLs (an actor's photo) to every
/// user of the server; such a URL opens that image and nothing else.
fn image_token(secret: &str, named: &str) -> String {
    hex::encode(&image_mac(secret, named).finalize().into_bytes()[..IMAGE_TOKEN_BYTES])
}

/// Whether `token` is the token of the image `named`, checked by the HMAC
/// crate's own constant-time verification.
fn image_token_ok(secret: &str, named: &str, token: &str) -> bool {
    match hex::decode(token) {
        Ok(tag) if tag.len() == IMAGE_TOKEN_BYTES => image_mac(secret, named).verify_truncated_left(&tag).is_ok(),
        _ => false,
    }
}

/// The first bytes of the HMAC that make an image token.
const IMAGE_TOKEN_BYTES: usize = 16;

fn image_mac(secret: &str, named: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(b"plexsync provider image\0");
    mac.update(named.as_bytes());
    mac
}

/// A scene id as Stash writes it: digits without a leading zero, within
/// SQLite's integers (so `7` and `007` are never two answers).
fn is_scene_id(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0') && s.parse::<i64>().is_ok()
}

/// The daemon as Plex reached it (its `Host`, which `web.rs` admitted),
/// for the image URLs Plex fetches.
fn origin(headers: &HeaderMap) -> Option<Url> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.is_empty() || host.contains(['/', '@', '?', '#', '\\']) {
        return None;
    }
    Url::parse(&format!("http://{host}/")).ok()
}

fn container(metadata: Vec<Value>) -> Value {
    json!({"MediaContainer": {
        "offset": 0,
        "totalSize": metadata.len(),
        "identifier": IDENTIFIER,
        "size": metadata.len(),
        "Metadata": metadata,
    }})
}

fn guid(id: &str) -> String {
    format!("{IDENTIFIER}://movie/{id}")
}

/// The scene id a guid of ours names.
fn scene_in_guid(guid: &str) -> Option<&str> {
    guid.strip_prefix(IDENTIFIER)?.strip_prefix("://movie/").filter(|id| is_scene_id(id))
}

/// A field of the match request: the JSON body's, else the query's.
/// Numbers may come as numbers, strings or booleans.
fn field(body: &Map<String, Value>, query: &[(String, String)], name: &str) -> Option<String> {
    match body.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(if *b { "1" } else { "0" }.into()),
        _ => query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
    }
}

/// `POST …/matches`: the scene that holds the file Plex names.
async fn matches(p: &Provider, ctx: &Context, images: &Images<'_>, query: Option<&str>, body: &[u8]) -> Response {
    let body: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        _ if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
        _ => return (StatusCode::BAD_REQUEST, "the body is not a JSON object\n").into_response(),
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
    let get = |name: &str| field(&body, &query, name);
    if get("type").is_some_and(|t| t.trim() != "1") {
        return Json(container(Vec::new())).into_response();
    }
    let (filename, title, guid_given) = (get("filename"), get("title"), get("guid"));
    let manual = get("manual").is_some_and(|m| m == "1" || m == "true");
    let q = Query {
        filename: filename.as_deref().filter(|f| !f.trim().is_empty()),
        title: title.as_deref(),
        year: get("year").and_then(|y| y.trim().parse().ok()),
        scene_id: guid_given.as_deref().and_then(scene_in_guid),
        manual,
        // The old plugin's default: an unorganized scene's metadata is not ready.
        organized_only: ctx.settings.skip_unorganized,
    };
    if p.index.read().await.is_none() {
        // No answer rather than "no match": Plex would keep that.
        return unavailable("indexing Stash's files; try again in a minute");
    }
    let mut found = gated(p, ctx, find(p, &q).await).await;
    if found.is_empty() && !manual && q.filename.is_some() {
        // Plex may have scanned a file Stash has only just scanned too.
        let due = {
            let mut last = p.last_miss_refresh.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= MISS_REFRESH_GAP);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due && p.refresh(ctx, Duration::ZERO).await.is_ok() {
            found = gated(p, ctx, find(p, &q).await).await;
        }
    }
    tracing::debug!("metadata provider: match {:?} (manual: {manual}): {} candidates", q.filename, found.len());
    let metadata = found.iter().map(|c| candidate_json(c, images)).collect();
    Json(container(metadata)).into_response()
}

async fn find(p: &Provider, q: &Query<'_>) -> Vec<Candidate> {
    p.index.read().await.as_ref().map(|i| i.find(q)).unwrap_or_default()
}

fn candidate_json(c: &Candidate, images: &Images<'_>) -> Value {
    let mut m = json!({
        "ratingKey": c.scene_id,
        "key": format!("/library/metadata/{}", c.scene_id),
        "guid": guid(&c.scene_id),
        "type": "movie",
        "title": c.title,
        "score": c.score,
        "thumb": images.url(&["scene", &c.scene_id]),
    });
    if let Some(year) = c.year {
        m["year"] = json!(year);
    }
    m
}

/// `GET …/library/metadata/{id}`: the scene as push would write it.
/// `found` less the scenes the sync's gates stop (`RequireURL`,
/// `RequireStashID`; the index itself leaves out unorganized scenes): the
/// agent gave a gated scene no metadata, and neither does its successor.
async fn gated(p: &Provider, ctx: &Context, found: Vec<Candidate>) -> Vec<Candidate> {
    let prefs = &ctx.settings.agent;
    if !prefs.require_url && !prefs.require_stash_id {
        return found;
    }
    let mut kept = Vec::with_capacity(found.len());
    for c in found {
        if let Ok(Some(_)) = p.shown_scene(ctx, &c.scene_id).await {
            kept.push(c);
        }
    }
    kept
}

async fn metadata(p: &Provider, ctx: &Context, images: &Images<'_>, rk: &str) -> Result<Response, Error> {
    if !is_scene_id(rk) {
        return Ok(not_found());
    }
    let Some(scene) = p.shown_scene(ctx, rk).await? else { return Ok(not_found()) };
    let mut item = item(&scene, &ctx.settings, images);
    add_gallery_images(p, ctx, &scene, images, &mut item).await?;
    Ok(Json(container(vec![item])).into_response())
}

/// `IncludeGalleryImages`: the scene's gallery images after its cover, as
/// posters and backgrounds (by orientation with `SortGalleryImages`), each
/// under its own token (one Stash request for them all).
async fn add_gallery_images(
    p: &Provider,
    ctx: &Context,
    scene: &Scene,
    images: &Images<'_>,
    item: &mut Value,
) -> Result<(), Error> {
    let prefs = &ctx.settings.agent;
    if !prefs.gallery_images || !ctx.settings.owns(Field::Poster) || scene.galleries.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = scene.galleries.iter().map(|g| g.id.clone()).collect();
    let found = {
        let _slot = p.stash_slot().await?;
        ctx.stash.gallery_images(&ids, GALLERY_IMAGES_MAX).await?.0
    };
    let mut list = item.get("Image").and_then(Value::as_array).cloned().unwrap_or_default();
    for image in found.iter().filter(|i| is_scene_id(&i.id)) {
        let url = images.url(&["scene", &scene.id, "gallery", &image.id]);
        let kinds: &[&str] = match (prefs.sort_gallery_images, image.portrait()) {
            (true, true) => &["coverPoster"],
            (true, false) => &["background"],
            (false, _) => &["coverPoster", "background"],
        };
        list.extend(kinds.iter().map(|kind| json!({"type": kind, "url": url, "alt": item["title"]})));
    }
    item["Image"] = json!(list);
    Ok(())
}

/// `GET …/library/metadata/{id}/images`.
async fn list_images(p: &Provider, ctx: &Context, images: &Images<'_>, rk: &str) -> Result<Response, Error> {
    if !is_scene_id(rk) {
        return Ok(not_found());
    }
    let Some(scene) = p.shown_scene(ctx, rk).await? else { return Ok(not_found()) };
    let mut item = item(&scene, &ctx.settings, images);
    add_gallery_images(p, ctx, &scene, images, &mut item).await?;
    let list = item.get("Image").cloned().unwrap_or_else(|| json!([]));
    let size = list.as_array().map_or(0, Vec::len);
    Ok(Json(json!({"MediaContainer": {"offset": 0, "size": size, "identifier": IDENTIFIER, "Image": list}}))
        .into_response())
}

/// The provider's item for `scene`: the required fields, then every
/// owned field of `syncFields` as [`desired`] computes it for push.
fn item(scene: &Scene, settings: &Settings, images: &Images<'_>) -> Value {
    let id = scene.id.as_str();
    let mut report = desired::Report::default();
    let wanted = desired::desired(scene, settings, &mut report);
    for why in &report.dropped {
        tracing::warn!("metadata provider: {why}");
    }
    let mut m = json!({
        "ratingKey": id,
        "key": format!("/library/metadata/{id}"),
        "guid": guid(id),
        "type": "movie",
        "title": desired::scene_title(scene),
    });
    let mut pictures = Vec::new();
    for d in wanted {
        match d.value {
            Wanted::Scalars(values) => {
                for (name, value) in values.into_iter().filter(|(_, v)| !v.is_empty()) {
                    m[name] = match name {
                        "year" => value.parse::<i64>().map_or(json!(value), |y| json!(y)),
                        "rating" => value.parse::<f64>().map_or(json!(value), |r| json!(r)),
                        _ => json!(value),
                    };
                    if name == "contentRating" {
                        // Plex's managed users are kept from adult items by both.
                        m["isAdult"] = json!(is_adult(&value));
                    }
                }
            }
            Wanted::Tags(kind, list) => {
                let element = match kind {
                    "genre" => "Genre",
                    "actor" => "Role",
                    "director" => "Director",
                    "collection" => "Collection",
                    _ => continue,
                };
                let tags: Vec<Value> = list
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let mut tag = json!({"tag": t.name});
                        if kind == "actor" {
                            tag["order"] = json!(i + 1);
                            if let Some(pid) = t.performer.as_deref().filter(|_| t.thumb.is_some()) {
                                tag["thumb"] = json!(images.url(&["scene", id, "performer", pid]));
                            }
                        }
                        tag
                    })
                    .collect();
                m[element] = json!(tags);
            }
            Wanted::Image(Some(_)) => {
                let url = images.url(&["scene", id]);
                let (kind, field) =
                    if d.field == Field::Poster { ("coverPoster", "thumb") } else { ("background", "art") };
                m[field] = json!(url);
                pictures.push(json!({"type": kind, "url": url, "alt": m["title"]}));
            }
            // A person's own rating is not the provider's to give.
            Wanted::Image(None) | Wanted::Rate(_) => {}
        }
    }
    if !pictures.is_empty() {
        m["Image"] = json!(pictures);
    }
    m
}

/// Whether a content rating marks adult content (`XXX`, `X`, `NC-17`,
/// `AO`): what Plex's `isAdult` says of an item.
fn is_adult(content_rating: &str) -> bool {
    ["xxx", "x", "nc-17", "ao"].contains(&content_rating.trim().to_ascii_lowercase().as_str())
}

/// An image route: the scene's cover or a
/// photo of one of its performers, fetched from Stash with PlexSync's
/// credentials. Only these two: no URL is ever taken from the request.
async fn image(p: &Provider, ctx: &Context, id: &str, of: Of<'_>) -> Result<Response, Error> {
    if !is_scene_id(id) {
        return Ok(not_found());
    }
    let Some(scene) = p.shown_scene(ctx, id).await? else { return Ok(not_found()) };
    let url = match of {
        Of::Cover => scene.paths.screenshot.clone(),
        Of::Performer(pid) => scene.performers.iter().find(|p| p.id == pid).and_then(|p| p.image_path.clone()),
        Of::Gallery(image) if is_scene_id(image) => Some(ctx.stash.image_url(image)),
        Of::Gallery(_) => None,
    };
    let Some(url) = url.filter(|u| !u.is_empty()) else { return Ok(not_found()) };
    let _slot = p.stash_slot().await?;
    match ctx.stash.image(&url, MAX_IMAGE_BYTES, None).await? {
        Image::Fetched { bytes, .. } => {
            let kind = image_type(&bytes);
            Ok(([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "private, max-age=300")], bytes).into_response())
        }
        // Stash's stand-in for a missing cover: Plex keeps its own frame.
        Image::Placeholder | Image::NotModified => Ok(not_found()),
    }
}

/// The type of an image by its first bytes (Stash's answer may say
/// `application/octet-stream` through some proxies).
fn image_type(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [b'G', b'I', b'F', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        _ => "image/jpeg",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_has_what_plex_requires() {
        let m = &manifest()["MediaProvider"];
        let id = m["identifier"].as_str().unwrap();
        let rest = id.strip_prefix("tv.plex.agents.custom.").expect("Plex requires the custom. part");
        assert!(!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
        assert_eq!(m["Types"][0]["type"], 1);
        assert_eq!(m["Types"][0]["Scheme"][0]["scheme"], id);
        let features: Vec<&str> =
            m["Feature"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(features, ["metadata", "match"]);
    }

    #[test]
    fn secrets_urls_and_guids() {
        assert!(!valid_secret("short"));
        assert!(!valid_secret("has a space in it, long enough"));
        assert!(valid_secret("0123456789abcdef"));
        let url = root_url("0.0.0.0:9977", "0123456789abcdef").unwrap();
        assert_eq!(url.as_str(), "http://this-machine:9977/provider/0123456789abcdef");
        assert_eq!(scene_in_guid(&guid("42")), Some("42"));
        assert_eq!(scene_in_guid("tv.plex.agents.custom.other://movie/42"), None);
        assert_eq!(scene_in_guid(&format!("{IDENTIFIER}://movie/../x")), None);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "evil.example/x@y".parse().unwrap());
        assert!(origin(&h).is_none(), "a Host header cannot reshape the URL");
        for (id, ok) in [("7", true), ("007", false), ("0", false), ("99999999999999999999", false), ("", false)] {
            assert_eq!(is_scene_id(id), ok, "{id:?}");
        }
        let base = Url::parse("http://127.0.0.1:9977/").unwrap();
        let images = Images { origin: &base, secret: "0123456789abcdef" };
        let url = images.url(&["scene", "7"]);
        assert!(url.starts_with("http://127.0.0.1:9977/provider-image/") && url.ends_with("/scene/7"), "{url}");
        assert!(!url.contains("0123456789abcdef"), "the secret never leaves in an image URL");
        assert_ne!(image_token("0123456789abcdef", "scene/7"), image_token("0123456789abcdef", "scene/8"));
        let token = image_token("0123456789abcdef", "scene/7");
        assert!(image_token_ok("0123456789abcdef", "scene/7", &token));
        assert!(!image_token_ok("0123456789abcdef", "scene/8", &token));
        assert!(!image_token_ok("0123456789abcdef", "scene/7", &token[..30]));
        assert!(!image_token_ok("0123456789abcdef", "scene/7", "not hex"));
    }
}
