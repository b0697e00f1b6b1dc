//! The daemon face: one long-running process with the worker, change
//! capture every few seconds, a scheduled reconcile, and HTTP endpoints for
//! health checks (`/healthz`), dashboards (`/metrics`) and people (`/`).
//!
//! It shares the plugin's queue: only one worker delivers at a time (the
//! worker lock), so while the plugin's worker holds it, the daemon serves
//! HTTP and waits. SIGTERM or Ctrl-C stop it: the worker releases its
//! leases, the server finishes, and the process exits within seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Path, Query};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::error::{Error, ErrorClass};
use crate::faces::context::{open_queue, Context, Sources};
use crate::faces::operations::{self, StoreOp};
use crate::faces::page;
use crate::faces::provider::{self, Provider};
use crate::faces::serve;
use crate::faces::web;
use crate::ids::SceneId;
use crate::pipeline::breaker;
use crate::pipeline::requests::{self, Work};
use crate::pipeline::worker::{self, WorkerOptions};
use crate::secret::Secret;
use crate::store::kv;
use crate::store::{now_ms, Store};

/// Change capture runs this often (the plugin's worker: 30 s).
const CAPTURE_EVERY: Duration = Duration::from_secs(10);
/// How often a daemon started before Stash asks it again.
const STASH_RETRY: Duration = Duration::from_secs(10);
/// How often a daemon without the worker lock tries to take it.
const LOCK_RETRY: Duration = Duration::from_secs(5);

/// How often Stash's side of the settings is read again: an edit in
/// Stash's plugin settings reaches a daemon that never restarts.
const SETTINGS_EVERY: Duration = Duration::from_secs(30);
/// How long `/healthz` waits for the queue file before it answers from its
/// last reading: a read takes milliseconds unless another program holds
/// the file's lock, and a monitor's probe gives up after a few seconds.
const HEALTH_WAIT: Duration = Duration::from_secs(1);
/// A queue file that has not answered for this long is named in
/// `/healthz` (unhealthy): a worker's batch commit or SQLite's checkpoint
/// holds it for well under a second, a backup copying it for seconds; half
/// a minute is a program holding it, which stops every delivery.
const LOCK_NAMED_AFTER: Duration = Duration::from_secs(30);
/// How long `/healthz`'s probe waits for the queue's write lock: longer
/// than our own worker's batch commits hold it, shorter than a probe.
const WRITE_PROBE_WAIT: Duration = Duration::from_millis(250);

/// What the worker loop and the HTTP handlers share.
struct Shared {
    /// The settings in use, replaced when they change in Stash (the
    /// worker starts again with them; the page's scene search uses them).
    /// `None` until Stash first answers.
    ctx: std::sync::RwLock<Option<Arc<Context>>>,
    /// Why Stash has not answered yet, while `ctx` is `None`.
    stash_error: std::sync::RwLock<String>,
    token: Option<Secret>,
    /// Random per process; every form on the page carries it and every
    /// POST must send it back, so another site cannot make a browser act.
    form_key: String,
    /// The metadata provider, when `provider` is on.
    provider: Option<Arc<Provider>>,
    /// The address the daemon listens on, for the provider's URL.
    listen: String,
    /// The names it answers to (`web.rs`).
    names: Arc<web::Names>,
    /// `/healthz`'s readings of the queue (see [`HealthMemo`]).
    health: std::sync::Mutex<HealthMemo>,
}

/// What `/healthz` last read of the queue, whether a reading is under way
/// (one at a time), and since when no reading has succeeded.
#[derive(Default)]
struct HealthMemo {
    last: Option<(bool, Value)>,
    reading: bool,
    unanswered_since: Option<std::time::Instant>,
}

