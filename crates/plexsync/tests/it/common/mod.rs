//! A test bed: both emulators on loopback with a sample library, PlexSync's
//! settings in Stash, a data folder, and the plugin binary run as Stash runs it.
#![allow(dead_code)]

#[cfg(unix)]
pub mod daemon;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emulators::plex::Item;
use emulators::plugin::PluginRun;
use emulators::{Library, PlexEmulator, PlexState, StashAuth, StashEmulator, StashState};
use plexsync::store::Store;
use serde_json::{json, Value};

pub const PLEX_TOKEN: &str = "plex-secret-token";
pub const API_KEY: &str = "stash-api-key-secret";

/// Waits until `done` holds, failing the test after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Bed {
    pub lib: Library,
    pub stash: StashEmulator,
    pub plex: PlexEmulator,
    /// Stash's config folder (`server_connection.Dir`).
    pub dir: tempfile::TempDir,
    /// The folder PlexSync is installed in.
    pub plugin_dir: PathBuf,
}

/// The one policy for a test whose tool this machine lacks (Chromium,
/// libfaketime): `None`, said on stderr as skipped with what to install,
/// so `cargo test` on a fresh clone passes; a failure where
/// `REQUIRE_TEST_TOOLS` is set (CI and the release workflow), so no check
/// passes there by being skipped. (Not a `PLEXSYNC_` variable: those are
/// settings.)
pub fn tool<T>(found: Option<T>, what: &str, install: &str) -> Option<T> {
    if found.is_none() {
        assert!(std::env::var_os("REQUIRE_TEST_TOOLS").is_none(), "{what} is missing ({install}); CI requires it");
        eprintln!("skipped: {what} is missing ({install})");
    }
    found
}

/// Installs PlexSync as README's install step does: the binary,
/// `PlexSync.yml` and the UI files in `<config>/plugins/PlexSync/`. Returns that folder.
pub fn install_files(config_dir: &Path) -> PathBuf {
    let folder = config_dir.join("plugins").join("PlexSync");
    std::fs::create_dir_all(&folder).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin");
    for file in ["PlexSync.yml", plexsync::faces::plugin::UI_SCRIPT, plexsync::faces::plugin::UI_STYLE] {
        std::fs::copy(source.join(file), folder.join(file)).unwrap();
    }
    link_binary(Path::new(env!("CARGO_BIN_EXE_plexsync")), &folder);
    folder
}

/// The binary in the plugin folder: a link where the OS has cheap ones.
pub fn link_binary(exe: &Path, folder: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(exe, folder.join("plexsync")).unwrap();
    #[cfg(windows)]
    std::fs::copy(exe, folder.join("plexsync.exe")).map(drop).unwrap();
}

impl Bed {
    /// Emulators with `scenes` scenes and PlexSync installed and configured
    /// for them; `settings` is merged over the defaults. Stash has a login
    /// and no API key: the plugin has only its session cookie.
    pub async fn new(scenes: usize, settings: Value) -> Self {
        Self::with_auth(scenes, settings, StashAuth::login(None)).await
    }

    pub async fn with_auth(scenes: usize, settings: Value, auth: StashAuth) -> Self {
        Self::with_zone(scenes, settings, auth, emulators::stash::Zone::default()).await
    }

    /// A bed whose Stash server runs in `zone`.
    pub async fn with_zone(scenes: usize, settings: Value, auth: StashAuth, zone: emulators::stash::Zone) -> Self {
        Self::installed_by(scenes, settings, auth, zone, install_files).await
    }

    /// A bed whose PlexSync is `install(<Stash config folder>)`, which
    /// returns the plugin folder.
    pub async fn installed_by(
        scenes: usize,
        settings: Value,
        auth: StashAuth,
        zone: emulators::stash::Zone,
        install: impl FnOnce(&Path) -> PathBuf,
    ) -> Self {
        let lib = Library::sample(scenes, 21);
        let stash = StashEmulator::start(StashState::from_library_in(&lib, zone), auth).await.unwrap();
        let plex = PlexEmulator::start(PlexState::from_library(&lib), PLEX_TOKEN).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plugin_dir = install(dir.path());
        let bed = Self { lib, stash, plex, dir, plugin_dir };
        bed.stash.install_plugins(bed.dir.path(), &bed.plugin_dir).unwrap();
        bed.configure(settings);
        bed
    }

    /// PlexSync's Stash client, with a logged-in person's session.
    pub fn stash_client(&self) -> plexsync::clients::stash::StashClient {
        let credentials = plexsync::clients::stash::StashCredentials {
            api_key: None,
            session_cookie: Some(plexsync::secret::Secret::new(self.session())),
        };
        plexsync::clients::stash::StashClient::new(&self.stash.url(), credentials, &Default::default()).unwrap()
    }

    /// A logged-in person's session, for the CLI.
    pub fn session(&self) -> String {
        self.stash.login_cookie()
    }

