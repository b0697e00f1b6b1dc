//! A Stash emulator: GraphQL over real HTTP on loopback (a real GraphQL
//! engine, Stash's names), session-cookie or API-key auth, images served
//! behind the same auth, and helpers to run a plugin exactly as Stash does.
//! Stash's real schema (`third_party/stash-schema`) is its contract.

#[cfg(feature = "stash-schema")]
pub mod contract;
pub mod schema;
pub mod session;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::HeaderMap;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

pub use session::Session;
pub use state::{MutationRecord, ObjectKind, StashFile, StashScene, StashState, Zone};

use crate::plugin::{self, Plugin, PluginRun};
use session::CookieCodec;

/// How the emulated Stash authenticates (pkg/session, internal/api).
#[derive(Clone, Debug)]
pub struct StashAuth {
    /// A username and password are configured: every request needs a valid
    /// session cookie or the API key.
    pub login: bool,
    /// The API key Stash generated (`configuration.general.apiKey`); `None`
    /// when none was generated. A request that sends any `ApiKey` must send
    /// this one.
    pub api_key: Option<String>,
    /// `max_session_age`: a cookie is valid this long after it was issued or
    /// last refreshed (Stash's default: one hour).
    pub max_session_age: Duration,
}

impl Default for StashAuth {
    /// A Stash without a login, as installed.
    fn default() -> Self {
        Self { login: false, api_key: None, max_session_age: Duration::from_secs(3600) }
    }
}

impl StashAuth {
    /// A Stash with a login and, when given, a generated API key.
    pub fn login(api_key: Option<&str>) -> Self {
        Self { login: true, api_key: api_key.map(str::to_string), ..Self::default() }
    }

    pub fn max_session_age(mut self, age: Duration) -> Self {
        self.max_session_age = age;
        self
    }
}

/// The username the emulated login has.
pub const USERNAME: &str = "admin";
/// Stash's `maxCyclicLoopDepth`: a plugin's hook is not run again when the
/// same plugin and hook type already appear this often in the visited list.
pub const MAX_HOOK_DEPTH: usize = 10;

/// Who sent a request, as far as hooks care: the user and the hooks the
/// request's cookie says were already visited.
#[derive(Clone, Debug, Default)]
pub struct RequestAuth {
    pub user: Option<String>,
    pub visited: Vec<(String, String)>,
}

/// One hook run the emulator made, for tests and benchmarks.
#[derive(Clone, Debug)]
pub struct HookRun {
    pub plugin: String,
    pub hook_type: String,
    pub id: u64,
    /// Nesting level: 1 for a hook fired by a person's request.
    pub depth: usize,
    pub run: PluginRun,
}

pub(crate) struct Shared {
    pub state: Mutex<StashState>,
    pub auth: StashAuth,
    pub codec: CookieCodec,
    pub base_url: url::Url,
    /// `server_connection.Dir`: Stash's config folder.
    pub config_dir: Mutex<PathBuf>,
    pub plugins: Mutex<Vec<Plugin>>,
    pub hook_runs: Mutex<Vec<HookRun>>,
    pub hooks_skipped: Mutex<usize>,
    pub images: Mutex<ImageRequests>,
    /// What `GET /` answers: Stash's UI stands here, a test page in tests.
    pub ui_page: Mutex<String>,
    /// Every request answered, for benchmarks.
    pub requests: std::sync::atomic::AtomicUsize,
    /// Stash is restarting behind its proxy: every request is answered 502.
    pub down: std::sync::atomic::AtomicBool,
    /// Stash is busy (a scan holds its database): every request waits this
    /// many milliseconds first.
    pub stall_ms: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The installed plugin `id` (its manifest's file name).
    pub(crate) fn plugin(&self, id: &str) -> Option<Plugin> {
        self.plugins.lock().iter().find(|p| p.id == id).cloned()
    }
}

/// How the image routes answered, for benchmarks and tests of what an
/// edit costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageRequests {
    /// Answered with the image's bytes.
    pub served: usize,
    /// Answered `304 Not Modified` to a matching `If-None-Match`.
    pub not_modified: usize,
}