impl Shared {
    /// The context, once Stash has answered.
    fn ready(&self) -> Option<Arc<Context>> {
        self.ctx.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts new settings in place, for the worker's next cycle, the page
    /// and the provider.
    fn set_ctx(&self, ctx: Arc<Context>) {
        if let Some(p) = &self.provider {
            let secret = open_queue(&ctx.data_dir).and_then(|store| {
                store.set_kv(crate::store::kv::DAEMON_LISTEN, &self.listen)?;
                provider::secret(&store, &ctx.settings)
            });
            match secret {
                Ok(secret) => p.set_context(Arc::clone(&ctx), secret),
                Err(e) => tracing::error!("metadata provider: {e}"),
            }
        }
        *self.ctx.write().unwrap_or_else(|e| e.into_inner()) = Some(ctx);
    }

    /// The provider's URL, once Stash answered and the secret is known.
    fn provider_url(&self, ctx: &Context) -> Option<Result<url::Url, Error>> {
        self.provider.as_ref()?;
        Some(open_queue(&ctx.data_dir).and_then(|store| provider::url(&store, &ctx.settings, &self.listen)))
    }

    /// The answer of every endpoint until Stash answers: 503 and why, so a
    /// container's health check sees the reason, not a refused connection.
    fn not_ready(&self) -> Response {
        let error = self.stash_error.read().unwrap_or_else(|e| e.into_inner()).clone();
        let body = json!({
            "status": "stash_unreachable",
            "reasons": [format!("stash_unreachable: {error}")],
        });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// Runs until SIGTERM or Ctrl-C; never exits on its own. Listens at once
/// (the daemon's settings are local ones), then waits for Stash: a daemon
/// may start before Stash (a compose file, a reboot). A missing setting is
/// an error at once.
pub async fn run(sources: Sources) -> Result<(), Error> {
    let local = sources.local().settings;
    let settings = &local.daemon;
    let addr: SocketAddr = settings.listen.parse().map_err(|e| {
        Error::new(
            ErrorClass::Config,
            format!("daemonListen {:?} is not an address like 127.0.0.1:9977: {e}", settings.listen),
        )
    })?;
    if !addr.ip().is_loopback() && settings.token.as_ref().is_none_or(Secret::is_empty) {
        return Err(Error::new(
            ErrorClass::Config,
            format!("daemonListen {addr} is reachable from other machines: set daemonToken, or listen on 127.0.0.1"),
        ));
    }
    if settings.provider {
        provider::check_secret_setting(settings.provider_secret.as_ref())?;
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::new(ErrorClass::Config, format!("cannot listen on {addr} (daemonListen): {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::new(ErrorClass::Bug, e.to_string()))?;

    let stop = Arc::new(AtomicBool::new(false));
    let signal = stop_signal();
    let on_signal = Arc::clone(&stop);
    tokio::spawn(async move {
        signal.await;
        tracing::info!("stopping");
        on_signal.store(true, Ordering::Relaxed);
    });
    tracing::info!("listening on http://{bound} (/healthz, /metrics, /)");
    let shared = Arc::new(Shared {
        ctx: std::sync::RwLock::new(None),
        stash_error: std::sync::RwLock::new("connecting to Stash".into()),
        token: settings.token.clone().filter(|t| !t.is_empty()),
        form_key: hex::encode(rand::random::<[u8; 16]>()),
        provider: settings.provider.then(|| Arc::new(Provider::default())),
        listen: bound.to_string(),
        names: Arc::new(web::Names::new(&settings.hosts, bound.port())),
        health: Default::default(),
    });
    if let Some(p) = &shared.provider {
        tracing::info!("metadata provider on: its URL (http://{bound}/provider/<secret>) is on the page at / and printed by `plexsync provider-url`");
        tokio::spawn(Arc::clone(p).keep_fresh(Arc::clone(&stop)));
    }
    let server_stop = Arc::clone(&stop);
    let server_shared = Arc::clone(&shared);
    let server = tokio::spawn(async move {
        let stopped = async move {
            while !server_stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        serve::serve(listener, router(server_shared), stopped).await
    });
    let connected = connect(&shared, &sources, &stop).await;
    if let Ok(Some(ctx)) = &connected {
        deliver(&shared, &stop, Arc::clone(ctx)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    tracing::info!("stopped");
    connected.map(|_| ())
}

/// Asks Stash for the settings until it answers (the context it gave) or
/// the daemon is stopped (`None`); meanwhile the endpoints say why they
/// wait.
async fn connect(sh: &Shared, sources: &Sources, stop: &AtomicBool) -> Result<Option<Arc<Context>>, Error> {
    while !stop.load(Ordering::Relaxed) {
        match Context::from_local(sources).await {
            Ok(ctx) => {
                for w in &ctx.warnings {
                    tracing::warn!("setting: {w}");
                }
                let ctx = Arc::new(ctx);
                sh.set_ctx(Arc::clone(&ctx));
                // Said once the endpoints answer with it (the log is what
                // a supervisor, or a test, waits for).
                tracing::info!("Stash answers; data folder {}", ctx.data_dir.display());
                return Ok(Some(ctx));
            }
            Err(e) if e.class == ErrorClass::Config => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; trying again in {STASH_RETRY:?}");
                *sh.stash_error.write().unwrap_or_else(|e| e.into_inner()) = e.to_string();
                worker::nap_unless(stop, STASH_RETRY).await;
            }
        }
    }
    Ok(None)
}

/// Completes at SIGTERM (Docker, systemd) or Ctrl-C. SIGTERM is watched
/// from this call on, not from the first poll: a signal that arrives in
/// between is not lost (nor does it kill the process unhandled).
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The worker, whenever the lock is free, until `stop`; started again
/// with new settings when they change in Stash (`ctx`: the first ones).
async fn deliver(sh: &Arc<Shared>, stop: &Arc<AtomicBool>, mut ctx: Arc<Context>) {
    let mut waiting_said = false;
    let mut last_raw = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(newer) = sh.ready() {
            ctx = newer;
        }
        let data_dir = ctx.data_dir.clone();
        let lock = match worker::try_lock(&data_dir) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                if !std::mem::replace(&mut waiting_said, true) {
                    tracing::info!("another worker (the plugin's) is delivering this queue; waiting for it");
                }
                // The page and the provider follow Stash's settings even
                // while another worker holds the queue.
                reread_settings(sh, &ctx, &mut last_raw).await;
                worker::nap_unless(stop, LOCK_RETRY).await;
                continue;
            }
            Err(e) => {
                tracing::error!("worker lock in {}: {e}", data_dir.display());
                worker::nap_unless(stop, LOCK_RETRY).await;
                continue;
            }
        };
        waiting_said = false;
        let cycle = Arc::new(AtomicBool::new(false));
        let watcher =
            tokio::spawn(watch_settings(Arc::clone(sh), Arc::clone(&ctx), Arc::clone(stop), Arc::clone(&cycle)));
        let options = WorkerOptions {
            max_wait: Duration::from_secs(100 * 365 * 86_400),
            capture_every: Some(CAPTURE_EVERY),
            idle: Duration::MAX,
            stop: Some(Arc::clone(&cycle)),
            ..WorkerOptions::default()
        };
        if let Err(e) = deliver_locked(&ctx, &options, sh.provider.clone()).await {
            tracing::error!("{e}; trying again in 30 s");
            worker::nap_unless(&cycle, Duration::from_secs(30)).await;
        }
        watcher.abort();
        drop(lock);
    }
}

/// Reads Stash's side of the settings again; when they changed since
/// `last` (the first read only records them), puts the new ones in place
/// and returns true.
async fn reread_settings(sh: &Shared, ctx: &Context, last: &mut Option<serde_json::Map<String, Value>>) -> bool {
    match ctx.reload().await {
        Ok((ctx, raw)) if last.as_ref().is_some_and(|l| *l != raw) => {
            tracing::info!("PlexSync's settings changed in Stash; using the new ones");
            for w in &ctx.warnings {
                tracing::warn!("setting: {w}");
            }
            *last = Some(raw);
            sh.set_ctx(Arc::new(ctx));
            true
        }
        Ok((_, raw)) => {
            *last = Some(raw);
            false
        }
        Err(e) => {
            tracing::debug!("settings not read again: {e}");
            false
        }
    }
}

/// Ends the worker's cycle at `stop`, or when Stash's side of the settings
/// changed (after putting the new settings in place).
async fn watch_settings(sh: Arc<Shared>, ctx: Arc<Context>, stop: Arc<AtomicBool>, cycle: Arc<AtomicBool>) {
    let mut last = None;
    let mut next_read = tokio::time::Instant::now();
    // `retryScale` shortens it for tests, as it does every retry delay.
    let every = SETTINGS_EVERY.mul_f64(ctx.settings.retry.scale).max(Duration::from_millis(200));
    while !stop.load(Ordering::Relaxed) {
        if tokio::time::Instant::now() >= next_read {
            next_read += every;
            if reread_settings(&sh, &ctx, &mut last).await {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cycle.store(true, Ordering::Relaxed);
}

async fn deliver_locked(ctx: &Context, options: &WorkerOptions, provider: Option<Arc<Provider>>) -> Result<(), Error> {
    let queue = ctx.checked_store()?;
    schedule_reconcile(&queue, ctx.settings.daemon.reconcile_every)?;
    let mut pipeline = ctx.pipeline()?;
    if let Some(p) = provider {
        pipeline.before_refresh = Some(Arc::new(move |scene: &str| p.forget(scene)));
    }
    let scheduler = tokio::spawn(reconcile_schedule(ctx.data_dir.clone(), ctx.settings.daemon.reconcile_every));
    let result = worker::run(&mut pipeline, &queue, options, |_, _| {}).await;
    scheduler.abort();
    result
}

/// Hands a reconcile to the worker when the last one is `every` ago.
fn schedule_reconcile(queue: &Store, every: Duration) -> Result<(), Error> {
    if every.is_zero() {
        return Ok(());
    }
    let last = queue.kv_number(kv::LAST_RECONCILE)?;
    if now_ms() - last >= crate::units::millis(every) {
        requests::request(queue, &Work::Reconcile { since: None })?;
        queue.set_kv(kv::LAST_RECONCILE, &now_ms().to_string())?;
        tracing::info!("scheduled reconcile queued (every {:.0} h)", every.as_secs_f64() / 3600.0);
    }
    Ok(())
}

async fn reconcile_schedule(data_dir: PathBuf, every: Duration) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match open_queue(&data_dir).and_then(|q| schedule_reconcile(&q, every)) {
            Ok(()) => {}
            Err(e) => tracing::warn!("scheduled reconcile: {e}"),
        }
    }
}

/// The daemon's routes behind `daemonToken`; the provider's beside them,
/// behind their secret path segment (Plex sends providers no token).
fn router(shared: Arc<Shared>) -> Router {
    let provider = shared.provider.clone();
    let names = Arc::clone(&shared.names);
    let own = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .route("/actions/{action}", post(action))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), require_token))
        .with_state(shared);
    let all = match provider {
        Some(p) => own.merge(provider::router(p)),
        None => own,
    };
    all.layer(axum::extract::DefaultBodyLimit::max(web::BODY_LIMIT))
        .layer(middleware::from_fn_with_state(names, web::guard))
        .layer(middleware::from_fn(within_request_time))
}

/// Every request over within [`serve::REQUEST_WITHIN`] (a body sent a byte
/// at a time included): `408` then, and the connection closed.
async fn within_request_time(req: Request, next: Next) -> Response {
    match tokio::time::timeout(serve::REQUEST_WITHIN, next.run(req)).await {
        Ok(answer) => answer,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, [(header::CONNECTION, "close")], "the request took too long\n")
            .into_response(),
    }
}

/// With a token set, every request must carry it (`Authorization: Bearer`).
async fn require_token(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(token) = &sh.token else { return next.run(req).await };
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| crate::secret::same(g.as_bytes(), token.expose().as_bytes())) {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "daemonToken required\n").into_response()
    }
}

