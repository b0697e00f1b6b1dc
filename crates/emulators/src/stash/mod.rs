//! A Stash emulator: GraphQL over real HTTP on loopback (a real GraphQL
//! engine, Stash's names), session-cookie or API-key auth, images served
//! behind the same auth, and helpers to run a plugin exactly as Stash does.
//! See `facts/stash.md` for the contract it follows.

pub mod schema;
pub mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};

pub use state::{MutationRecord, StashFile, StashScene, StashState};

use crate::plugin::{self, PluginRun};

/// Credentials the emulator accepts; with neither set it is open, like a
/// Stash without a password.
#[derive(Clone, Debug, Default)]
pub struct StashAuth {
    /// Accepted in the `ApiKey` header.
    pub api_key: Option<String>,
    /// Accepted as the `session` cookie.
    pub session: Option<String>,
}

pub(crate) struct Shared {
    pub state: Mutex<StashState>,
    pub auth: StashAuth,
    pub base_url: url::Url,
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
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let base_url = url::Url::parse(&format!("http://{addr}/")).expect("socket address makes a valid URL");
        let shared = Arc::new(Shared { state: Mutex::new(state), auth, base_url });
        let app = router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:9999/`.
    pub fn url(&self) -> url::Url {
        self.shared.base_url.clone()
    }

    /// Reads or changes the data directly (no `updated_at` bump).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut StashState) -> R) -> R {
        f(&mut self.shared.state.lock())
    }

    pub fn scene(&self, id: u64) -> Option<StashScene> {
        self.shared.state.lock().scenes.get(&id).cloned()
    }

    /// Adds a scene as a scan does (files, no metadata); returns its id.
    pub fn create_scene(&self, files: &[(String, u64, f64)]) -> u64 {
        self.shared.state.lock().add_scene(files)
    }

    /// Edits a scene as a person in Stash's UI would: `updated_at` moves.
    pub fn update_scene(&self, id: u64, f: impl FnOnce(&mut StashScene)) -> bool {
        self.shared.state.lock().update_scene(id, f)
    }

    pub fn delete_scene(&self, id: u64) -> bool {
        self.shared.state.lock().scenes.remove(&id).is_some()
    }

    /// Sets `configuration.plugins[plugin_id]`.
    pub fn set_plugin_settings(&self, plugin_id: &str, settings: Value) {
        self.shared.state.lock().plugins.insert(plugin_id.to_string(), settings);
    }

    pub fn mutations(&self) -> Vec<MutationRecord> {
        self.shared.state.lock().mutations.clone()
    }

    /// `server_connection` as Stash passes it to a plugin: host `0.0.0.0`
    /// (the plugin must use localhost), the session cookie when auth is on.
    pub fn server_connection(&self, dir: &Path, plugin_dir: &Path) -> Value {
        let cookie = self.shared.auth.session.as_ref().map(|value| {
            json!({"Name": "session", "Value": value, "Path": "", "Domain": "", "Expires": "0001-01-01T00:00:00Z",
                   "RawExpires": "", "MaxAge": 0, "Secure": false, "HttpOnly": false, "SameSite": 0, "Raw": "", "Unparsed": null})
        });
        let mut conn = json!({
            "Scheme": "http",
            "Host": "0.0.0.0",
            "Port": self.addr.port(),
            "SessionCookie": cookie,
            "Dir": dir,
            "PluginDir": plugin_dir,
        });
        if let Some(key) = &self.shared.auth.api_key {
            conn["ApiKey"] = json!(key);
        }
        conn
    }

    /// Runs `exec` for a hook event, as Stash does after a scene mutation.
    pub async fn run_hook(
        &self,
        exec: &[String],
        dir: &Path,
        scene_id: u64,
        hook_type: &str,
        input: Value,
        input_fields: &[&str],
    ) -> std::io::Result<PluginRun> {
        let args =
            json!({"hookContext": {"id": scene_id, "type": hook_type, "input": input, "inputFields": input_fields}});
        self.run_plugin(exec, dir, args).await
    }

    /// Runs `exec` for a task with the task's `defaultArgs`.
    pub async fn run_task(&self, exec: &[String], dir: &Path, args: Value) -> std::io::Result<PluginRun> {
        self.run_plugin(exec, dir, args).await
    }

    async fn run_plugin(&self, exec: &[String], dir: &Path, args: Value) -> std::io::Result<PluginRun> {
        let plugin_dir = exec.first().and_then(|e| Path::new(e).parent()).map(Path::to_path_buf).unwrap_or_default();
        let input = json!({"server_connection": self.server_connection(dir, &plugin_dir), "args": args});
        plugin::run(exec, &input, plugin::LogLevel::Error).await
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
            get(graphiql).post(move |req: GraphQLRequest| {
                let schema = schema.clone();
                async move { GraphQLResponse::from(schema.execute(req.into_inner()).await) }
            }),
        )
        .route("/scene/{id}/screenshot", get(image))
        .route("/performer/{id}/image", get(image))
        .route("/studio/{id}/image", get(image))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), auth_layer))
        .with_state(shared)
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

async fn image() -> Response {
    ([(header::CONTENT_TYPE, "image/png")], IMAGE_PNG).into_response()
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == "session")
        .map(|(_, value)| value.to_string())
}

/// Stash answers `401` to API calls without a valid API key or session.
async fn auth_layer(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let auth = &sh.auth;
    if auth.api_key.is_none() && auth.session.is_none() {
        return next.run(req).await;
    }
    let key_ok = auth
        .api_key
        .as_ref()
        .is_some_and(|k| req.headers().get("ApiKey").and_then(|v| v.to_str().ok()) == Some(k.as_str()));
    let session_ok = auth.session.as_ref().is_some_and(|s| session_cookie(req.headers()).as_deref() == Some(s));
    if key_ok || session_ok {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response()
    }
}
