//! The pipeline and one scene's delivery: fetch (at delivery time) →
//! the old plugin's Stash-side behaviours → match → sanitize → diff →
//! write → record, or a refresh in refresh mode.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clients::plex::{PlexClient, PlexItem};
use crate::clients::stash::{Scene, StashClient};
use crate::config::{Field, Mode, Settings};
use crate::error::{Error, ErrorClass};
use crate::pipeline::legacy;
use crate::pipeline::library::{self};
use crate::pipeline::matching::{LibraryIndex, Match, MatchedItem};
use crate::store::{now_ms, Closing, Reason, Store, SyncRecord};

/// What the metadata provider's items leave out, for push to write after
/// Plex pulled them: images (a LAN image URL reaches Plex only through its
/// cloud, which cannot fetch it) and collections (which the protocol
/// accepts only as objects of their own).
const UNCARRIED: &[Field] = &[Field::Poster, Field::Background, Field::Collection];

/// An item read ahead of its write (see [`Pipeline::read_ahead`]) stands
/// in for the read before the write this long; later, it is read again.
const READ_AHEAD_FRESH: Duration = Duration::from_secs(30);

/// How one delivery ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Fields written to the Plex item.
    Synced { rating_key: String, fields: usize },
    /// Plex already has what we would write.
    Unchanged,
    /// Not synced on purpose (e.g. not organized), with the reason.
    Skipped(String),
    /// The scene no longer exists in Stash.
    Gone,
    /// Refresh mode: the item was asked to refresh.
    Refreshed(String),
}

impl Outcome {
    /// The outcome's name in metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Synced { .. } => "synced",
            Self::Unchanged => "unchanged",
            Self::Skipped(_) => "skipped",
            Self::Gone => "gone",
            Self::Refreshed(_) => "refreshed",
        }
    }
}

/// Totals of a run, for summaries and tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub synced: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub gone: usize,
    pub refreshed: usize,
    pub failed: usize,
    pub fields_written: usize,
    pub plex_writes: usize,
    pub warnings: usize,
}

impl Stats {
    pub(crate) fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Synced { fields, .. } => {
                self.synced += 1;
                self.fields_written += fields;
            }
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::Skipped(_) => self.skipped += 1,
            Outcome::Gone => self.gone += 1,
            Outcome::Refreshed(_) => self.refreshed += 1,
        }
    }
}

/// See [`Pipeline::before_refresh`].
pub type BeforeRefresh = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Everything a delivery needs; the index is read lazily and kept.
/// Deliveries share it by `&self` (several run at once): the index sits
/// behind an async lock held while it is read or refreshed, the totals
/// behind a plain one.
pub struct Pipeline {
    pub settings: Settings,
    pub stash: StashClient,
    pub plex: Option<PlexClient>,
    pub index: tokio::sync::Mutex<Option<LibraryIndex>>,
    /// The store the index is kept in between processes: its own
    /// connection, opened once by whoever assembles the pipeline, behind a
    /// lock so the pipeline can be shared with the daemon's handlers.
    pub store: Option<std::sync::Mutex<Store>>,
    /// Local settings layered over Stash's when settings are read again.
    pub local_layers: Vec<serde_json::Map<String, serde_json::Value>>,
    pub(super) stats: std::sync::Mutex<Stats>,
    /// Held while deciding on and asking for scans, so that deliveries
    /// running at once ask for a folder once.
    pub(super) scans: tokio::sync::Mutex<()>,
    /// Called with a scene's id before Plex is asked to refresh its items,
    /// so that a metadata provider in this process forgets what it read of
    /// the scene: Plex is about to ask for the version just delivered.
    pub before_refresh: Option<BeforeRefresh>,
    /// Items read ahead of their writes, many per request, by ratingKey
    /// (see [`Pipeline::read_ahead`]); each is used by one write.
    pub(super) read_ahead: std::sync::Mutex<std::collections::HashMap<String, (Instant, PlexItem)>>,
}

impl Pipeline {
    pub(crate) fn new(settings: Settings, stash: StashClient) -> Result<Self, Error> {
        let plex = match (&settings.plex_url, &settings.plex_token) {
            (Some(url), Some(token)) => Some(PlexClient::new(url.clone(), token.clone(), &settings.plex_http)?),
            _ => None,
        };
        if settings.plex_http.insecure {
            tracing::warn!("plexInsecure is on: Plex's TLS certificate is not checked");
        }
        Ok(Self {
            settings,
            stash,
            plex,
            index: tokio::sync::Mutex::new(None),
            store: None,
            local_layers: Vec::new(),
            stats: std::sync::Mutex::new(Stats::default()),
            scans: tokio::sync::Mutex::new(()),
            before_refresh: None,
            read_ahead: Default::default(),
        })
    }