/// Health as a container check reads it: 200 while delivery works, 503
/// with the reasons when it cannot (settings, credentials, a Plex outage
/// longer than `healthOutageSecs`).
pub(crate) fn health(
    queue: &Store,
    outage_unhealthy_after: Duration,
    config_problem: Option<&str>,
) -> Result<(bool, Value), Error> {
    let stats = queue.stats()?;
    let kv = |key: &str| queue.kv_number(key);
    let now = now_ms();
    let ago = |ms: i64| (ms > 0).then(|| (now - ms).max(0) / 1000);
    let outage = breaker::plex_outage(queue)?;
    let (breaker_open, outage_since) = (outage.is_some(), outage.unwrap_or(0));
    let mut reasons = Vec::new();
    if let Some(problem) = config_problem {
        reasons.push(format!("config: {problem}"));
    }
    for (class, what) in
        [("auth", "Plex or Stash refused PlexSync's credentials"), ("config", "a setting stops delivery")]
    {
        if let Some(n) = stats.by_class.get(class) {
            reasons.push(format!("{class}: {what} ({n} scenes wait; the log says what to fix)"));
        }
    }
    if let Some(secs) =
        ago(outage_since).filter(|s| breaker_open && *s >= crate::units::to_i64(outage_unhealthy_after.as_secs()))
    {
        reasons.push(format!("plex_unavailable: Plex has not answered for {secs} s"));
    }
    let body = json!({
        "status": if reasons.is_empty() { "ok" } else { "unhealthy" },
        "reasons": reasons,
        "plex": {"breaker_open": breaker_open, "outage_secs": ago(outage_since).filter(|_| breaker_open)},
        "stash": {"last_capture_secs_ago": ago(kv(kv::LAST_CAPTURE)?)},
        "last_sync_secs_ago": ago(kv(kv::LAST_SYNC)?),
        "queue": stats,
        "queue_recovered": queue.recovered()?,
    });
    Ok((reasons.is_empty(), body))
}