    pub fn configure(&self, extra: Value) {
        let mut settings = json!({
            "plexUrl": self.plex.url().as_str(),
            "plexToken": PLEX_TOKEN,
            "pathMappings": format!("{} => {}", self.lib.stash_prefix, self.lib.plex_prefix),
            "skipUnorganized": false,
        });
        for (k, v) in extra.as_object().unwrap() {
            settings[k] = v.clone();
        }
        self.stash.set_plugin_settings("PlexSync", settings);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("plexsync")
    }

    pub fn queue(&self) -> Store {
        Store::open(&self.data_dir().join("queue.sqlite")).unwrap()
    }

    /// Stash fires `hook_type` for `scene` (see `StashEmulator::fire_hook`).
    pub async fn hook(&self, scene: u64, hook_type: &str, fields: &[&str]) -> PluginRun {
        let input = json!({"id": scene.to_string()});
        let runs = self.stash.fire_hook(hook_type, scene, input, fields).await;
        runs.into_iter().last().expect("PlexSync's hook ran").run
    }

    /// A person saves scene `scene` in Stash's UI; returns PlexSync's hook run.
    pub async fn update_hook(&self, scene: u64) -> PluginRun {
        let before = self.stash.hook_runs().len();
        assert!(self.stash.edit_scene(scene, &["title"], |_| {}).await, "scene {scene} exists");
        self.stash.hook_runs()[before..].iter().rfind(|r| r.id == scene).expect("PlexSync's hook ran").run.clone()
    }

    /// A person changes scene `scene`'s details in Stash's UI (a change
    /// Plex must get); returns PlexSync's hook run.
    pub async fn edit_hook(&self, scene: u64, details: &str) -> PluginRun {
        let before = self.stash.hook_runs().len();
        let changed = self.stash.edit_scene(scene, &["details"], |s| s.details = Some(details.into())).await;
        assert!(changed, "scene {scene} exists");
        self.stash.hook_runs()[before..].iter().rfind(|r| r.id == scene).expect("PlexSync's hook ran").run.clone()
    }

    /// Runs the task whose `defaultArgs.mode` is `mode`, as Stash's Tasks page does.
    pub async fn task(&self, mode: &str) -> PluginRun {
        self.task_with(mode, json!({})).await
    }

    pub async fn task_with(&self, mode: &str, args: Value) -> PluginRun {
        let yml = self.plugin_dir.join("PlexSync.yml");
        let plugin = emulators::plugin::Plugin::load(&yml).unwrap();
        let task = plugin.manifest.tasks.iter().find(|t| t.default_args.get("mode").map(String::as_str) == Some(mode));
        let name = task.unwrap_or_else(|| panic!("no task with mode {mode}")).name.clone();
        self.stash.run_plugin_task("PlexSync", &name, args).await.unwrap()
    }

    /// Waits until nothing is due or being delivered (at most 30 s). A
    /// worker may stay alive, asleep, for rows that wait for a retry.
    pub async fn settle(&self) {
        let started = Instant::now();
        let mut quiet_polls = 0;
        while quiet_polls < 3 {
            let (due, leased) = if self.data_dir().join("queue.sqlite").exists() {
                let s = self.queue().stats().unwrap();
                (s.due_now + s.requests, s.leased)
            } else {
                (0, 0)
            };
            quiet_polls = if due == 0 && leased == 0 { quiet_polls + 1 } else { 0 };
            assert!(started.elapsed() < Duration::from_secs(30), "queue did not settle: due={due} leased={leased}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Scene ids whose first file Plex has, in id order.
    pub fn scenes_in_plex(&self) -> Vec<u64> {
        self.stash.with_state(|s| {
            s.scenes.values().filter(|sc| self.plex_item_of_path(&sc.files[0].path).is_some()).map(|sc| sc.id).collect()
        })
    }

    fn plex_item_of_path(&self, stash_path: &str) -> Option<Item> {
        let plex_path = stash_path.replacen(&self.lib.stash_prefix, &self.lib.plex_prefix, 1);
        self.plex.item_by_file(&plex_path)
    }

    /// The Plex item holding the scene's first file.
    pub fn item_of(&self, scene: u64) -> Item {
        let path = self.stash.scene(scene).unwrap().files[0].path.clone();
        self.plex_item_of_path(&path).expect("scene is in Plex")
    }

    /// Sends a GraphQL document to Stash as a logged-in person's browser
    /// does (mutations fire their hooks); fails the test on any error.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        let answer = self.graphql_answer(query, variables).await;
        assert!(answer["errors"].is_null(), "{answer}");
        answer
    }

    /// The same, errors and all.
    pub async fn graphql_answer(&self, query: &str, variables: Value) -> Value {
        reqwest::Client::new()
            .post(self.stash.url().join("graphql").unwrap())
            .header("Cookie", format!("session={}", self.session()))
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn plex_writes(&self) -> usize {
        self.plex.requests().iter().filter(|r| r.is_write()).count()
    }
}