    /// The totals so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Adds to the totals.
    pub(crate) fn tally(&self, add: impl FnOnce(&mut Stats)) {
        add(&mut self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Reads PlexSync's settings from Stash again (a long-lived worker must
    /// follow a person's changes); the index is kept when it still fits.
    pub(crate) async fn reload_settings(&mut self) -> Result<(), Error> {
        let from_stash = self.stash.plugin_settings(crate::config::PLUGIN_ID).await?;
        let loaded = crate::config::load_over(from_stash, &self.local_layers);
        let key = self.index_key();
        let mut fresh = Self::new(loaded.settings, self.stash.clone())?;
        if fresh.index_key() == key {
            fresh.index = tokio::sync::Mutex::new(self.index.get_mut().take());
        }
        fresh.store = self.store.take();
        fresh.local_layers = std::mem::take(&mut self.local_layers);
        fresh.stats = std::sync::Mutex::new(self.stats());
        fresh.before_refresh = self.before_refresh.take();
        *self = fresh;
        Ok(())
    }

    pub(super) fn plex(&self) -> Result<&PlexClient, Error> {
        match (&self.plex, self.settings.delivery_problem()) {
            (Some(plex), None) => Ok(plex),
            (_, problem) => {
                Err(Error::new(ErrorClass::Config, problem.unwrap_or_else(|| "Plex is not configured".into())))
            }
        }
    }

    /// The Plex server records name (its URL; empty when not set).
    pub(super) fn plex_server(&self) -> String {
        self.settings.plex_url.as_ref().map(|u| u.to_string()).unwrap_or_default()
    }

    /// The pipeline's own store connection, if it has one.
    pub(super) fn store(&self) -> Option<std::sync::MutexGuard<'_, Store>> {
        self.store.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Delivers the scene `id` as it is in Stash now, as `reason` asks
    /// (see [`Reason`]). `attempts` is how often the row failed before (for
    /// partial scans). `read` is the scene as its batch's one Stash request
    /// found it (`Some(None)`: it does not exist), its version marked seen
    /// by the caller; `None` reads and marks it here. A push's closing
    /// writes are returned for the caller to commit (see [`Closing`]).
    pub(crate) async fn deliver(
        &self,
        queue: &Store,
        id: &str,
        attempts: i64,
        reason: Reason,
        read: Option<Option<Scene>>,
    ) -> Result<(Outcome, Option<Closing>), Error> {
        let found = match read {
            Some(found) => found,
            None => {
                let found = self.stash.find_scene(id).await?;
                // This version is now taken care of (change capture skips it).
                if let Some(scene) = &found {
                    queue.mark_seen(id, &scene.updated_at, now_ms())?;
                }
                found
            }
        };
        let Some(mut scene) = found else {
            queue.forget(id)?;
            return Ok((Outcome::Gone, None));
        };
        if let Some(why) = library::gate(&scene, &self.settings) {
            return Ok((Outcome::Skipped(why.into()), None));
        }
        if self.apply_stash_side(&scene).await? {
            scene = self.stash.find_scene(id).await?.ok_or_else(|| Error::new(ErrorClass::Bug, "scene vanished"))?;
        }
        let (outcome, closing) = match self.pushes(reason) {
            Some(only) => {
                let (outcome, closing) = self.push(queue, &scene, attempts, only).await?;
                (outcome, Some(closing))
            }
            None => (self.refresh(queue, &scene, attempts).await?, None),
        };
        if reason == Reason::Rematch && self.settings.mode == Mode::Push {
            // Rematching reads the records the push just made.
            if let Some(closing) = &closing {
                queue.close(closing)?;
            }
            self.rematch(queue, &scene).await?;
            return Ok((outcome, None));
        }
        Ok((outcome, closing))
    }

    /// What a delivery for `reason` pushes (`Some(None)`: every owned
    /// field), or `None` when it asks Plex to refresh instead. After Plex
    /// has just pulled the scene (a refresh leads there too), what the
    /// provider cannot carry goes by push: asking Plex to refresh again
    /// would loop.
    fn pushes(&self, reason: Reason) -> Option<Option<&'static [Field]>> {
        match (self.settings.mode, reason) {
            (Mode::Refresh, Reason::Provider) => Some(Some(UNCARRIED)),
            (Mode::Refresh, _) => None,
            (Mode::Push, _) => Some(None),
        }
    }

    /// `tagStashIDs` and `cleanTitles`; returns whether Stash was changed.
    async fn apply_stash_side(&self, scene: &Scene) -> Result<bool, Error> {
        let mut changed = false;
        if self.settings.tag_stash_ids {
            let add = legacy::stash_id_tags(scene, &self.settings.stash_id_tags);
            if !add.is_empty() {
                tracing::info!("scene {}: adding stash-box tags {add:?}", scene.id);
                self.stash.add_tags(&scene.id, &add).await?;
                changed = true;
            }
        }
        if self.settings.clean_titles {
            if let Some(title) = scene.title.as_deref().filter(|t| !t.is_empty()) {
                let clean = legacy::clean_title(title);
                if clean != title {
                    tracing::info!("scene {}: new title {clean:?} from {title:?}", scene.id);
                    let mut fields = serde_json::Map::new();
                    fields.insert("title".into(), serde_json::Value::String(clean));
                    self.stash.update_scene(&scene.id, fields).await?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Refresh mode: ask Plex to refresh the scene's items, so the
    /// section's agent pulls from Stash. The items are found by the same
    /// matcher as push: a Plex URL on the scene is only a candidate.
    pub(super) async fn refresh(&self, queue: &Store, scene: &Scene, attempts: i64) -> Result<Outcome, Error> {
        let recorded = queue.rating_keys(&scene.id)?;
        let targets = self.targets(queue, scene, &recorded, attempts).await?;
        let plex = self.plex()?;
        if let Some(forget) = &self.before_refresh {
            forget(&scene.id);
        }
        let mut records = queue.records(&scene.id)?;
        for MatchedItem { rating_key: rk, section } in &targets {
            plex.refresh(rk).await?;
            self.tally(|s| s.plex_writes += 1);
            // Recorded so change capture knows this version was delivered;
            // what push wrote into the item (images, collections) stays.
            let field_hashes = records
                .iter_mut()
                .find(|r| &r.rating_key == rk)
                .map(|r| std::mem::take(&mut r.field_hashes))
                .unwrap_or_default();
            let record = SyncRecord {
                plex_server: self.plex_server(),
                rating_key: rk.clone(),
                section: section.clone(),
                field_hashes,
                stash_updated_at: scene.updated_at.clone(),
                synced_at: now_ms(),
            };
            queue.save_record(&scene.id, &record)?;
        }
        let keys: Vec<String> = targets.into_iter().map(|i| i.rating_key).collect();
        queue.keep_records(&scene.id, &keys)?;
        Ok(Outcome::Refreshed(keys.join(",")))
    }

    /// The items the delivery of `scene` (for `reason`) will read before
    /// writing: those with something to write since their last write, or,
    /// for a scene never written, the index's match. A guess that costs no
    /// request once the index is read: the worker reads the guessed items
    /// of many deliveries at once ([`Pipeline::read_ahead`]), and a
    /// delivery whose guess was wrong reads its item on its own.
    /// The error is Plex's, when reading the library failed: the
    /// deliveries would meet it too.
    pub(crate) async fn will_read(&self, queue: &Store, scene: &Scene, reason: Reason) -> Result<Vec<String>, Error> {
        let Some(only) = self.pushes(reason) else { return Ok(Vec::new()) };
        if self.plex().is_err() || library::gate(scene, &self.settings).is_some() {
            return Ok(Vec::new());
        }
        let Ok(records) = queue.records(&scene.id) else { return Ok(Vec::new()) };
        let (wanted, _) = self.wanted(scene, only);
        if !records.is_empty() {
            return Ok(records
                .into_iter()
                .filter(|r| {
                    let (changes, released) = self.pending(&wanted, &r.field_hashes);
                    !changes.is_empty() || !released.is_empty()
                })
                .map(|r| r.rating_key)
                .collect());
        }
        let mut slot = self.index.lock().await;
        let index = self.ensure_index(&mut slot).await?;
        Ok(match index.find(scene, &[], &self.settings.path_maps) {
            Ok(found @ Match::Found { .. }) => found.items().into_iter().map(|i| i.rating_key).collect(),
            _ => Vec::new(),
        })
    }

    /// Reads `keys` in as few requests as Plex allows, for the reads
    /// before writes that follow within [`READ_AHEAD_FRESH`]. Whatever
    /// was not read ahead, each delivery reads on its own.
    pub(crate) async fn read_ahead(&self, keys: &[String]) -> Result<(), Error> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let items = self.plex()?.items(&keys).await?;
        let now = Instant::now();
        let mut ahead = self.read_ahead.lock().unwrap_or_else(|e| e.into_inner());
        ahead.retain(|_, (at, _)| at.elapsed() < READ_AHEAD_FRESH);
        ahead.extend(items.into_iter().map(|item| (item.rating_key.clone(), (now, item))));
        Ok(())
    }

    /// `GET` of the item, when an edit depends on what it holds (or the
    /// item as it was read ahead a moment ago).
    pub(super) async fn read_item(&self, rk: &str) -> Result<PlexItem, Error> {
        let ahead = self.read_ahead.lock().unwrap_or_else(|e| e.into_inner()).remove(rk);
        if let Some((_, item)) = ahead.filter(|(at, _)| at.elapsed() < READ_AHEAD_FRESH) {
            return Ok(item);
        }
        match self.plex()?.item(rk).await? {
            Some(item) => Ok(item),
            None => Err(self.item_gone(rk).await),
        }
    }

    /// The item left Plex (deleted, or re-added under another key): the
    /// index is read again at the next try.
    pub(super) async fn item_gone(&self, rk: &str) -> Error {
        self.drop_index(&mut *self.index.lock().await);
        Error::new(ErrorClass::NotInPlex, format!("Plex item {rk} disappeared"))
    }
}
