//! Putting a run together: settings from every source, the Stash client,
//! the data folder, the queue. Shared by the plugin, the worker and the CLI.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use url::Url;

use crate::clients::stash::{StashClient, StashCredentials};
use crate::config::HttpOptions;
use crate::config::{self, Loaded, Settings};
use crate::error::{Error, ErrorClass};
use crate::pipeline::sync::Pipeline;
use crate::store::Store;

/// Settings sources other than Stash, highest precedence last.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    /// Command-line flags, as setting name → value.
    pub cli: Map<String, Value>,
}

impl Sources {
    /// TOML file, environment, flags (lowest first). A broken file is
    /// reported as a warning, not fatal.
    pub(crate) fn local_layers(&self, warnings: &mut Vec<String>) -> Vec<Map<String, Value>> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config_file {
            match config::toml_layer(path) {
                Ok(layer) => layers.push(layer),
                Err(e) => warnings.push(e),
            }
        }
        layers.push(config::env_layer());
        layers.push(self.cli.clone());
        layers
    }

    /// Settings without asking Stash (to find Stash itself).
    pub(crate) fn local(&self) -> Loaded {
        let mut warnings = Vec::new();
        let mut loaded = config::load(&self.local_layers(&mut warnings));
        warnings.append(&mut loaded.warnings);
        loaded.warnings = warnings;
        loaded
    }
}

/// Everything a face needs.
pub struct Context {
    pub settings: Settings,
    pub warnings: Vec<String>,
    pub stash: StashClient,
    pub data_dir: PathBuf,
    /// Settings from the file, environment and flags (over Stash's).
    pub local_layers: Vec<Map<String, Value>>,
}

impl Context {
    /// Reads the plugin settings from Stash and merges the local sources
    /// over them.
    pub async fn new(
        stash_url: &Url,
        credentials: StashCredentials,
        default_data_dir: PathBuf,
        sources: &Sources,
    ) -> Result<Self, Error> {
        let stash = StashClient::new(stash_url, credentials, &HttpOptions::default())?;
        let from_stash = stash.plugin_settings(config::PLUGIN_ID).await?;
        // A session cookie expires; Stash's API key, read while it is valid, does not.
        if let Err(e) = stash.adopt_api_key().await {
            tracing::debug!("Stash's API key could not be read: {e}");
        }
        let mut warnings = Vec::new();
        let local_layers = sources.local_layers(&mut warnings);
        let loaded = config::load_over(from_stash, &local_layers);
        warnings.extend(loaded.warnings);
        let data_dir = loaded.settings.data_dir.clone().unwrap_or(default_data_dir);
        Ok(Self { settings: loaded.settings, warnings, stash, data_dir, local_layers })
    }

    /// The same context with Stash's side of the settings read again, and
    /// that side as read (a long-running face compares it to notice edits).
    pub(crate) async fn reload(&self) -> Result<(Self, Map<String, Value>), Error> {
        let from_stash = self.stash.plugin_settings(config::PLUGIN_ID).await?;
        let loaded = config::load_over(from_stash.clone(), &self.local_layers);
        let ctx = Self {
            settings: loaded.settings,
            warnings: loaded.warnings,
            stash: self.stash.clone(),
            data_dir: self.data_dir.clone(),
            local_layers: self.local_layers.clone(),
        };
        Ok((ctx, from_stash))
    }

    /// For the CLI: Stash's URL and key come from the local sources.
    pub async fn from_local(sources: &Sources) -> Result<Self, Error> {
        let local = sources.local().settings;
        let url = local.stash_url.clone().ok_or_else(|| {
            Error::new(
                ErrorClass::Config,
                "Stash's URL is not set: pass --stash-url, set PLEXSYNC_STASH_URL, or stashUrl in the config file",
            )
        })?;
        let credentials =
            StashCredentials { api_key: local.stash_api_key.clone(), session_cookie: local.stash_session.clone() };
        let mut ctx = Self::new(&url, credentials, default_data_dir(), sources).await?;
        if ctx.settings.data_dir.is_none() {
            ctx.data_dir = ctx.plugin_data_dir().await.unwrap_or(ctx.data_dir);
        }
        tracing::info!("queue and data folder: {}", ctx.data_dir.display());
        Ok(ctx)
    }

    /// The plugin's data folder (`<Stash's config folder>/plexsync`), when
    /// Stash runs on this machine and the plugin has one: the CLI then
    /// shows and works on the queue the plugin fills.
    async fn plugin_data_dir(&self) -> Option<PathBuf> {
        let folder = match self.stash.config_folder().await {
            Ok(folder) => folder?,
            Err(e) => {
                tracing::debug!("Stash's config folder could not be read: {e}");
                return None;
            }
        };
        let data = folder.join("plexsync");
        data.join(QUEUE_FILE).is_file().then_some(data)
    }

    pub fn store(&self) -> Result<Store, Error> {
        open_queue(&self.data_dir)
    }

    /// The queue with every page checked, for a worker about to run: a
    /// damaged file is moved aside and a fresh queue started.
    pub fn checked_store(&self) -> Result<Store, Error> {
        Store::open_checked(&self.data_dir.join(QUEUE_FILE))
    }

    pub fn pipeline(&self) -> Result<Pipeline, Error> {
        let mut pipeline = Pipeline::new(self.settings.clone(), self.stash.clone())?;
        pipeline.store = Some(std::sync::Mutex::new(self.store()?));
        pipeline.local_layers = self.local_layers.clone();
        Ok(pipeline)
    }
}

/// The queue's file name in the data folder.
const QUEUE_FILE: &str = "queue.sqlite";

pub(crate) fn open_queue(data_dir: &Path) -> Result<Store, Error> {
    Store::open(&data_dir.join(QUEUE_FILE))
}

/// Where a person's CLI keeps its data when nothing else is set.
pub(crate) fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("plexsync")
}