/// The page until Stash answers: what the daemon waits for.
fn waiting_page(sh: &Shared) -> Response {
    let error = sh.stash_error.read().unwrap_or_else(|e| e.into_inner()).clone();
    (StatusCode::SERVICE_UNAVAILABLE, Html(page::waiting(&error))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

/// `/healthz`: the queue read off the runtime's threads, answered within
/// [`HEALTH_WAIT`]; while the file does not answer, the last reading with
/// how long it has waited, and past [`LOCK_NAMED_AFTER`] the lock named.
async fn healthz(State(sh): State<Arc<Shared>>) -> Response {
    let Some(ctx) = sh.ready() else { return sh.not_ready() };
    let reading = start_health_read(&sh, ctx);
    if let Some(reading) = reading {
        match tokio::time::timeout(HEALTH_WAIT, reading).await {
            Ok(Ok(Ok(answer))) => return health_response(answer),
            Ok(Ok(Err(e))) => return internal(e),
            Ok(Err(_)) => return internal(Error::new(ErrorClass::Bug, "the health check's reading stopped")),
            Err(_) => {}
        }
    }
    health_response(stale_health(&sh.health.lock().unwrap_or_else(|e| e.into_inner())))
}

/// Starts a reading of the queue for `/healthz` on a blocking thread,
/// unless one is already waiting for the file (then none: a flood of
/// probes during a lock adds no threads).
fn start_health_read(
    sh: &Arc<Shared>,
    ctx: Arc<Context>,
) -> Option<tokio::task::JoinHandle<Result<(bool, Value), Error>>> {
    let mut memo = sh.health.lock().unwrap_or_else(|e| e.into_inner());
    if memo.reading {
        return None;
    }
    memo.reading = true;
    memo.unanswered_since.get_or_insert_with(std::time::Instant::now);
    let sh = Arc::clone(sh);
    Some(tokio::task::spawn_blocking(move || {
        let read = open_queue(&ctx.data_dir).and_then(|queue| {
            let answer =
                health(&queue, ctx.settings.daemon.outage_unhealthy_after, ctx.settings.delivery_problem().as_deref())?;
            Ok((answer, queue.writable(WRITE_PROBE_WAIT)?))
        });
        let mut memo = sh.health.lock().unwrap_or_else(|e| e.into_inner());
        memo.reading = false;
        let (answer, writable) = read?;
        memo.last = Some(answer.clone());
        if !writable {
            // Read, but no write could start: what waits on the lock is
            // the worker, so the lock is what /healthz reports.
            return Ok(stale_health(&memo));
        }
        memo.unanswered_since = None;
        Ok(answer)
    }))
}

/// The last reading while one waits for the queue file, with the wait;
/// unhealthy once the wait is [`LOCK_NAMED_AFTER`] or more.
fn stale_health(memo: &HealthMemo) -> (bool, Value) {
    let waited = memo.unanswered_since.map_or(Duration::ZERO, |t| t.elapsed());
    let (mut healthy, mut body) = memo.last.clone().unwrap_or_else(|| (true, json!({"status": "ok", "reasons": []})));
    body["queue_wait_secs"] = json!(waited.as_secs());
    if waited >= LOCK_NAMED_AFTER {
        healthy = false;
        body["status"] = json!("unhealthy");
        let why = format!(
            "queue_locked: the queue file has not answered for {} s; another program holds its lock (a backup, a sync tool, a second PlexSync), and nothing is delivered until it lets go",
            waited.as_secs()
        );
        match body["reasons"].as_array_mut() {
            Some(reasons) => reasons.push(json!(why)),
            None => body["reasons"] = json!([why]),
        }
    }
    (healthy, body)
}

fn health_response((healthy, body): (bool, Value)) -> Response {
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let Some(ctx) = sh.ready() else { return sh.not_ready() };
    let queue = match open_queue(&ctx.data_dir) {
        Ok(q) => q,
        Err(e) => return internal(e),
    };
    match gauges(&queue) {
        Ok(g) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render(&g))
            .into_response(),
        Err(e) => internal(e),
    }
}

/// The queue's gauges as the store holds them now.
fn gauges(store: &Store) -> Result<crate::metrics::QueueGauges, Error> {
    let stats = store.stats()?;
    Ok(crate::metrics::QueueGauges {
        pending: stats.pending,
        by_class: stats.by_class,
        dead: stats.dead,
        synced: stats.synced,
        breaker_open: store.kv_number(kv::BREAKER_UNTIL)? > 0,
        last_sync_ms: store.kv_number(kv::LAST_SYNC)?,
        last_capture_ms: store.kv_number(kv::LAST_CAPTURE)?,
    })
}

/// The page's buttons. Refused unless the form carries this process's
/// key and the browser says the request comes from this page's origin.
async fn action(
    State(sh): State<Arc<Shared>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let key_ok = form.get("key").is_some_and(|k| crate::secret::same(k.as_bytes(), sh.form_key.as_bytes()));
    if !key_ok || !web::same_origin(&sh.names, &headers) {
        return (StatusCode::FORBIDDEN, "refused: not sent from PlexSync's own page\n").into_response();
    }
    let Some(ctx) = sh.ready() else { return sh.not_ready() };
    let queue = match open_queue(&ctx.data_dir) {
        Ok(q) => q,
        Err(e) => return internal(e),
    };
    let op = match action.as_str() {
        "sync" => match form.get("scene").and_then(|s| SceneId::parse(s.trim())) {
            Some(id) => StoreOp::QueueScenes(vec![id]),
            None => return (StatusCode::BAD_REQUEST, "scene: a Stash scene id (digits) is required\n").into_response(),
        },
        "retry-dead" => StoreOp::RetryDead { class: None },
        "purge-dead" => StoreOp::PurgeDead { class: None },
        "reconcile" => {
            let done = operations::hand_work(&queue, &crate::pipeline::requests::Work::Reconcile { since: None });
            return page_action_done(done);
        }
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    page_action_done(operations::run_on_store(&queue, &op).map(|v| v.to_string()))
}

/// Back to the page after one of its buttons, or the error.
fn page_action_done(done: Result<String, Error>) -> Response {
    match done {
        Ok(message) => {
            tracing::info!("status page: {message}");
            (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
        }
        Err(e) => internal(e),
    }
}

/// A page a person reads: health, the queue by class, dead letters with
/// their reasons (`page.rs` makes the HTML).
async fn status_page(
    State(sh): State<Arc<Shared>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(ctx) = sh.ready() else { return waiting_page(&sh) };
    let queue = match open_queue(&ctx.data_dir) {
        Ok(q) => q,
        Err(e) => return internal(e),
    };
    let (healthy, body) =
        match health(&queue, ctx.settings.daemon.outage_unhealthy_after, ctx.settings.delivery_problem().as_deref()) {
            Ok(h) => h,
            Err(e) => return internal(e),
        };
    // Everything from the database first: the scene search then waits on
    // Stash and Plex without holding it.
    let lists = [("Waiting", "pending"), ("Dead letters", "dead")]
        .map(|(title, state)| (title, queue.rows(state, 50).unwrap_or_default()))
        .into();
    let delivered = queue.recent_deliveries(20).unwrap_or_default();
    let scene = query.get("scene").map(|raw| {
        SceneId::parse(raw.trim()).map(|id| {
            let state = queue.scene_state(id.as_str());
            (id, state)
        })
    });
    drop(queue);
    let scene = match scene {
        Some(Some((id, state))) => Some(scene_section(&ctx, state, id).await),
        Some(None) => Some(page::Scene::NotAnId),
        None => None,
    };
    let provider = sh.provider_url(&ctx).map(|url| url.map(String::from).map_err(|e| e.to_string()));
    let html = page::status(&page::Status {
        healthy,
        health: &body,
        lists,
        scene,
        delivered: &delivered,
        provider,
        form_key: &sh.form_key,
    });
    Html(html).into_response()
}

/// One scene: where it stands in the queue, its Plex items, and how
/// matching decides today (the `explain` trace, asked of Stash and Plex).
async fn scene_section(ctx: &Context, state: Result<crate::store::SceneState, Error>, id: SceneId) -> page::Scene {
    let trace = crate::faces::operations::explain(ctx, id.as_str())
        .await
        .map(|out| out["trace"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect())
        .map_err(|e| e.to_string());
    page::Scene::Shown(Box::new(page::SceneView { id: id.to_string(), state: state.map_err(|e| e.to_string()), trace }))
}
