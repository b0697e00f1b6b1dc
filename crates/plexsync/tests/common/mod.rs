//! A test bed: both emulators on loopback with a sample library, PlexSync's
//! settings in Stash, a data folder, and the plugin binary run as Stash runs it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use emulators::plex::Item;
use emulators::plugin::PluginRun;
use emulators::{Library, PlexEmulator, PlexState, StashAuth, StashEmulator, StashState};
use plexsync::queue::Queue;
use serde_json::{json, Value};

pub const PLEX_TOKEN: &str = "plex-secret-token";
pub const SESSION: &str = "stash-session-cookie";

pub struct Bed {
    pub lib: Library,
    pub stash: StashEmulator,
    pub plex: PlexEmulator,
    pub dir: tempfile::TempDir,
}

pub fn exec() -> Vec<String> {
    vec![env!("CARGO_BIN_EXE_plexsync").to_string(), "plugin".to_string()]
}

impl Bed {
    /// Emulators with `scenes` scenes and PlexSync configured for them;
    /// `settings` is merged over the defaults.
    pub async fn new(scenes: usize, settings: Value) -> Self {
        let lib = Library::sample(scenes, 21);
        let auth = StashAuth { api_key: None, session: Some(SESSION.into()) };
        let stash = StashEmulator::start(StashState::from_library(&lib), auth).await.unwrap();
        let plex = PlexEmulator::start(PlexState::from_library(&lib), PLEX_TOKEN).await.unwrap();
        let bed = Self { lib, stash, plex, dir: tempfile::tempdir().unwrap() };
        bed.configure(settings);
        bed
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

    pub fn queue(&self) -> Queue {
        Queue::open(&self.data_dir().join("queue.sqlite")).unwrap()
    }

    pub async fn hook(&self, scene: u64, hook_type: &str, fields: &[&str]) -> PluginRun {
        let input = json!({"id": scene.to_string()});
        self.stash.run_hook(&exec(), self.dir.path(), scene, hook_type, input, fields).await.unwrap()
    }

    pub async fn update_hook(&self, scene: u64) -> PluginRun {
        self.hook(scene, "Scene.Update.Post", &["id", "title"]).await
    }

    pub async fn task(&self, mode: &str) -> PluginRun {
        self.stash.run_task(&exec(), self.dir.path(), json!({"mode": mode})).await.unwrap()
    }

    /// Waits until nothing is due or being delivered (at most 30 s). A
    /// worker may stay alive, asleep, for rows that wait for a retry.
    pub async fn settle(&self) {
        let started = Instant::now();
        let mut quiet_polls = 0;
        while quiet_polls < 3 {
            let (due, leased) = if self.data_dir().join("queue.sqlite").exists() {
                let s = self.queue().stats().unwrap();
                (s.due_now, s.leased)
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

    pub fn plex_writes(&self) -> usize {
        self.plex.requests().iter().filter(|r| r.is_write()).count()
    }
}