/// A running Stash emulator. Dropping it stops the server.
pub struct StashEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// The 1×1 PNG served for every screenshot and performer image.
pub const IMAGE_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

impl StashEmulator {
    /// Starts on a free loopback port.
    pub async fn start(state: StashState, auth: StashAuth) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), state, auth).await
    }

    pub async fn start_on(addr: SocketAddr, state: StashState, auth: StashAuth) -> std::io::Result<Self> {
        #[cfg(feature = "stash-schema")]
        contract::RealSchema::get().map_err(std::io::Error::other)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let base_url = url::Url::parse(&format!("http://{addr}/")).expect("socket address makes a valid URL");
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            codec: CookieCodec::new(auth.max_session_age),
            auth,
            base_url,
            config_dir: Mutex::new(std::env::temp_dir()),
            plugins: Mutex::new(Vec::new()),
            hook_runs: Mutex::new(Vec::new()),
            hooks_skipped: Mutex::new(0),
            ui_page: Mutex::new(String::new()),
            requests: Default::default(),
            images: Mutex::new(ImageRequests::default()),
            down: Default::default(),
            stall_ms: Default::default(),
        });
        let app = router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// Stash restarting (`true`: every request answered 502 by its proxy) or back.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stash busy: every request waits `stall` before it is answered.
    pub fn stall(&self, stall: Duration) {
        let ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        self.shared.stall_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:9999/`.
    pub fn url(&self) -> url::Url {
        self.shared.base_url.clone()
    }

    /// Reads or changes the data directly (no `updated_at` bump, no hook).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut StashState) -> R) -> R {
        f(&mut self.shared.state.lock())
    }

    pub fn scene(&self, id: u64) -> Option<StashScene> {
        self.shared.state.lock().scenes.get(&id).cloned()
    }

    /// Changes a scene and bumps `updated_at` with no hook: what auto-tag,
    /// cover generation and other background jobs do.
    pub fn update_scene(&self, id: u64, f: impl FnOnce(&mut StashScene)) -> bool {
        self.shared.state.lock().update_scene(id, f)
    }

    /// Sets `configuration.plugins[plugin_id]`.
    pub fn set_plugin_settings(&self, plugin_id: &str, settings: Value) {
        self.shared.state.lock().plugins.insert(plugin_id.to_string(), settings);
    }

    pub fn mutations(&self) -> Vec<MutationRecord> {
        self.shared.state.lock().mutations.clone()
    }

    /// A logged-in browser's session cookie value (what `/login` sets).
    pub fn login_cookie(&self) -> String {
        self.shared.codec.encode(&Session { user: Some(USERNAME.into()), visited: Vec::new() })
    }

    /// Installs the plugin(s) of `plugin_dir` (every `*.yml` in it, as
    /// Stash loads every manifest under its plugins folder) into a Stash
    /// whose config folder is `config_dir`. A manifest Stash would refuse
    /// is refused here.
    pub fn install_plugins(&self, config_dir: &Path, plugin_dir: &Path) -> Result<Vec<String>, String> {
        let mut loaded = Vec::new();
        let entries = std::fs::read_dir(plugin_dir).map_err(|e| format!("{}: {e}", plugin_dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yml") {
                loaded.push(Plugin::load(&path)?);
            }
        }
        let ids = loaded.iter().map(|p| p.id.clone()).collect();
        *self.shared.config_dir.lock() = config_dir.to_path_buf();
        // Stash reloads plugins after an install or update: a plugin loaded
        // again replaces the one with its id.
        let mut plugins = self.shared.plugins.lock();
        plugins.retain(|p| !loaded.iter().any(|l| l.id == p.id));
        plugins.extend(loaded);
        Ok(ids)
    }

    /// Every hook run so far, in order of start.
    pub fn hook_runs(&self) -> Vec<HookRun> {
        self.shared.hook_runs.lock().clone()
    }

    /// How image requests were answered so far.
    pub fn image_requests(&self) -> ImageRequests {
        *self.shared.images.lock()
    }

    pub fn clear_hook_runs(&self) {
        self.shared.hook_runs.lock().clear();
    }

    /// Hook runs skipped because the depth limit was reached.
    pub fn hooks_skipped(&self) -> usize {
        *self.shared.hooks_skipped.lock()
    }

    /// `runPluginTask(plugin_id, task_name, args_map)`: the task's
    /// `defaultArgs` fill the keys `args` lacks. Run here and awaited (Stash
    /// queues it as a job).
    pub async fn run_plugin_task(&self, plugin_id: &str, task_name: &str, args: Value) -> std::io::Result<PluginRun> {
        let plugin = self.plugin(plugin_id)?;
        let task = plugin.task(task_name).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("plugin {plugin_id} has no task {task_name:?}"))
        })?;
        let mut args = args.as_object().cloned().unwrap_or_default();
        for (k, v) in &task.default_args {
            args.entry(k.clone()).or_insert_with(|| Value::String(v.clone()));
        }
        let auth = self.job_auth();
        run_operation(&self.shared, &plugin, Some(&task), &auth, Value::Object(args)).await
    }

    /// How many requests it answered (GraphQL, images, pages).
    pub fn request_count(&self) -> usize {
        self.shared.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The page Stash's UI is, served at `/` and at every address without
    /// an extension (`/scenes/42`), with Stash's page headers: a test puts a
    /// page there that loads plugins' UI files from `/plugin/{id}/…` the
    /// way Stash's UI does, so their requests are same-origin as in Stash.
    pub fn set_ui_page(&self, html: &str) {
        *self.shared.ui_page.lock() = html.to_string();
    }

    /// `runPluginOperation(plugin_id, args)`: no task, no `defaultArgs`.
    pub async fn run_plugin_operation(&self, plugin_id: &str, args: Value) -> std::io::Result<PluginRun> {
        let plugin = self.plugin(plugin_id)?;
        run_operation(&self.shared, &plugin, None, &self.job_auth(), args).await
    }

    /// The stdin Stash would give plugin `plugin_id` for a `hook_type` hook
    /// on scene `id` edited in `fields`, as a logged-in person's request;
    /// for running the plugin some other way (another root, an emulator).
    pub fn hook_input(&self, plugin_id: &str, hook_type: &str, id: u64, fields: &[&str]) -> std::io::Result<Value> {
        let plugin = self.plugin(plugin_id)?;
        let auth = RequestAuth { user: Some(USERNAME.into()), visited: vec![(plugin.id.clone(), hook_type.into())] };
        let input: serde_json::Map<String, Value> = fields.iter().map(|f| (f.to_string(), Value::Null)).collect();
        let context = json!({"type": hook_type, "id": id, "input": input, "inputFields": fields});
        Ok(
            json!({"server_connection": server_connection(&self.shared, &auth, &plugin), "args": {"hookContext": context}}),
        )
    }

    fn plugin(&self, id: &str) -> std::io::Result<Plugin> {
        self.shared
            .plugin(id)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no plugin {id:?} is installed")))
    }

    /// Background work (a job a logged-in person started) runs as the user.
    fn job_auth(&self) -> RequestAuth {
        RequestAuth { user: self.shared.auth.login.then(|| USERNAME.to_string()), visited: Vec::new() }
    }

    /// A scan finds new files: each becomes a scene with no metadata and no
    /// cover, and `Scene.Create.Post` runs with null input right after its
    /// commit (pkg/scene/scan.go). Returns the new ids.
    pub async fn scan_new(&self, files: &[Vec<(String, u64, f64)>]) -> Vec<u64> {
        let mut ids = Vec::new();
        for scene_files in files {
            let id = self.shared.state.lock().add_scene(scene_files);
            fire_hooks(&self.shared, &self.job_auth(), "Scene.Create.Post", id, Value::Null, &[]).await;
            ids.push(id);
        }
        ids
    }

    /// A person edits one scene in Stash's UI (`sceneUpdate`): the change,
    /// then `Scene.Update.Post` with the fields named, before the answer.
    pub async fn edit_scene(&self, id: u64, fields: &[&str], f: impl FnOnce(&mut StashScene)) -> bool {
        if !self.shared.state.lock().update_scene(id, f) {
            return false;
        }
        let mut input = serde_json::Map::new();
        input.insert("id".into(), json!(id.to_string()));
        let mut names = vec!["id".to_string()];
        names.extend(fields.iter().map(|f| f.to_string()));
        for f in fields {
            input.insert(f.to_string(), Value::Null);
        }
        fire_hooks(&self.shared, &self.job_auth(), "Scene.Update.Post", id, Value::Object(input), &names).await;
        true
    }

    /// A person deletes a scene (`sceneDestroy`): `Scene.Destroy.Post`.
    pub async fn destroy_scene(&self, id: u64) -> bool {
        let Some(scene) = self.shared.state.lock().scenes.remove(&id) else { return false };
        let input = destroy_input(&scene);
        fire_hooks(&self.shared, &self.job_auth(), "Scene.Destroy.Post", id, input, &[]).await;
        true
    }

    /// Fires `hook_type` for `id` as Stash does after the operation that
    /// causes it (for timing cases the helpers above cannot make, e.g. a
    /// scene deleted between its hook and its delivery). Returns the runs.
    pub async fn fire_hook(&self, hook_type: &str, id: u64, input: Value, input_fields: &[&str]) -> Vec<HookRun> {
        let before = self.shared.hook_runs.lock().len();
        let fields: Vec<String> = input_fields.iter().map(|f| f.to_string()).collect();
        fire_hooks(&self.shared, &self.job_auth(), hook_type, id, input, &fields).await;
        self.shared.hook_runs.lock()[before..].to_vec()
    }

    /// The generate task makes a scene's cover after a scan: the cover
    /// changes and `updated_at` moves, with no hook
    /// (internal/manager/task_generate_screenshot.go).
    pub fn generate_cover(&self, id: u64, cover: Vec<u8>) -> bool {
        self.update_scene(id, |s| s.cover = Some(cover))
    }

    /// Auto-tag: tags whose name appears in the path are added; no hook.
    pub fn auto_tag(&self, id: u64, tag: u64) -> bool {
        self.update_scene(id, |s| {
            if !s.tags.contains(&tag) {
                s.tags.push(tag);
            }
        })
    }

    /// `sceneMerge`: the sources' files move to the destination, which is
    /// updated; the sources are destroyed. No hook at all.
    pub fn merge_scenes(&self, destination: u64, sources: &[u64]) -> bool {
        let mut state = self.shared.state.lock();
        let mut files = Vec::new();
        for id in sources {
            if let Some(s) = state.scenes.remove(id) {
                files.extend(s.files);
            }
        }
        state.update_scene(destination, |d| d.files.extend(files))
    }
}

/// `Scene.Destroy.Post`'s input: checksum, oshash and path of the scene.
fn destroy_input(scene: &StashScene) -> Value {
    let file = scene.files.first();
    let fp = |kind: &str| file.and_then(|f| f.fingerprints.iter().find(|(k, _)| k == kind)).map(|(_, v)| v.clone());
    json!({"checksum": fp("md5"), "oshash": fp("oshash"), "path": file.map(|f| f.path.clone())})
}

/// `server_connection` as pkg/plugin `makeServerConnection` builds it: a
/// fresh cookie carrying the user and the visited hooks; never an API key.
fn server_connection(shared: &Shared, auth: &RequestAuth, plugin: &Plugin) -> Value {
    let session = Session { user: auth.user.clone(), visited: auth.visited.clone() };
    let max_age = shared.auth.max_session_age.as_secs();
    let expires = shared
        .state
        .lock()
        .zone
        .format(chrono::Utc::now() + chrono::Duration::seconds(i64::try_from(max_age).unwrap_or(i64::MAX)));
    let cookie = json!({"Name": "session", "Value": shared.codec.encode(&session), "Path": "/", "Domain": "",
        "Expires": expires, "RawExpires": "", "MaxAge": max_age, "Secure": false, "HttpOnly": true,
        "SameSite": 2, "Partitioned": false, "Raw": "", "Unparsed": null});
    json!({
        "Scheme": "http",
        "Host": "0.0.0.0",
        "Port": shared.base_url.port().unwrap_or(9999),
        "SessionCookie": cookie,
        "Dir": &*shared.config_dir.lock(),
        "PluginDir": plugin.dir(),
    })
}

pub(crate) async fn run_operation(
    shared: &Shared,
    plugin: &Plugin,
    operation: Option<&plugin::Operation>,
    auth: &RequestAuth,
    args: Value,
) -> std::io::Result<PluginRun> {
    let exec = plugin.exec_command(operation);
    let input = json!({"server_connection": server_connection(shared, auth, plugin), "args": args});
    plugin::run(&exec, &input, plugin.err_log()).await
}

/// pkg/plugin `executePostHooks`: every installed plugin's hooks for
/// `hook_type`, one after another, awaited (the caller's request waits),
/// each with the visited list grown by one; skipped once the same plugin
/// and hook type were visited [`MAX_HOOK_DEPTH`] times.
pub(crate) async fn fire_hooks(
    shared: &Shared,
    auth: &RequestAuth,
    hook_type: &str,
    id: u64,
    input: Value,
    input_fields: &[String],
) {
    let plugins: Vec<Plugin> = shared.plugins.lock().clone();
    for plugin in plugins {
        let hooks: Vec<plugin::Operation> = plugin.hooks_for(hook_type).cloned().collect();
        if hooks.is_empty() {
            continue;
        }
        let depth = auth.visited.iter().filter(|(p, h)| *p == plugin.id && h == hook_type).count();
        if depth >= MAX_HOOK_DEPTH {
            *shared.hooks_skipped.lock() += 1;
            continue;
        }
        for hook in hooks {
            let mut inner = auth.clone();
            inner.visited.push((plugin.id.clone(), hook_type.to_string()));
            let mut args: serde_json::Map<String, Value> =
                hook.default_args.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            let mut context = json!({"type": hook_type, "input": input});
            if id != 0 {
                context["id"] = json!(id);
            }
            if !input_fields.is_empty() {
                context["inputFields"] = json!(input_fields);
            }
            args.insert("hookContext".into(), context);
            match run_operation(shared, &plugin, Some(&hook), &inner, Value::Object(args)).await {
                Ok(run) => shared.hook_runs.lock().push(HookRun {
                    plugin: plugin.id.clone(),
                    hook_type: hook_type.to_string(),
                    id,
                    depth: depth + 1,
                    run,
                }),
                Err(e) => tracing::error!("{hook_type} [{}]: {e}", plugin.id),
            }
        }
    }
}

impl Drop for StashEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let schema = schema::build(Arc::clone(&shared));
    Router::new()
        .route(
            "/graphql",
            get(graphiql).post(move |Extension(auth): Extension<RequestAuth>, req: GraphQLRequest| {
                let schema = schema.clone();
                async move {
                    let req = req.into_inner();
                    if let Some(refused) = refused_by_stash_schema(&req.query) {
                        return refused;
                    }
                    GraphQLResponse::from(schema.execute(req.data(auth)).await).into_response()
                }
            }),
        )
        .route("/", get(ui_page))
        // Stash serves its single-page UI at every address without an
        // extension (`/scenes/42`), so a reload of a scene page works.
        .fallback(get(ui_page_at))
        .route("/plugin/{id}/javascript", get(plugin_javascript))
        .route("/plugin/{id}/css", get(plugin_css))
        .route("/scene/{id}/screenshot", get(scene_cover))
        .route("/performer/{id}/image", get(performer_image))
        .route("/image/{id}/image", get(gallery_image))
        .route("/image/{id}/thumbnail", get(gallery_image))
        .route("/studio/{id}/image", get(studio_image))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), auth_layer))
        .with_state(shared)
}

/// gqlgen's answer to a document that does not validate against Stash's
/// schema: 422 and the validation errors, nothing executed; `None` to go on.
#[cfg(feature = "stash-schema")]
fn refused_by_stash_schema(document: &str) -> Option<Response> {
    let schema = match contract::RealSchema::get() {
        Ok(schema) => schema,
        Err(e) => return Some((StatusCode::INTERNAL_SERVER_ERROR, e).into_response()),
    };
    let (code, errors) = schema.check(document).err()?;
    let body = json!({"errors": [{"message": errors, "extensions": {"code": code}}], "data": null});
    Some((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response())
}

/// Without Stash's schema (the demo build) the emulator's own decides.
#[cfg(not(feature = "stash-schema"))]
fn refused_by_stash_schema(_document: &str) -> Option<Response> {
    None
}

/// The UI page with the headers Stash sends with it
/// (internal/api/server.go `setPageSecurityHeaders`): its content security
/// policy, extended by each plugin's `ui.csp` and remote `ui` files, and
/// `Referrer-Policy: same-origin`. A script the policy refuses fails here
/// as in Stash.
async fn ui_page(State(sh): State<Arc<Shared>>) -> Response {
    let csp = page_csp(&sh.plugins.lock());
    let headers = [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::REFERRER_POLICY, "same-origin".to_string()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
    ];
    (headers, Html(sh.ui_page.lock().clone())).into_response()
}

async fn ui_page_at(state: State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let last = uri.path().rsplit('/').next().unwrap_or("");
    if last.contains('.') {
        return StatusCode::NOT_FOUND.into_response();
    }
    ui_page(state).await
}

/// Stash's page policy with no Handy key, plus what plugins add.
fn page_csp(plugins: &[plugin::Plugin]) -> String {
    let mut connect = vec!["data:", "'self'", "ws:", "wss:"];
    let mut script =
        vec!["'self'", "http://www.gstatic.com", "https://www.gstatic.com", "'unsafe-inline'", "'unsafe-eval'"];
    let mut style = vec!["'self'", "'unsafe-inline'"];
    for p in plugins {
        let ui = &p.manifest.ui;
        connect.extend(ui.csp.connect_src.iter().map(String::as_str));
        script.extend(ui.csp.script_src.iter().map(String::as_str));
        style.extend(ui.csp.style_src.iter().map(String::as_str));
        let remote = |f: &&String| plugin::is_remote_file(f);
        script.extend(ui.javascript.iter().filter(remote).map(String::as_str));
        style.extend(ui.css.iter().filter(remote).map(String::as_str));
    }
    format!(
        "default-src data: 'self' 'unsafe-inline'; connect-src {}; img-src data: *; script-src {}; style-src {}; \
         media-src blob: 'self'; worker-src blob:; child-src 'none'; object-src 'none'; form-action 'self';",
        connect.join(" "),
        script.join(" "),
        style.join(" ")
    )
}

async fn plugin_javascript(State(sh): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    plugin_ui_files(&sh, &id, "text/javascript", |ui| &ui.javascript)
}

async fn plugin_css(State(sh): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    plugin_ui_files(&sh, &id, "text/css", |ui| &ui.css)
}

/// internal/api/routes_plugin.go: the plugin's `ui.javascript` (or `css`)
/// files, relative to its folder, served one after another (`serveFiles`);
/// http(s) entries are the UI's to load, not served here.
fn plugin_ui_files(
    sh: &Shared,
    id: &str,
    content_type: &'static str,
    files: impl Fn(&plugin::Ui) -> &Vec<String>,
) -> Response {
    let Some(plugin) = sh.plugin(id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut body = Vec::new();
    for file in files(&plugin.manifest.ui).iter().filter(|f| !plugin::is_remote_file(f)) {
        match std::fs::read(plugin.dir().join(file)) {
            Ok(bytes) => {
                body.extend(bytes);
                body.push(b'\n');
            }
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{file}: {e}")).into_response(),
        }
    }
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

/// A scene's cover, or Stash's default SVG when it has none
/// (internal/manager `ServeScreenshot`).
async fn scene_cover(State(sh): State<Arc<Shared>>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
    let cover = id.parse().ok().and_then(|id: u64| sh.state.lock().scenes.get(&id).map(|s| s.cover.clone()));
    match cover {
        Some(cover) => serve_image(&sh, &headers, cover.as_deref().unwrap_or(state::DEFAULT_COVER_SVG)),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A performer's photo, or a default one (its URL says `default=true`).
async fn performer_image(State(sh): State<Arc<Shared>>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
    let image = id.parse().ok().and_then(|id: u64| sh.state.lock().performers.get(&id).map(|p| p.image.clone()));
    match image {
        Some(image) => serve_image(&sh, &headers, image.as_deref().unwrap_or(IMAGE_PNG)),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn gallery_image(State(sh): State<Arc<Shared>>, UrlPath(id): UrlPath<String>, headers: HeaderMap) -> Response {
    let image = id.parse().ok().and_then(|id: u64| sh.state.lock().images.get(&id).map(|i| i.bytes.clone()));
    match image {
        Some(bytes) => serve_image(&sh, &headers, &bytes),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn studio_image(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    serve_image(&sh, &headers, IMAGE_PNG)
}

/// pkg/utils `ServeImage`: the type sniffed from the bytes (SVG for
/// text), an `ETag` computed from the bytes, and `304` to a matching
/// `If-None-Match`.
fn serve_image(sh: &Shared, headers: &HeaderMap, bytes: &[u8]) -> Response {
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(bytes)[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{digest}\"");
    let content_type = match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [_, _, _, _, b'f', b't', b'y', b'p', b'a', b'v', b'i', b'f', ..] => "image/avif",
        [0xFF, 0x0A, ..] => "image/jxl",
        _ => "image/svg+xml",
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut counts = sh.images.lock();
    if matches {
        counts.not_modified += 1;
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    counts.served += 1;
    ([(header::CONTENT_TYPE, content_type.to_string()), (header::ETAG, etag)], bytes.to_vec()).into_response()
}

/// The `ApiKey` header or `apikey` query parameter.
fn api_key_of(req: &Request) -> Option<String> {
    let header = req.headers().get("ApiKey").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty());
    header.map(str::to_string).or_else(|| {
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "apikey")
            .map(|(_, v)| v.into_owned())
            .filter(|k| !k.is_empty())
    })
}

/// `Store.Authenticate` and `VisitedPluginHandler`: an `ApiKey` must be
/// the configured one; otherwise a valid cookie authenticates and is
/// refreshed in the answer. With a login, a request with neither gets 401.
/// The visited hooks come from a valid cookie, whatever authenticated.
async fn auth_layer(State(sh): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    sh.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stall = sh.stall_ms.load(std::sync::atomic::Ordering::Relaxed);
    if stall > 0 {
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }
    if sh.down.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::BAD_GATEWAY, "Bad Gateway").into_response();
    }
    let session = session::from_header(req.headers()).and_then(|v| sh.codec.decode(&v));
    let unauthorized = || (StatusCode::UNAUTHORIZED, [("WWW-Authenticate", "FormBased")]).into_response();
    let (user, refresh) = match api_key_of(&req) {
        Some(key) if sh.auth.api_key.as_deref() != Some(key.as_str()) => return unauthorized(),
        Some(_) => (Some(USERNAME.to_string()), None),
        None => (session.as_ref().and_then(|s| s.user.clone()), session.clone()),
    };
    if sh.auth.login && user.as_deref().is_none_or(str::is_empty) {
        return unauthorized();
    }
    let visited = session.map(|s| s.visited).unwrap_or_default();
    req.extensions_mut().insert(RequestAuth { user, visited });
    let mut response = next.run(req).await;
    if let Some(session) = refresh {
        let max_age = sh.auth.max_session_age.as_secs();
        let cookie =
            format!("session={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax", sh.codec.encode(&session));
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}
