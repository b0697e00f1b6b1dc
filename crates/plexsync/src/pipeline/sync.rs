//! Delivering one scene: fetch (at delivery time) → old Stash-side
//! behaviours → match → sanitize → diff → write → record.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clients::plex::{ImageKind, PlexClient, PlexItem, RatingKey};
use crate::clients::stash::{GalleryImage, Image, Scene, StashClient};
use crate::config::{Field, Mode, Settings};
use crate::error::{Error, ErrorClass};
use crate::pipeline::desired::{self, Desired, Value};
use crate::pipeline::legacy;
use crate::pipeline::library::{self, Managed};
use crate::pipeline::matching::{rating_key_in_url, LibraryIndex, Match};
use crate::pipeline::picture;
use crate::store::{now_ms, Closing, Reason, Store, SyncRecord};
use sha2::{Digest, Sha256};

/// What the metadata provider's items leave out, for push to write after
/// Plex pulled them: images (a LAN image URL reaches Plex only through its
/// cloud, which cannot fetch it) and collections (which the protocol
/// accepts only as objects of their own).
const UNCARRIED: &[Field] = &[Field::Poster, Field::Background, Field::Collection];

/// Largest image we copy from Stash to Plex.
pub(crate) const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// The index is re-read in full when older than this (so items deleted
/// from Plex leave it); in between, misses fetch only what changed. The same
/// rule decides whether a stored index may be used by a new process.
const INDEX_MAX_AGE_ON_MISS: Duration = Duration::from_secs(6 * 3600);
/// Misses within this long of the last incremental refresh reuse it: a
/// run over many scenes Plex lacks asks once, not once per scene. Retries
/// of a scene not in Plex come later than this (both scale with `retryScale`).
const INDEX_REFRESH_GAP: Duration = Duration::from_secs(10);
/// Even when every scene matches, the index asks Plex for additions this
/// often (one small request per section): a ratingKey Plex handed out
/// again after a deletion then names its new video here too.
const INDEX_CHECK_GAP: Duration = Duration::from_secs(300);
/// A folder is asked to be scanned at most once in this long.
const SCAN_WINDOW: Duration = Duration::from_secs(30 * 60);
/// The longest edit request line sent: reverse proxies refuse longer ones
/// (nginx: 8 KB by default; others 4–16 KB), so an edit is split below it.
const MAX_REQUEST_LINE: usize = 7 * 1024;
/// Files of other scenes looked up in Stash for one delivery, at most.
const MAX_FOREIGN_FILES: usize = 8;
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
    stats: std::sync::Mutex<Stats>,
    /// Held while deciding on and asking for scans, so that deliveries
    /// running at once ask for a folder once.
    scans: tokio::sync::Mutex<()>,
    /// Called with a scene's id before Plex is asked to refresh its items,
    /// so that a metadata provider in this process forgets what it read of
    /// the scene: Plex is about to ask for the version just delivered.
    pub before_refresh: Option<BeforeRefresh>,
    /// Items read ahead of their writes, many per request, by ratingKey
    /// (see [`Pipeline::read_ahead`]); each is used by one write.
    read_ahead: std::sync::Mutex<std::collections::HashMap<String, (Instant, PlexItem)>>,
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
        self.stats.lock().expect("stats lock").clone()
    }

    /// Adds to the totals.
    pub(crate) fn tally(&self, add: impl FnOnce(&mut Stats)) {
        add(&mut self.stats.lock().expect("stats lock"));
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

    fn plex(&self) -> Result<&PlexClient, Error> {
        match (&self.plex, self.settings.delivery_problem()) {
            (Some(plex), None) => Ok(plex),
            (_, problem) => {
                Err(Error::new(ErrorClass::Config, problem.unwrap_or_else(|| "Plex is not configured".into())))
            }
        }
    }

    /// The Plex server records name (its URL; empty when not set).
    fn plex_server(&self) -> String {
        self.settings.plex_url.as_ref().map(|u| u.to_string()).unwrap_or_default()
    }

    /// Which server and libraries an index belongs to.
    fn index_key(&self) -> String {
        let url = self.plex_server();
        format!("{url}|{}", self.settings.libraries.join(","))
    }

    /// Fills `slot` (the locked index) from the store or from Plex, and
    /// returns the index.
    async fn ensure_index<'a>(&self, slot: &'a mut Option<LibraryIndex>) -> Result<&'a mut LibraryIndex, Error> {
        let index = match slot.take().or_else(|| self.load_index()) {
            Some(index) => index,
            None => self.build_index().await?,
        };
        let index = slot.insert(index);
        self.requeue_moved(index);
        Ok(index)
    }

    /// Reads the whole library and stores it.
    async fn build_index(&self) -> Result<LibraryIndex, Error> {
        let started = Instant::now();
        let index = LibraryIndex::build(self.plex()?, &self.settings).await?;
        tracing::info!(
            "read the Plex library: {} items in {} requests, {:.1?}",
            index.len(),
            index.reads,
            started.elapsed()
        );
        self.save_index(&index, None);
        Ok(index)
    }

    /// Queues again, with their hashes forgotten, the scenes written to
    /// items whose files changed under the index: a library rebuilt with
    /// its keys handed out again, or a file moved, leaves Plex's items
    /// without the metadata written there, and no Stash change says so.
    fn requeue_moved(&self, index: &mut LibraryIndex) {
        if index.moved.is_empty() {
            return;
        }
        let moved = std::mem::take(&mut index.moved);
        let Some(queue) = self.store() else { return };
        let requeued = queue.scenes_recorded_at(&moved).and_then(|ids| {
            for id in &ids {
                queue.reset_hashes(id)?;
                queue.enqueue(id, crate::store::Reason::Reconcile)?;
            }
            Ok(ids.len())
        });
        match requeued {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("{} Plex items hold other files now; {n} scenes written there queued again", moved.len())
            }
            Err(e) => tracing::warn!("could not queue the scenes of moved Plex items: {e}"),
        }
    }

    /// The index a previous process stored, when it is for this server and
    /// libraries and young enough.
    fn load_index(&self) -> Option<LibraryIndex> {
        let queue = self.store()?;
        let meta = queue.index_meta().ok()??;
        let mut index = LibraryIndex::from_meta(&self.index_key(), &meta, INDEX_MAX_AGE_ON_MISS)?;
        let loaded = index.in_transaction(|index| Ok(queue.each_index_row(|row| index.insert_row(row))));
        if !matches!(loaded, Ok(Ok(true))) {
            return None;
        }
        tracing::debug!("using the stored Plex library index ({} items)", index.len());
        Some(index)
    }

    /// The pipeline's own store connection, if it has one.
    fn store(&self) -> Option<std::sync::MutexGuard<'_, Store>> {
        self.store.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stores the index: whole, or only the items `changed` by a refresh.
    fn save_index(&self, index: &LibraryIndex, changed: Option<&[String]>) {
        let Some(store) = self.store() else { return };
        let meta = index.meta(&self.index_key());
        let saved = store.save_index(&meta, index.rows(changed), changed.is_none());
        if let Err(e) = saved {
            tracing::warn!("could not store the Plex library index: {e}");
        }
    }

    /// Forgets the index here and on disk: the next match reads Plex again.
    fn drop_index(&self, slot: &mut Option<LibraryIndex>) {
        *slot = None;
        if let Some(q) = self.store() {
            let _ = q.drop_index();
        }
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

    /// Asks Plex to match the scene's items again (a refresh matches an
    /// unmatched item): the provider could not answer Plex's last match
    /// or metadata call for them, and Plex does not ask again by itself.
    async fn rematch(&self, queue: &Store, scene: &Scene) -> Result<(), Error> {
        let plex = self.plex()?;
        if let Some(forget) = &self.before_refresh {
            forget(&scene.id);
        }
        for rk in queue.rating_keys(&scene.id)? {
            plex.refresh(&rk).await?;
            self.tally(|s| s.plex_writes += 1);
        }
        Ok(())
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
    async fn refresh(&self, queue: &Store, scene: &Scene, attempts: i64) -> Result<Outcome, Error> {
        let recorded = queue.rating_keys(&scene.id)?;
        let targets = self.targets(queue, scene, &recorded, attempts).await?;
        let plex = self.plex()?;
        if let Some(forget) = &self.before_refresh {
            forget(&scene.id);
        }
        let mut records = queue.records(&scene.id)?;
        for (rk, section) in &targets {
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
        let keys: Vec<String> = targets.into_iter().map(|(rk, _)| rk).collect();
        queue.keep_records(&scene.id, &keys)?;
        Ok(Outcome::Refreshed(keys.join(",")))
    }

    /// The scene's items (ratingKey, section), or the error that says why
    /// there are none to write: ambiguous, or not in Plex yet (with a
    /// partial scan of its folders on the first miss and every fourth after,
    /// so new files arrive without waiting for Plex's own schedule).
    async fn targets(
        &self,
        queue: &Store,
        scene: &Scene,
        recorded: &[String],
        attempts: i64,
    ) -> Result<Vec<(String, String)>, Error> {
        match self.find(scene, recorded).await? {
            found @ Match::Found { .. } => Ok(found.items()),
            Match::Ambiguous { candidates, reason } => {
                Err(Error::new(ErrorClass::Ambiguous, format!("{reason} ({}); nothing written", candidates.join(", "))))
            }
            Match::NotFound { tried } => {
                if self.settings.retry.partial_scan && attempts % 4 == 0 {
                    self.scan_folders(queue, scene).await?;
                }
                Err(Error::new(ErrorClass::NotInPlex, format!("not in Plex yet ({})", tried.join("; "))))
            }
        }
    }

    /// Finds the scene's items (see [`Pipeline::explain`]); a stale Plex URL
    /// on the scene is said in the log.
    pub(crate) async fn find(&self, scene: &Scene, recorded: &[String]) -> Result<Match, Error> {
        let (found, trace) = self.explain(scene, recorded).await?;
        for line in trace.iter().filter(|l| l.starts_with("Plex URL") && l.ends_with("ignored")) {
            tracing::warn!("scene {}: {line}", scene.id);
        }
        Ok(found)
    }

    /// Finds the scene's items and says how, one line per signal tried.
    /// The index is checked for additions every few minutes; on a miss,
    /// the items recorded for the scene are read again (a renamed or moved
    /// file keeps its item and its `addedAt`), then what Plex added, and
    /// the whole library only when the index is old or its count is off.
    /// An item that also holds another Stash scene's file is ambiguous.
    pub(crate) async fn explain(&self, scene: &Scene, recorded: &[String]) -> Result<(Match, Vec<String>), Error> {
        let mut slot = self.index.lock().await;
        let maps = &self.settings.path_maps;
        let gap = |d: Duration| d.mul_f64(self.settings.retry.scale);
        let plex = self.plex()?;
        let index = self.ensure_index(&mut slot).await?;
        if index.refreshed_at.is_none_or(|t| t.elapsed() > gap(INDEX_CHECK_GAP)) {
            self.refresh_index(index, plex, false).await?;
        }
        self.requeue_moved(index);
        let (found, trace) = index.explain(scene, recorded, maps)?;
        if matches!(found, Match::Found { .. }) {
            drop(slot);
            return self.unshared(scene, found, trace).await;
        }
        let reread = self.reread_candidates(index, plex, scene, recorded).await?;
        let too_old = index.built_at.is_some_and(|t| t.elapsed() > INDEX_MAX_AGE_ON_MISS);
        if too_old {
            self.drop_index(&mut slot);
        } else if !reread && index.refreshed_at.is_none_or(|t| t.elapsed() > gap(INDEX_REFRESH_GAP)) {
            self.refresh_index(index, plex, true).await?;
        }
        let (found, trace) = self.ensure_index(&mut slot).await?.explain(scene, recorded, maps)?;
        drop(slot);
        self.unshared(scene, found, trace).await
    }

    /// Fetches what Plex added since the index's newest item; with
    /// `count`, also compares each section's size with the index (an item
    /// dated in the past is not in an `addedAt` read) and reads the
    /// library again when they differ.
    async fn refresh_index(&self, index: &mut LibraryIndex, plex: &PlexClient, count: bool) -> Result<(), Error> {
        let changed = index.refresh_recent(plex).await?;
        if !changed.is_empty() {
            self.save_index(index, Some(&changed));
        }
        if !count {
            return Ok(());
        }
        for section in index.sections.clone() {
            let total = plex.section_total(&section.key).await?;
            index.reads += 1;
            let known = index.count_in(&section.key);
            if total != known {
                tracing::info!("Plex library {} has {total} items, the index {known}: reading it again", section.title);
                let mut fresh = LibraryIndex::build(plex, &self.settings).await?;
                fresh.moved = fresh.moved_since(index)?;
                *index = fresh;
                self.save_index(index, None);
                break;
            }
        }
        Ok(())
    }

    /// Reads again the items recorded for the scene and the one its Plex URL
    /// names, when they no longer hold its files in the index: a rename
    /// or move keeps the item (and its `addedAt`), so no other read sees
    /// it. Returns whether any was read.
    async fn reread_candidates(
        &self,
        index: &mut LibraryIndex,
        plex: &PlexClient,
        scene: &Scene,
        recorded: &[String],
    ) -> Result<bool, Error> {
        let url = scene.urls.iter().rev().find_map(|u| rating_key_in_url(u));
        let mut read: Vec<String> = Vec::new();
        for rk in recorded.iter().chain(url.as_ref()) {
            let Some(section) = index.item(rk)?.map(|i| i.section.to_string()) else { continue };
            if read.contains(rk) {
                continue;
            }
            index.reads += 1;
            match plex.item(rk).await? {
                Some(item) => _ = index.insert(&section, &item)?,
                None => index.forget(rk)?,
            }
            read.push(rk.clone());
        }
        if !read.is_empty() {
            self.save_index(index, Some(&read));
        }
        Ok(!read.is_empty())
    }

    /// `found`, unless one of its items also holds a file of another Stash
    /// scene (Plex merged or stacked them): writing would overwrite that
    /// scene's metadata and it ours, for ever. Stash is asked by file name,
    /// and only for items holding files that are not the scene's (rare).
    async fn unshared(
        &self,
        scene: &Scene,
        found: Match,
        mut trace: Vec<String>,
    ) -> Result<(Match, Vec<String>), Error> {
        let maps = &self.settings.path_maps;
        let foreign: Vec<(String, String, Option<u64>)> = {
            let slot = self.index.lock().await;
            let Some(index) = slot.as_ref() else { return Ok((found, trace)) };
            let mut foreign = Vec::new();
            for (rk, _) in found.items() {
                let files = index.foreign_files(&rk, scene, maps)?;
                foreign.extend(files.into_iter().map(|(path, size)| (rk.clone(), path, size)));
            }
            foreign.truncate(MAX_FOREIGN_FILES);
            foreign
        };
        for (rk, path, size) in foreign {
            let others = self.stash.scenes_with_file_named(crate::pipeline::matching::file_name_of(&path)).await?;
            let owner = others.into_iter().find(|(id, files)| {
                *id != scene.id && files.iter().any(|f| crate::pipeline::matching::is_file(f, &path, size, maps))
            });
            let Some((other, _)) = owner else {
                trace.push(format!("item {rk} also holds {path}, which no other Stash scene has"));
                continue;
            };
            trace.push(format!("item {rk} also holds {path}, a file of Stash scene {other}"));
            let decision = Match::Ambiguous {
                candidates: vec![rk.clone()],
                reason: format!(
                    "Plex item {rk} also holds {path}, a file of Stash scene {other} (Plex merged or stacked them); \
                     split the item in Plex (Split Apart) so that each scene has its own"
                ),
            };
            trace.push(crate::pipeline::matching::decision_line(&decision));
            return Ok((decision, trace));
        }
        Ok((found, trace))
    }

    /// Partial scans of the Plex folders holding the scene's files.
    async fn scan_folders(&self, queue: &Store, scene: &Scene) -> Result<(), Error> {
        let plex = self.plex()?;
        // (section, folder) pairs, gathered before any request so the
        // index is not held while Plex answers.
        let mut folders: Vec<(String, String)> = Vec::new();
        if let Some(index) = self.index.lock().await.as_ref() {
            for file in &scene.files {
                let path = crate::pipeline::matching::map_path(&file.path, &self.settings.path_maps, false);
                let Some((folder, _)) = path.rsplit_once('/') else { continue };
                let Some(section) = index.section_for(&path) else {
                    tracing::warn!("scene {}: {path} is in no Plex library folder; check pathMappings", scene.id);
                    continue;
                };
                if !folders.iter().any(|(_, f)| f == folder) {
                    folders.push((section.key.clone(), folder.to_string()));
                }
            }
        }
        let _deciding = self.scans.lock().await;
        let window = crate::units::millis(SCAN_WINDOW.mul_f64(self.settings.retry.scale));
        let mut busy: Option<Vec<String>> = None;
        for (section, folder) in folders {
            // One scan per folder and window, whichever scene asks: a bulk
            // import misses hundreds of scenes of a few folders.
            let key = crate::store::kv::scan_asked(&section.to_string(), &folder);
            let last = queue.kv_number(&key)?;
            if now_ms() - last < window {
                tracing::debug!("scene {}: {folder} was scanned recently; waiting for Plex", scene.id);
                continue;
            }
            // A scan runs for seconds to minutes; while the library is
            // being scanned, asking again only queues more work in Plex.
            if busy.is_none() {
                let sections = plex.sections().await?;
                busy = Some(sections.into_iter().filter(|s| s.refreshing).map(|s| s.key).collect());
            }
            if busy.as_ref().is_some_and(|b| b.contains(&section)) {
                tracing::debug!("scene {}: Plex is scanning its library; not asking again", scene.id);
                continue;
            }
            // A folder scanned before that still lacks the file may be one
            // Plex skips (it has never indexed it): the whole library then.
            let what = if last > 0 { None } else { Some(folder.as_str()) };
            plex.scan_folder(&section, what).await?;
            queue.set_kv(&key, &now_ms().to_string())?;
            self.tally(|s| s.plex_writes += 1);
            match what {
                Some(folder) => tracing::info!("scene {}: asked Plex to scan {folder}", scene.id),
                None => {
                    tracing::info!("scene {}: {folder} is still not in Plex; asked Plex to scan its library", scene.id)
                }
            }
        }
        Ok(())
    }

    /// Writes the scene's owned fields (`only` those, when given) into
    /// every item that holds one of its files.
    async fn push(
        &self,
        queue: &Store,
        scene: &Scene,
        attempts: i64,
        only: Option<&[Field]>,
    ) -> Result<(Outcome, Closing), Error> {
        self.plex()?;
        let (wanted, report) = self.wanted(scene, only);
        for w in &report.dropped {
            tracing::warn!("{w}");
        }
        for c in &report.changed {
            tracing::debug!("sanitized: {c}");
        }
        self.tally(|s| s.warnings += report.dropped.len());

        let mut images = Images::default();
        let (mut fields, mut wrote) = (0, false);
        // An item found to hold none of the scene's files when read before
        // its write (the index was stale: renamed, rebuilt, a key reused)
        // is re-indexed, and the scene is matched once more.
        let mut rounds = 0;
        // The record of the item just written, saved before the next item
        // is tried, or with the closing writes after the last.
        let mut last: Option<SyncRecord> = None;
        let targets = 'matched: loop {
            rounds += 1;
            let records = queue.records(&scene.id)?;
            let recorded: Vec<String> = records.iter().map(|r| r.rating_key.clone()).collect();
            let targets = self.targets(queue, scene, &recorded, attempts).await?;
            for (rk, section) in &targets {
                if let Some(done) = last.take() {
                    queue.save_record(&scene.id, &done)?;
                }
                let previous = records.iter().find(|r| &r.rating_key == rk).map(|r| r.field_hashes.clone());
                let item = Target { rating_key: rk, section, previous: previous.unwrap_or_default() };
                match self.push_item(queue, scene, &wanted, item, &mut images).await? {
                    Some((n, any, record)) => {
                        fields += n;
                        wrote |= any;
                        last = record;
                    }
                    None if rounds < 2 => continue 'matched,
                    None => {
                        return Err(Error::new(
                            ErrorClass::NotInPlex,
                            format!("Plex item {rk} no longer holds the scene's file, and no other item does yet"),
                        ))
                    }
                }
            }
            break targets;
        };
        let keys: Vec<String> = targets.into_iter().map(|(rk, _)| rk).collect();
        let outcome = if wrote { Outcome::Synced { rating_key: keys.join(","), fields } } else { Outcome::Unchanged };
        let closing = Closing { scene_id: scene.id.clone(), record: last, keep: keys, shows: shown_objects(scene) };
        Ok((outcome, closing))
    }

    /// Delivers the scene to one of its items: only the fields whose value
    /// changed since the last write there. Before anything is written the
    /// item is read, and nothing is written unless it holds one of the
    /// scene's files: the index may be minutes old, and ratingKeys are
    /// handed out again after deletions (the read also gives the tags to
    /// remove, whether Plex's tag edits replace or add, and the locks
    /// `preservePlexEdits` looks at). Returns (fields written, anything
    /// sent, the item's record when it is left to the caller to save), or
    /// `None` when the item holds none of the scene's files.
    async fn push_item(
        &self,
        queue: &Store,
        scene: &Scene,
        wanted: &[Desired],
        target: Target<'_>,
        images: &mut Images,
    ) -> Result<Option<(usize, bool, Option<SyncRecord>)>, Error> {
        let Target { rating_key: rk, section, previous } = target;
        let (changes, released) = self.pending(wanted, &previous);
        let writes = !changes.is_empty() || !released.is_empty();
        let item = if writes { self.read_item(rk).await? } else { PlexItem::default() };
        if writes && !self.holds_scene_file(&item, section, scene).await {
            return Ok(None);
        }
        let changes: Vec<&Desired> = changes
            .into_iter()
            .filter(|d| {
                !self.settings.preserve_plex_edits
                    || !desired::person_edited(d, &item, previous.contains_key(d.field.name()))
            })
            .collect();
        let managed = managed_collections(scene, &self.settings, &previous);
        // What StashPlexAgent or the metadata provider left on an item
        // PlexSync never wrote is kept where it equals what PlexSync would
        // write: recorded, not sent.
        let agents = desired::written_by_legacy_agent(&item);
        let pulled = agents || desired::pulled_from_provider(&item);
        let (adopted, changes): (Vec<&Desired>, Vec<&Desired>) = changes.into_iter().partition(|d| {
            pulled
                && !previous.contains_key(d.field.name())
                && !matches!(d.value, Value::Image(_))
                && !desired::differs(d, &item, &managed)
        });
        let mut checked = self.check_images(&changes, &previous, scene, images).await?;
        if agents {
            self.keep_agents_poster(&item, &previous, &mut checked).await?;
        }
        let mut changes: Vec<&Desired> = changes
            .into_iter()
            .filter(|d| !matches!(d.value, desired::Value::Image(Some(_))) || checked.upload.contains_key(&d.field))
            .collect();
        let gallery = if self.settings.agent.gallery_images && self.settings.owns(Field::Poster) {
            let (on_item, reselect) = self.upload_gallery(rk, scene, &previous).await?;
            // The cover goes up again after them, so it stays the one shown.
            for d in wanted.iter().filter(|d| reselect.contains(&d.field) && self.settings.owns(d.field)) {
                if !changes.contains(&d) && self.cover_bytes(scene, d, &mut checked).await? {
                    changes.push(d);
                }
            }
            Some(on_item)
        } else {
            None
        };
        // An image we uploaded before is locked already: a new one needs
        // only its upload.
        let locked: Vec<Field> = [Field::Poster, Field::Background]
            .into_iter()
            .filter(|f| {
                previous.contains_key(&format!("{}{CONTENT_SUFFIX}", f.name()))
                    && !previous.contains_key(&format!("{}{ADOPTED_SUFFIX}", f.name()))
            })
            .collect();
        let plan = Plan { changes: &changes, released: &released, images: &checked.upload, locked: &locked };
        let held = Held { item: &item, managed: &managed };
        let mut written = match self.write(section, rk, &plan, held, scene).await {
            Err(e) if e.class == ErrorClass::NotInPlex => return Err(self.item_gone(rk).await),
            other => other?,
        };
        let mut hashes = previous;
        hashes.retain(|name, _| {
            name == PLEX_URL
                || Field::parse(name.split('.').next().unwrap_or(name)).is_some_and(|f| self.settings.owns(f))
        });
        written.extend(adopted.iter().map(|d| (d.field, d.hash())));
        for d in changes.iter().chain(&adopted) {
            if let Some(hash) = written.remove(&d.field) {
                hashes.insert(d.field.name().to_string(), hash);
                if let Value::Tags("collection", list) = &d.value {
                    let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
                    hashes.insert(COLLECTION_NAMES.into(), serde_json::json!(names).to_string());
                }
            }
        }
        hashes.extend(checked.record);
        if let Some(on_item) = gallery {
            hashes.insert(GALLERY_IMAGES.into(), serde_json::json!(on_item).to_string());
        }
        for d in wanted.iter().filter(|d| checked.adopted.contains(&d.field)) {
            hashes.insert(d.field.name().to_string(), d.hash());
            hashes.insert(format!("{}{ADOPTED_SUFFIX}", d.field.name()), "1".into());
        }
        for d in changes.iter().filter(|d| checked.upload.contains_key(&d.field)) {
            // Uploaded, so locked now.
            hashes.remove(&format!("{}{ADOPTED_SUFFIX}", d.field.name()));
            hashes.remove(&format!("{}{UNSHOWN_SUFFIX}", d.field.name()));
        }
        let record = SyncRecord {
            plex_server: self.plex_server(),
            rating_key: rk.to_string(),
            section: section.to_string(),
            field_hashes: hashes,
            stash_updated_at: scene.updated_at.clone(),
            synced_at: now_ms(),
        };
        let sent = !changes.is_empty() || !released.is_empty();
        if self.settings.agent.add_plex_url && !record.field_hashes.contains_key(PLEX_URL) {
            queue.save_record(&scene.id, &record)?;
            self.add_plex_url(queue, scene, record).await?;
            return Ok(Some((changes.len(), sent, None)));
        }
        Ok(Some((changes.len(), sent, Some(record))))
    }

    /// The values PlexSync writes for the scene (`only` those fields, when
    /// given), and what sanitizing dropped or changed on the way.
    fn wanted(&self, scene: &Scene, only: Option<&[Field]>) -> (Vec<Desired>, desired::Report) {
        let mut report = desired::Report::default();
        let mut wanted = desired::desired(scene, &self.settings, &mut report);
        if let Some(only) = only {
            wanted.retain(|d| only.contains(&d.field));
        }
        (wanted, report)
    }

    /// What an item last written with the hashes `previous` lacks: the
    /// values that changed, and the fields no longer owned whose locks are
    /// to be released.
    fn pending<'a>(
        &self,
        wanted: &'a [Desired],
        previous: &std::collections::BTreeMap<String, String>,
    ) -> (Vec<&'a Desired>, Vec<Field>) {
        let changes = wanted.iter().filter(|d| previous.get(d.field.name()) != Some(&d.hash())).collect();
        let released =
            previous.keys().filter_map(|name| Field::parse(name)).filter(|f| !self.settings.owns(*f)).collect();
        (changes, released)
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
            Ok(found @ Match::Found { .. }) => found.items().into_iter().map(|(rk, _)| rk).collect(),
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

    /// `AddPlexURL`: the item's `plex/library/metadata/<ratingKey>` on the
    /// scene in Stash (what the old plugin's refresh and other tools read),
    /// once per item: a URL a person removed is not added again. The write
    /// fires Stash's update hook, which the plugin knows as ours, and moves
    /// the scene's `updated_at`, which is marked as taken care of so change
    /// capture does not deliver the scene again for it.
    async fn add_plex_url(&self, queue: &Store, scene: &Scene, mut record: SyncRecord) -> Result<(), Error> {
        let url = format!("{}{}", crate::pipeline::legacy::PLEX_URL_PREFIX, record.rating_key);
        if !scene.urls.iter().any(|u| u.trim() == url) {
            tracing::info!("scene {}: adding {url} to its URLs in Stash (AddPlexURL)", scene.id);
            let updated_at = self.stash.add_url(&scene.id, &url).await?;
            if !updated_at.is_empty() {
                queue.mark_seen(&scene.id, &updated_at, now_ms())?;
            }
        }
        record.field_hashes.insert(PLEX_URL.into(), url);
        queue.save_record(&scene.id, &record)
    }

    /// Whether the item just read holds one of the scene's files; when it
    /// does not, the index learns what it holds now.
    async fn holds_scene_file(&self, item: &PlexItem, section: &str, scene: &Scene) -> bool {
        let maps = &self.settings.path_maps;
        let holds = item
            .files()
            .any(|p| scene.files.iter().any(|f| crate::pipeline::matching::is_file(f, &p.file, p.size, maps)));
        if !holds {
            tracing::warn!(
                "scene {}: Plex item {} now holds {} (renamed, rebuilt or a reused key): not written; matching again",
                scene.id,
                item.rating_key,
                item.files().map(|p| p.file.as_str()).collect::<Vec<_>>().join(", ")
            );
            let mut slot = self.index.lock().await;
            let failed = slot.as_mut().and_then(|index| {
                // Whatever replaced it is likely new to the index too.
                index.refreshed_at = None;
                let failed = index.insert(section, item).err();
                if failed.is_none() {
                    self.save_index(index, Some(std::slice::from_ref(&item.rating_key)));
                    self.requeue_moved(index);
                }
                failed
            });
            if let Some(e) = failed {
                tracing::warn!("{e}; the Plex library is read again");
                self.drop_index(&mut slot);
            }
        }
        holds
    }

    /// `IncludeGalleryImages`: the images of the scene's galleries this item
    /// has not had yet, uploaded as extra posters and backgrounds (by
    /// orientation with `SortGalleryImages`, else as both; one Stash request
    /// lists them all, at most [`GALLERY_IMAGES_MAX`]). Returns the ids now
    /// on the item, and the image fields an upload took over (an upload
    /// becomes the item's shown image).
    async fn upload_gallery(
        &self,
        rk: &str,
        scene: &Scene,
        previous: &std::collections::BTreeMap<String, String>,
    ) -> Result<(Vec<String>, Vec<Field>), Error> {
        let mut on_item: Vec<String> =
            previous.get(GALLERY_IMAGES).and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
        let ids: Vec<String> = scene.galleries.iter().map(|g| g.id.clone()).collect();
        if ids.is_empty() {
            return Ok((on_item, Vec::new()));
        }
        let (images, total) = self.stash.gallery_images(&ids, GALLERY_IMAGES_MAX).await?;
        if total > images.len() {
            tracing::warn!(
                "scene {}: its galleries hold {total} images; the first {} are sent",
                scene.id,
                images.len()
            );
        }
        let plex = self.plex()?;
        let mut took_over = Vec::new();
        let new: Vec<&GalleryImage> = images.iter().filter(|i| !on_item.contains(&i.id)).collect();
        for image in new {
            let Some(url) = image.paths.image.as_deref() else { continue };
            let shown = match self.stash.image(url, MAX_IMAGE_BYTES, None).await {
                Ok(Image::Fetched { bytes, .. }) => {
                    let Some(shown) = self.shown(&scene.id, &format!("gallery image {}", image.id), bytes) else {
                        continue;
                    };
                    shown
                }
                Ok(_) => continue,
                Err(e) if e.class == ErrorClass::BadData => {
                    self.tally(|s| s.warnings += 1);
                    tracing::warn!("scene {}: gallery image {} not copied: {e}", scene.id, image.id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let kinds: &[(ImageKind, Field)] = match (self.settings.agent.sort_gallery_images, image.portrait()) {
                (true, true) => &[(ImageKind::Poster, Field::Poster)],
                (true, false) => &[(ImageKind::Background, Field::Background)],
                (false, _) => &[(ImageKind::Poster, Field::Poster), (ImageKind::Background, Field::Background)],
            };
            for (kind, field) in kinds {
                self.tally(|s| s.plex_writes += 1);
                plex.upload_image(rk, *kind, shown.bytes.clone(), shown.kind).await?;
                if !took_over.contains(field) {
                    took_over.push(*field);
                }
            }
            on_item.push(image.id.clone());
        }
        Ok((on_item, took_over))
    }

    /// The scene's cover bytes for `d` (poster or background), to upload
    /// again; false when Stash has no cover yet.
    async fn cover_bytes(&self, scene: &Scene, d: &Desired, checked: &mut CheckedImages) -> Result<bool, Error> {
        if checked.upload.contains_key(&d.field) {
            return Ok(true);
        }
        let Value::Image(Some(url)) = &d.value else { return Ok(false) };
        match self.stash.image(url, MAX_IMAGE_BYTES, None).await? {
            Image::Fetched { bytes, .. } => match self.shown(&scene.id, d.field.name(), bytes) {
                Some(shown) => {
                    checked.upload.insert(d.field, shown);
                    Ok(true)
                }
                None => Ok(false),
            },
            Image::NotModified | Image::Placeholder => Ok(false),
        }
    }

    /// `bytes` as Plex can show them; `None`, with a warning, when Plex
    /// could not (an AVIF cover: Plex keeps its own frame).
    fn shown(&self, scene_id: &str, what: &str, bytes: Vec<u8>) -> Option<picture::Shown> {
        match picture::for_plex(bytes) {
            Ok(shown) => Some(shown),
            Err(why) => {
                self.tally(|s| s.warnings += 1);
                tracing::warn!("scene {scene_id}: {what} not copied: {why}");
                None
            }
        }
    }

    /// The poster StashPlexAgent downloaded into an item is Stash's cover
    /// already when its bytes are the same: then it is recorded, not
    /// uploaded again (one read of Plex's copy instead of an upload).
    async fn keep_agents_poster(
        &self,
        item: &PlexItem,
        previous: &std::collections::BTreeMap<String, String>,
        checked: &mut CheckedImages,
    ) -> Result<(), Error> {
        let content = format!("{}{CONTENT_SUFFIX}", Field::Poster.name());
        let (Some(thumb), Some(fetched)) = (item.thumb.as_deref(), checked.upload.get(&Field::Poster)) else {
            return Ok(());
        };
        if previous.contains_key(&content) {
            return Ok(());
        }
        let theirs = match self.plex()?.image(thumb, MAX_IMAGE_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) if e.class == ErrorClass::BadData || e.class == ErrorClass::NotInPlex => return Ok(()),
            Err(e) => return Err(e),
        };
        if Sha256::digest(&theirs) == Sha256::digest(&fetched.bytes) {
            checked.upload.remove(&Field::Poster);
            checked.adopted.push(Field::Poster);
        }
        Ok(())
    }

    /// `GET` of the item, when an edit depends on what it holds (or the
    /// item as it was read ahead a moment ago).
    async fn read_item(&self, rk: &str) -> Result<PlexItem, Error> {
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
    async fn item_gone(&self, rk: &str) -> Error {
        self.drop_index(&mut *self.index.lock().await);
        Error::new(ErrorClass::NotInPlex, format!("Plex item {rk} disappeared"))
    }

    /// Writes `changes` in as few edits as a proxy in front of Plex accepts
    /// (falling back to one edit per field when Plex refuses a value, and
    /// to a smaller value when a proxy refuses a request for its size),
    /// then the images. Returns the hashes of what was written; a refused
    /// field is left out and warned about.
    async fn write(
        &self,
        section: &str,
        rk: &str,
        plan: &Plan<'_>,
        held: Held<'_>,
        scene: &Scene,
    ) -> Result<std::collections::HashMap<Field, String>, Error> {
        let Plan { changes, released, images, locked } = *plan;
        let plex = self.plex()?.clone();
        let key = RatingKey::parse(rk)?;
        let mut written = std::collections::HashMap::new();
        let edits: Vec<&Desired> = changes
            .iter()
            .copied()
            .filter(|d| !(matches!(d.value, Value::Image(_)) && locked.contains(&d.field)))
            .collect();
        // One unit per field (a tag list whole: split over two requests, a
        // list that replaces would keep only its second half), and the locks
        // of released fields.
        let mut units: Vec<Unit<Option<&Desired>>> = edits
            .iter()
            .filter(|d| !matches!(d.value, Value::Rate(_)))
            .map(|d| (Some(*d), desired::edit_params(&[d], &[], held.item, held.managed)))
            .collect();
        units.push((None, desired::edit_params(&[], released, held.item, held.managed)));
        units.retain(|(_, params)| !params.is_empty());
        let room = MAX_REQUEST_LINE.saturating_sub(plex.edit_line_len(section, &key, &[]));
        for batch in batches(units, room) {
            let params: Vec<(String, String)> = batch.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
            self.tally(|s| s.plex_writes += 1);
            let refused = match plex.edit(section, &key, &params).await {
                Ok(()) => {
                    written.extend(batch.iter().filter_map(|(d, _)| d.map(|d| (d.field, d.hash()))));
                    continue;
                }
                Err(e) if e.class == ErrorClass::BadData => e,
                Err(e) => return Err(e),
            };
            let alone = batch.len() == 1;
            for (d, params) in batch {
                let first = if alone { Some(refused.clone()) } else { None };
                if let Some((field, hash)) =
                    self.edit_alone(&plex, section, &key, d, params, held, scene, first).await?
                {
                    written.insert(field, hash);
                }
            }
        }
        for d in changes {
            if let Value::Rate(rating) = &d.value {
                self.tally(|s| s.plex_writes += 1);
                plex.rate(&key, rating.as_deref()).await?;
                written.insert(d.field, d.hash());
                continue;
            }
            let Some(image) = images.get(&d.field) else { continue };
            let kind = if d.field == Field::Poster { ImageKind::Poster } else { ImageKind::Background };
            self.tally(|s| s.plex_writes += 1);
            plex.upload_image(rk, kind, image.bytes.clone(), image.kind).await?;
            written.insert(d.field, d.hash());
        }
        Ok(written)
    }

    /// One field's edit on its own (`refused`: how it was refused already,
    /// if it was sent alone). A proxy refusing it for its size gets the
    /// value smaller until it passes (recorded as written, with a warning:
    /// retrying the whole value could never pass); a value Plex refuses is
    /// skipped with a warning. Returns the field's hash when written.
    #[allow(clippy::too_many_arguments)]
    async fn edit_alone(
        &self,
        plex: &PlexClient,
        section: &str,
        key: &RatingKey,
        d: Option<&Desired>,
        mut params: Vec<(String, String)>,
        held: Held<'_>,
        scene: &Scene,
        mut refused: Option<Error>,
    ) -> Result<Option<(Field, String)>, Error> {
        let name = d.map_or("locks", |d| d.field.name());
        let mut current = d.cloned();
        loop {
            let e = match refused.take() {
                Some(e) => e,
                None => {
                    self.tally(|s| s.plex_writes += 1);
                    match plex.edit(section, key, &params).await {
                        Ok(()) => {
                            if current.as_ref() != d {
                                self.tally(|s| s.warnings += 1);
                                tracing::warn!(
                                    "scene {}: {name} was cut to fit a request the proxy in front of Plex accepts",
                                    scene.id
                                );
                            }
                            return Ok(d.map(|d| (d.field, d.hash())));
                        }
                        Err(e) if e.class == ErrorClass::BadData => e,
                        Err(e) => return Err(e),
                    }
                }
            };
            match current.as_ref().filter(|_| e.too_large()).and_then(desired::shrunk) {
                Some(smaller) => {
                    params = desired::edit_params(&[&smaller], &[], held.item, held.managed);
                    current = Some(smaller);
                }
                None => {
                    self.tally(|s| s.warnings += 1);
                    tracing::warn!("scene {}: Plex refused the {name} value; field skipped ({e})", scene.id);
                    return Ok(None);
                }
            }
        }
    }

    /// Decides, for each image whose Stash URL changed (Stash's image URLs
    /// carry `?t=<updated_at>`, so every save of the scene changes them),
    /// whether its content is new to the item. The request carries the
    /// `ETag` we saw last, so an unchanged image costs a `304` and no
    /// download; content is compared by hash when Stash sends the image
    /// anyway. Stash's stand-in for a missing cover is never copied.
    async fn check_images(
        &self,
        changes: &[&Desired],
        previous: &std::collections::BTreeMap<String, String>,
        scene: &Scene,
        images: &mut Images,
    ) -> Result<CheckedImages, Error> {
        let mut checked = CheckedImages::default();
        for d in changes {
            let Value::Image(Some(url)) = &d.value else { continue };
            let key = |suffix: &str| format!("{}{suffix}", d.field.name());
            let etag = previous.get(&key(ETAG_SUFFIX)).cloned();
            let answer = match images.0.get(&(url.clone(), etag.clone())) {
                Some(answer) => answer.clone(),
                None => {
                    let answer = match self.stash.image(url, MAX_IMAGE_BYTES, etag.as_deref()).await {
                        Err(e) if e.class == ErrorClass::BadData => {
                            self.tally(|s| s.warnings += 1);
                            tracing::warn!("scene {}: {} not copied: {e}", scene.id, d.field.name());
                            continue;
                        }
                        other => other?,
                    };
                    images.0.insert((url.clone(), etag.clone()), answer.clone());
                    answer
                }
            };
            match answer {
                Image::NotModified => checked.record.push((d.field.name().to_string(), d.hash())),
                Image::Placeholder => {
                    tracing::debug!("scene {}: no cover in Stash yet; {} left as it is", scene.id, d.field.name())
                }
                Image::Fetched { bytes, etag } => {
                    let content = hex::encode(&Sha256::digest(&bytes)[..12]);
                    if let Some(etag) = etag {
                        checked.record.push((key(ETAG_SUFFIX), etag));
                    }
                    checked.record.push((key(CONTENT_SUFFIX), content.clone()));
                    if previous.get(&key(CONTENT_SUFFIX)) == Some(&content) {
                        checked.record.push((d.field.name().to_string(), d.hash()));
                    } else if let Some(shown) = self.shown(&scene.id, d.field.name(), bytes) {
                        checked.upload.insert(d.field, shown);
                    } else {
                        // Warned once: taken care of until the cover changes,
                        // and no difference to reconcile meanwhile.
                        checked.record.push((d.field.name().to_string(), d.hash()));
                        checked.record.push((key(UNSHOWN_SUFFIX), "1".into()));
                    }
                }
            }
        }
        Ok(checked)
    }
}

/// Part of an edit that goes whole into one request: what it is for, and
/// its query parameters.
type Unit<T> = (T, Vec<(String, String)>);

/// `units` packed in order into as few batches as `room` (the bytes a
/// request line has left for them) allows; a unit that does not fit alone
/// is a batch of its own.
fn batches<T>(units: Vec<Unit<T>>, room: usize) -> Vec<Vec<Unit<T>>> {
    let mut out: Vec<Vec<Unit<T>>> = Vec::new();
    let mut used = 0;
    for unit in units {
        let len: usize = unit.1.iter().map(pair_len).sum();
        match out.last_mut() {
            Some(last) if used + len <= room => {
                used += len;
                last.push(unit);
            }
            _ => {
                used = len;
                out.push(vec![unit]);
            }
        }
    }
    out
}

/// What a query pair adds to a URL's length: `&key=value`, form-encoded
/// as the URL library encodes it.
fn pair_len((key, value): &(String, String)) -> usize {
    let encoded = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).map(str::len).sum::<usize>();
    encoded(key) + encoded(value) + 2
}

/// The performers, studios (and parent) and tags a scene shows, by kind.
fn shown_objects(scene: &Scene) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    out.extend(scene.performers.iter().map(|p| ("performer", p.id.clone())));
    out.extend(scene.tags.iter().map(|t| ("tag", t.id.clone())));
    if let Some(studio) = &scene.studio {
        out.push(("studio", studio.id.clone()));
        out.extend(studio.parent_studio.iter().map(|p| ("studio", p.id.clone())));
    }
    out
}

/// One Plex item a scene is delivered to, and what was last written there.
struct Target<'a> {
    rating_key: &'a str,
    section: &'a str,
    previous: std::collections::BTreeMap<String, String>,
}

/// Answers of Stash's image server within one delivery, by (URL, ETag
/// sent): poster and background share the screenshot, and every item of a
/// multi-item scene needs the same image.
#[derive(Default)]
struct Images(std::collections::HashMap<(String, Option<String>), Image>);

/// The images to upload, and record entries for the ones Plex has already.
#[derive(Default)]
struct CheckedImages {
    /// Images downloaded from Stash whose content is new to the item, as
    /// Plex decodes them.
    upload: std::collections::HashMap<Field, picture::Shown>,
    record: Vec<(String, String)>,
    /// Images Plex has already (StashPlexAgent's copy of the same cover).
    adopted: Vec<Field>,
}

/// Record key suffixes beside a field's value hash: the hash of an image's
/// content and its `ETag` at Stash.
const CONTENT_SUFFIX: &str = ".content";
/// Recorded beside an image Plex could not be given (an AVIF cover):
/// Plex shows its own frame, and reconcile does not count it as a difference.
const UNSHOWN_SUFFIX: &str = ".unshown";

/// Whether the field's image could not be given to Plex at its last
/// delivery (see [`UNSHOWN_SUFFIX`]).
pub(crate) fn unshown(previous: &std::collections::BTreeMap<String, String>, field: Field) -> bool {
    previous.contains_key(&format!("{}{UNSHOWN_SUFFIX}", field.name()))
}
/// Record key of the gallery images uploaded to an item (a JSON list of
/// Stash image ids), so each goes up once.
const GALLERY_IMAGES: &str = "poster.gallery";
/// Gallery images sent per scene, at most: a bound on what one delivery
/// can cost.
pub(crate) const GALLERY_IMAGES_MAX: usize = 50;
/// Beside an image kept as StashPlexAgent left it: not locked yet.
const ADOPTED_SUFFIX: &str = ".adopted";
const ETAG_SUFFIX: &str = ".etag";

/// What one delivery writes: the changed fields, the fields no longer
/// owned (unlocked), the images whose content is new, and the image fields
/// locked by an earlier upload.
#[derive(Clone, Copy)]
struct Plan<'a> {
    changes: &'a [&'a Desired],
    released: &'a [Field],
    images: &'a std::collections::HashMap<Field, picture::Shown>,
    locked: &'a [Field],
}

