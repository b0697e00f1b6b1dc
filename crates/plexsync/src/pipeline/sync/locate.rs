//! Where a scene is delivered: the library index kept current (built,
//! stored, refreshed on a miss, re-read where files moved) and asked for
//! the scene's items, with the checks that a written item holds the
//! scene's file; scans asked for folders Plex has not read yet.

use std::time::{Duration, Instant};

use crate::clients::plex::{PlexClient, PlexItem};
use crate::clients::stash::Scene;
use crate::error::{Error, ErrorClass};
use crate::pipeline::matching::{rating_key_in_url, LibraryIndex, Match, MatchedItem};
use crate::store::{now_ms, Store};

use super::delivery::Pipeline;

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

/// Files of other scenes looked up in Stash for one delivery, at most.
const MAX_FOREIGN_FILES: usize = 8;

impl Pipeline {
    /// Which server and libraries an index belongs to.
    pub(super) fn index_key(&self) -> String {
        let url = self.plex_server();
        format!("{url}|{}", self.settings.libraries.join(","))
    }

    /// Fills `slot` (the locked index) from the store or from Plex, and
    /// returns the index.
    pub(super) async fn ensure_index<'a>(
        &self,
        slot: &'a mut Option<LibraryIndex>,
    ) -> Result<&'a mut LibraryIndex, Error> {
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
                queue.reset_hashes(id.as_str())?;
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
    pub(super) fn drop_index(&self, slot: &mut Option<LibraryIndex>) {
        *slot = None;
        if let Some(q) = self.store() {
            let _ = q.drop_index();
        }
    }

    /// Asks Plex to match the scene's items again (a refresh matches an
    /// unmatched item): the provider could not answer Plex's last match
    /// or metadata call for them, and Plex does not ask again by itself.
    pub(super) async fn rematch(&self, queue: &Store, scene: &Scene) -> Result<(), Error> {
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

    /// The scene's items (ratingKey, section), or the error that says why
    /// there are none to write: ambiguous, or not in Plex yet (with a
    /// partial scan of its folders on the first miss and every fourth after,
    /// so new files arrive without waiting for Plex's own schedule).
    pub(super) async fn targets(
        &self,
        queue: &Store,
        scene: &Scene,
        recorded: &[String],
        attempts: i64,
    ) -> Result<Vec<MatchedItem>, Error> {
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
            for MatchedItem { rating_key: rk, .. } in found.items() {
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

    /// Whether the item just read holds one of the scene's files; when it
    /// does not, the index learns what it holds now.
    pub(super) async fn holds_scene_file(&self, item: &PlexItem, section: &str, scene: &Scene) -> bool {
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
}
