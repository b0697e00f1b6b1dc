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
//! or Stash URL: a performer's photo is served from here under a token
//! that opens that one image, as Plex shows image URLs to its users);
//! Stash sees at most [`STASH_AT_ONCE`] provider requests at a time, and a
//! scene read is reused for [`SCENE_CACHE`].
//!
//! Plex hands a provider's LAN image URLs to its cloud image service,
//! which cannot reach a LAN. So items carry no poster or background: once
//! Plex has read a scene, the scene is queued ([`Reason::Provider`]) and
//! the worker uploads them (with collections, which the protocol takes
//! only as objects of their own) into the items that hold its file.
//!
//! Every answer is one of the documented 200, 400, 404 and 500, within
//! [`ANSWER_WITHIN`]. Plex does not ask again after a 500, so the files and
//! scenes it could not be answered about are kept ([`OWED_MAX`]) and queued
//! ([`Reason::Rematch`]) once Stash answers: the worker asks Plex to match
//! their items again.

use std::collections::{BTreeSet, HashMap};
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
use crate::config::Settings;
use crate::error::{Error, ErrorClass};
use crate::faces::context::{open_queue, Context};
use crate::ids::SceneId;
use crate::pipeline::desired::{self, Value as Wanted};
use crate::pipeline::picture;
use crate::pipeline::reverse::{Candidate, Query, SceneIndex};
use crate::secret::Secret;
use crate::store::{kv, Reason, Store};

/// Our provider's identifier: Plex requires the `tv.plex.agents.custom.` part.
pub const IDENTIFIER: &str = desired::PROVIDER_IDENTIFIER;
/// The provider's name in Plex's settings.
const TITLE: &str = "PlexSync (Stash)";
/// Provider requests that may wait on Stash at once; more wait their turn
/// (Stash's SQLite has answered "database is locked" to floods).
pub const STASH_AT_ONCE: usize = 4;
/// Fix Match searches (a title looked for in every scene) running at once;
/// one more is answered 503 at once. A person types one search at a time:
/// more are a flood, which must not take the threads Plex's automatic
/// matches and `/healthz` are answered on.
pub const SEARCHES_AT_ONCE: usize = 2;
/// The provider's failures as its log says them: each request can cause
/// one, so at most one line per 10 s (and the count of the rest).
static FAILURES: crate::logging::Summarized = crate::logging::Summarized::new(Duration::from_secs(10));
/// How long a scene read from Stash answers again.
pub const SCENE_CACHE: Duration = Duration::from_secs(5);
/// Every answer is given within this: Plex documents no timeout, one
/// report says 90 s, and PMS makes a few provider calls at a time while it
/// scans, so a slow answer holds up the scan. A healthy Stash answers a
/// scene read in well under a second; one that has not in 10 s is in
/// trouble, and the call is answered 500 and owed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Files and scenes Plex could not be answered about, kept to ask Plex
/// again (more are dropped, with a warning: the next reconcile or refresh
/// brings them).
pub const OWED_MAX: usize = 5000;
/// The longest `filename` kept as owed (a path is at most 4096 bytes on Linux).
const OWED_FILENAME_MAX: usize = 4096;
/// A scene Plex read is queued this long after, so Plex has applied the
/// answer before the worker reads the item.
const UPLOAD_AFTER: Duration = Duration::from_secs(3);
/// Scenes changed in Stash reach the index this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A full read catches what no `updated_at` shows (deleted scenes).
const REBUILD_EVERY: Duration = Duration::from_secs(3600);
/// A match that finds nothing reads Stash's latest changes first, at most this often.
const MISS_REFRESH_GAP: Duration = Duration::from_secs(2);
/// The largest image passed on.
const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// Scenes Plex read, waiting to be queued.
const PULLED_MAX: usize = 100_000;
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
    /// Fix Match searches running (see [`SEARCHES_AT_ONCE`]).
    searches: tokio::sync::Semaphore,
    last_miss_refresh: Mutex<Option<Instant>>,
    /// What the worker is to be told (see [`Owed`]).
    owed: Mutex<Owed>,
}