/// The item as read before the write, and which of its collections
/// PlexSync manages.
#[derive(Clone, Copy)]
struct Held<'a> {
    item: &'a PlexItem,
    managed: &'a Managed,
}

/// Record key of the collection names last written to an item (a JSON
/// list), so a collection PlexSync no longer makes is removed and a
/// person's own is not.
const COLLECTION_NAMES: &str = "collection.names";

/// Record key of the Plex URL added to the scene in Stash (`AddPlexURL`).
const PLEX_URL: &str = "plexUrl";

/// Which collections on an item PlexSync manages, from what was recorded
/// at the last write there.
pub(crate) fn managed_collections(
    scene: &Scene,
    settings: &Settings,
    previous: &std::collections::BTreeMap<String, String>,
) -> Managed {
    let written = previous.get(COLLECTION_NAMES).and_then(|j| serde_json::from_str::<Vec<String>>(j).ok());
    let wrote_before = previous.contains_key(Field::Collection.name());
    Managed::new(scene, &settings.agent, written, wrote_before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_adds_its_length_to_the_url() {
        let base = url::Url::parse("http://plex:32400/library/sections/1/all?type=1&id=7").unwrap();
        let pairs: Vec<(String, String)> = [
            ("title.value", "Café & “quotes” at 100%"),
            ("summary.value", "two\nlines / ? = + #"),
            ("tag[0].tag.tag", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut url = base.clone();
        url.query_pairs_mut().extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(url.as_str().len(), base.as_str().len() + pairs.iter().map(pair_len).sum::<usize>());
    }

    #[test]
    fn units_are_packed_in_order_within_the_room() {
        // ("k", n × "v") adds n + 4 bytes: `&k=` and the value.
        let unit = |n: usize| (n, vec![("k".to_string(), "v".repeat(n))]);
        let packed = batches(vec![unit(10), unit(12), unit(50), unit(5), unit(5)], 30);
        let sizes: Vec<Vec<usize>> = packed.iter().map(|b| b.iter().map(|(n, _)| *n).collect()).collect();
        assert_eq!(sizes, vec![vec![10, 12], vec![50], vec![5, 5]]);
    }
}