/// What Plex asked and the worker is to follow up, kept in memory until
/// the store takes it (every half second).
#[derive(Default)]
struct Owed {
    /// Scenes Plex read: their images and collections are to be pushed.
    pulled: BTreeSet<String>,
    /// Scenes whose metadata Plex could not be given.
    scenes: BTreeSet<String>,
    /// Files Plex could not be answered a match for (before the index was
    /// read, or while Stash did not answer).
    files: BTreeSet<String>,
    /// Owed entries dropped over [`OWED_MAX`], not yet warned of.
    dropped: usize,
}

impl Default for Provider {
    fn default() -> Self {
        Self {
            ctx: RwLock::new(None),
            secret: RwLock::new(None),
            index: tokio::sync::RwLock::new(None),
            scenes: Mutex::new(HashMap::new()),
            stash_slots: tokio::sync::Semaphore::new(STASH_AT_ONCE),
            searches: tokio::sync::Semaphore::new(SEARCHES_AT_ONCE),
            last_miss_refresh: Mutex::new(None),
            owed: Mutex::new(Owed::default()),
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

    /// Reads the scene `id` from Stash at the next call: PlexSync is about
    /// to ask Plex to refresh it after an edit.
    pub(crate) fn forget(&self, id: &str) {
        self.scenes.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
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
                    self.hand_over(&ctx).await;
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

    /// Queues what Plex read and, once the index is read, what Plex could
    /// not be answered about (the queue's retries wait for Stash); kept for
    /// the next turn when the store cannot be opened.
    async fn hand_over(&self, ctx: &Context) {
        let ready = self.index.read().await.is_some();
        let (pulled, scenes, files, dropped) = {
            let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            let scenes = if ready { std::mem::take(&mut owed.scenes) } else { BTreeSet::new() };
            let files = if ready { std::mem::take(&mut owed.files) } else { BTreeSet::new() };
            (std::mem::take(&mut owed.pulled), scenes, files, std::mem::take(&mut owed.dropped))
        };
        if dropped > 0 {
            tracing::warn!(
                "metadata provider: {dropped} unanswered Plex calls not kept (over {OWED_MAX}); \
                 Refresh all metadata in Plex matches their items again"
            );
        }
        if pulled.is_empty() && scenes.is_empty() && files.is_empty() {
            return;
        }
        let mut rematch = scenes.clone();
        for file in &files {
            let q = Query { filename: Some(file), organized_only: ctx.settings.skip_unorganized, ..Query::default() };
            rematch.extend(find(self, &q).await.into_iter().map(|c| c.scene_id));
        }
        // Off the runtime: the store may wait for the worker's write.
        let (dir, to_push, to_match) = (ctx.data_dir.clone(), pulled.clone(), rematch.clone());
        let queued = tokio::task::spawn_blocking(move || {
            let store = open_queue(&dir)?;
            let ids = |set: &BTreeSet<String>| set.iter().filter_map(|id| SceneId::exact(id)).collect::<Vec<_>>();
            store.enqueue_many_after(&ids(&to_push), Reason::Provider, UPLOAD_AFTER)?;
            store.enqueue_many(&ids(&to_match), Reason::Rematch)?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_or_else(|e| Err(Error::new(ErrorClass::Bug, format!("queueing stopped: {e}"))));
        tracing::debug!("metadata provider: {} scenes Plex read queued for their images", pulled.len());
        match queued {
            Ok(()) if !rematch.is_empty() => tracing::info!(
                "metadata provider: {} scenes queued to have Plex match their items again",
                rematch.len()
            ),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("metadata provider: queueing what Plex read: {e}; trying again");
                let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
                owed.pulled.extend(pulled);
                owed.scenes.extend(scenes);
                owed.files.extend(files);
            }
        }
    }

    /// Plex read the scene: its images and collections are to follow.
    fn pulled(&self, id: &str) {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        if owed.pulled.len() < PULLED_MAX {
            owed.pulled.insert(id.to_string());
        }
    }

    /// Plex could not be answered about the scene `id`, or the file
    /// `filename`: Plex is to be asked to match again.
    fn owe(&self, scene: Option<&str>, filename: Option<&str>) {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        if owed.scenes.len() + owed.files.len() >= OWED_MAX {
            owed.dropped += 1;
            return;
        }
        if let Some(id) = scene {
            owed.scenes.insert(id.to_string());
        }
        if let Some(f) = filename.filter(|f| f.len() <= OWED_FILENAME_MAX) {
            owed.files.insert(f.to_string());
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

    /// One of the [`STASH_AT_ONCE`] turns at Stash (each answer is bounded
    /// by [`ANSWER_WITHIN`] as a whole, the wait included).
    async fn stash_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.stash_slots.acquire().await.map_err(|_| Error::new(ErrorClass::Bug, "the Stash slots were closed"))
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
    /// The scene, when it exists, passes the sync's gates and has a file
    /// under the path mappings (what Plex could hold); any other is
    /// answered as a missing one, so the URL opens no more than Plex shows.
    async fn shown_scene(&self, ctx: &Context, id: &str) -> Result<Option<Arc<Scene>>, Error> {
        let scene = self.scene(ctx, id).await?;
        let maps = &ctx.settings.path_maps;
        Ok(scene.filter(|s| {
            crate::pipeline::library::gate(s, &ctx.settings).is_none()
                && s.files.iter().any(|f| crate::pipeline::matching::under_maps(&f.path, maps))
        }))
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

/// 503 with `why`, and when to ask again.
fn busy(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1"), (header::CONTENT_TYPE, "text/plain")],
        format!("{why}\n"),
    )
        .into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain")], "Not Found\n").into_response()
}

/// Plex's documented "server error" (its provider docs list 200, 400, 404
/// and 500 only). Plex keeps what it has and does not ask again by itself,
/// so the caller owes the call (see [`Owed`]).
fn server_error(why: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("{why}\n")).into_response()
}

/// The context, when `given` is the secret and Stash has answered;
/// otherwise the answer (boxed: a response is large).
fn admitted(p: &Provider, given: &str) -> Result<Arc<Context>, Box<Response>> {
    let secret = p.secret.read().unwrap_or_else(|e| e.into_inner()).clone();
    match secret {
        Some(s) if crate::secret::same(s.as_bytes(), given.as_bytes()) => {
            p.ctx().ok_or_else(|| Box::new(server_error("PlexSync is waiting for Stash")))
        }
        // Before Stash answered the secret is unknown: nothing to reveal either way.
        None => Err(Box::new(server_error("PlexSync is waiting for Stash"))),
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

/// `GET {root}`: who we are and what we answer. No `collection` feature:
/// collections are written by push (see [`Reason::Provider`]).
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
    let reads = method == Method::GET || method == Method::HEAD;
    match (reads, method == Method::POST, parts.as_slice()) {
        (true, _, []) => Json(manifest()).into_response(),
        (_, true, ["library", "metadata", "matches"]) => matches(&p, &ctx, query.as_deref(), &body).await,
        (true, _, ["library", "metadata", rk]) => {
            let answer = bounded(&p, rk, metadata(&p, &ctx, &images, rk)).await;
            if answer.status() == StatusCode::OK {
                p.pulled(rk);
            }
            answer
        }
        (true, _, ["library", "metadata", rk, "images"]) => bounded(&p, rk, list_images(&p, &ctx, rk)).await,
        (true, _, ["library", "metadata", rk, "extras"]) if is_scene_id(rk) => {
            Json(container(Vec::new())).into_response()
        }
        _ => not_found(),
    }
}

/// The answer of `work` for the scene `rk` within [`ANSWER_WITHIN`]; a
/// failure is answered 500, and owed when Stash was the cause.
async fn bounded(p: &Provider, rk: &str, work: impl std::future::Future<Output = Result<Response, Error>>) -> Response {
    within(work, || p.owe(Some(rk), None)).await.unwrap_or_else(|refused| refused)
}

/// `work`'s result within [`ANSWER_WITHIN`], or the 500 that answers its
/// failure; `owe` is called when Stash was the cause (down, or too slow).
async fn within<T>(
    work: impl std::future::Future<Output = Result<T, Error>>,
    owe: impl FnOnce(),
) -> Result<T, Response> {
    match tokio::time::timeout(ANSWER_WITHIN, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => {
            if owed_for(&e) {
                owe();
            }
            Err(failed(&e))
        }
        Err(_) => {
            owe();
            FAILURES.warn(|| format!("metadata provider: Stash did not answer within {}s", ANSWER_WITHIN.as_secs()));
            Err(server_error("Stash did not answer in time"))
        }
    }
}

/// Whether a failure passes with time (Stash down or slow), so that Plex
/// is to be asked again once Stash answers.
fn owed_for(e: &Error) -> bool {
    matches!(e.class, ErrorClass::StashUnavailable | ErrorClass::Auth)
}

/// The answer to a failure: 500, and why in PlexSync's log.
fn failed(e: &Error) -> Response {
    FAILURES.warn(|| format!("metadata provider: {e}"));
    if owed_for(e) {
        server_error("Stash does not answer; PlexSync will ask Plex to match again")
    } else {
        server_error("the provider failed; PlexSync's log says why")
    }
}

/// `GET /provider-image/{token}/scene/{id}/performer/{pid}`: a performer's
/// photo, its token checked; the root secret is never needed (nor given).
async fn image_entry(
    State(p): State<Arc<Provider>>,
    Path((token, rest)): Path<(String, String)>,
    method: Method,
) -> Response {
    let secret = p.secret.read().unwrap_or_else(|e| e.into_inner()).clone();
    let (Some(secret), Some(ctx)) = (secret, p.ctx()) else { return server_error("PlexSync is waiting for Stash") };
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let ["scene", id, "performer", pid] = parts.as_slice() else { return not_found() };
    let good = image_token_ok(&secret, &parts.join("/"), &token);
    if !good || (method != Method::GET && method != Method::HEAD) {
        return not_found();
    }
    // A photo is not a match: nothing for Plex to be asked again.
    within(performer_image(&p, &ctx, id, pid), || {}).await.unwrap_or_else(|refused| refused)
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
    SceneId::exact(s).is_some()
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

/// `POST …/matches`: the scene that holds the file Plex names. A match
/// that cannot be answered yet (the index is being read, Stash does not
/// answer the gates) is 500 and owed, never "no match", which Plex keeps.
/// `includeAdult` is not read: what PMS sends is undocumented, and every
/// scene in Stash is the library owner's own (docs/provider.md).
async fn matches(p: &Provider, ctx: &Context, query: Option<&str>, body: &[u8]) -> Response {
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
    let owe = || {
        if !manual {
            p.owe(None, q.filename);
        }
    };
    if p.index.read().await.is_none() {
        owe();
        return server_error("PlexSync is reading Stash's files; it will ask Plex to match again");
    }
    // Held until the answer is made; automatic matches (a lookup by file
    // name) need none.
    let _search = match manual {
        true => match p.searches.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => return busy("too many Fix Match searches at once; search again in a moment"),
        },
        false => None,
    };
    match within(candidates(p, ctx, &q), owe).await {
        Ok(found) => {
            tracing::debug!("metadata provider: match {:?} (manual: {manual}): {} candidates", q.filename, found.len());
            Json(container(found.iter().map(candidate_json).collect())).into_response()
        }
        Err(refused) => refused,
    }
}

/// The scenes that may hold the file, best first, less those the gates stop.
async fn candidates(p: &Provider, ctx: &Context, q: &Query<'_>) -> Result<Vec<Candidate>, Error> {
    let mut found = gated(p, ctx, find(p, q).await).await?;
    if found.is_empty() && !q.manual && q.filename.is_some() {
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
            found = gated(p, ctx, find(p, q).await).await?;
        }
    }
    Ok(found)
}

async fn find(p: &Provider, q: &Query<'_>) -> Vec<Candidate> {
    p.index.read().await.as_ref().map(|i| i.find(q)).unwrap_or_default()
}

/// A match candidate: what Plex requires of one, and its score. No image:
/// Fix Match would show it through Plex's cloud, which cannot reach a LAN.
fn candidate_json(c: &Candidate) -> Value {
    let mut m = json!({
        "ratingKey": c.scene_id,
        "key": format!("/library/metadata/{}", c.scene_id),
        "guid": guid(&c.scene_id),
        "type": "movie",
        "title": c.title,
        "score": c.score,
    });
    if let Some(year) = c.year {
        m["year"] = json!(year);
    }
    m
}

/// `found` less the scenes the sync's gates stop (`RequireURL`,
/// `RequireStashID`; the index itself leaves out unorganized scenes): the
/// agent gave a gated scene no metadata, and neither does its successor.
async fn gated(p: &Provider, ctx: &Context, found: Vec<Candidate>) -> Result<Vec<Candidate>, Error> {
    let prefs = &ctx.settings.agent;
    if !prefs.require_url && !prefs.require_stash_id && ctx.settings.path_maps.is_empty() {
        return Ok(found);
    }
    let mut kept = Vec::with_capacity(found.len());
    for c in found {
        if p.shown_scene(ctx, &c.scene_id).await?.is_some() {
            kept.push(c);
        }
    }
    Ok(kept)
}

/// `GET …/library/metadata/{id}`: the scene as push would write it, less
/// what push writes after Plex's read (images, collections).
async fn metadata(p: &Provider, ctx: &Context, images: &Images<'_>, rk: &str) -> Result<Response, Error> {
    if !is_scene_id(rk) {
        return Ok(not_found());
    }
    let Some(scene) = p.shown_scene(ctx, rk).await? else { return Ok(not_found()) };
    Ok(Json(container(vec![item(&scene, &ctx.settings, images)])).into_response())
}

/// `GET …/library/metadata/{id}/images`: none. The poster, background and
/// gallery images are uploaded into the item once Plex has read it.
async fn list_images(p: &Provider, ctx: &Context, rk: &str) -> Result<Response, Error> {
    if !is_scene_id(rk) || p.shown_scene(ctx, rk).await?.is_none() {
        return Ok(not_found());
    }
    Ok(Json(json!({"MediaContainer": {"offset": 0, "size": 0, "identifier": IDENTIFIER, "Image": []}})).into_response())
}

/// The provider's item for `scene`: the required fields (an empty
/// `originallyAvailableAt` without a date, as Plex's own example sends),
/// `isAdult`, then every owned field of `syncFields` as [`desired`]
/// computes it for push, less images and collections (push writes them).
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
        "originallyAvailableAt": "",
        "isAdult": false,
    });
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
            // Images are uploaded after Plex's read; a person's own
            // rating is not the provider's to give.
            Wanted::Image(_) | Wanted::Rate(_) => {}
        }
    }
    m
}

/// Whether a content rating marks adult content (`XXX`, `X`, `NC-17`,
/// `AO`): what Plex's `isAdult` says of an item.
fn is_adult(content_rating: &str) -> bool {
    ["xxx", "x", "nc-17", "ao"].contains(&content_rating.trim().to_ascii_lowercase().as_str())
}

/// A performer's photo (`actorImages`), fetched from Stash with PlexSync's
/// credentials and made an image Plex decodes. No URL is ever taken from
/// the request.
async fn performer_image(p: &Provider, ctx: &Context, id: &str, pid: &str) -> Result<Response, Error> {
    if !is_scene_id(id) {
        return Ok(not_found());
    }
    let Some(scene) = p.shown_scene(ctx, id).await? else { return Ok(not_found()) };
    let url = scene.performers.iter().find(|p| p.id == pid).and_then(|p| p.image_path.clone());
    let Some(url) = url.filter(|u| !u.is_empty()) else { return Ok(not_found()) };
    let _slot = p.stash_slot().await?;
    match ctx.stash.image(&url, MAX_IMAGE_BYTES, None).await? {
        Image::Fetched { bytes, .. } => match picture::for_plex(bytes) {
            Ok(shown) => {
                Ok(([(header::CONTENT_TYPE, shown.kind), (header::CACHE_CONTROL, "private, max-age=300")], shown.bytes)
                    .into_response())
            }
            Err(why) => {
                FAILURES.warn(|| format!("metadata provider: the photo of performer {pid}: {why}"));
                Ok(not_found())
            }
        },
        // Stash's stand-in for a missing photo: Plex shows none.
        Image::Placeholder | Image::NotModified => Ok(not_found()),
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
