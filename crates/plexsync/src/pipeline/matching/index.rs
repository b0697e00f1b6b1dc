//! The library index: the Plex library's items and their files' lookup
//! keys in a private SQLite database, read once in pages and kept current.

use std::time::Instant;

use rusqlite::{params, OptionalExtension};

use crate::clients::plex::{PlexClient, PlexItem, PlexSection};
use crate::clients::stash::Scene;
use crate::config::{PathMap, Settings};
use crate::error::{Error, ErrorClass};

use super::decision::{self, IndexedItem, Lookup, Match};
use super::paths::{is_file, key_hash, normalize, FileKeys, Key};

/// The index's own database. Lookup keys are 64-bit hashes, not text: a
/// lookup checks each candidate's own files against the key, so a hash
/// collision or an item that moved can never produce a wrong match.
/// The rollback journal is in memory and nothing is synced: the file is
/// scratch, rebuilt from Plex or from the queue's copy by the next process.
const SCHEMA: &str = "
PRAGMA journal_mode = MEMORY;
PRAGMA synchronous = OFF;
CREATE TABLE items (
    id         INTEGER PRIMARY KEY,
    rating_key TEXT NOT NULL UNIQUE,
    section    TEXT NOT NULL,
    held       INTEGER NOT NULL,
    item       TEXT NOT NULL
);
CREATE INDEX items_by_section ON items (section, held);
CREATE TABLE keys (
    kind INTEGER NOT NULL,
    hash INTEGER NOT NULL,
    id   INTEGER NOT NULL
);
";

/// The keys' lookup index, made at the first lookup rather than with the
/// table: hashes arrive in random order, and a million items' keys
/// inserted one by one into an index touched a random page each, most of
/// them no longer cached. Made once over the loaded rows, it is one sort.
const KEYS_LOOKUP: &str = "CREATE INDEX IF NOT EXISTS keys_lookup ON keys (kind, hash, id)";

/// Sizes the index's page cache to its file by the queue's rule
/// ([`crate::store::size_cache`]): at a million items the file is about
/// 390 MB, and a reconcile read about four pages of it from the
/// operating system for every page of the queue it read.
fn fit_cache(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    let bytes: i64 =
        db.query_row("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()", [], |r| r.get(0))?;
    crate::store::size_cache(db, crate::units::to_u64(bytes))
}

/// Rows the stored copy is written from, read in runs of this many.
const ROWS_PER_READ: i64 = 1000;

/// The library index. Its items live in a private SQLite database that
/// SQLite keeps in a temporary file (deleted as soon as it is opened, so
/// a crash leaves nothing behind; `SQLITE_TMPDIR` chooses the folder),
/// with SQLite's small page cache: memory stays flat whatever the library's
/// size, where a million items held in maps took over 400 MB.
#[derive(Debug)]
pub struct LibraryIndex {
    /// Behind a lock only so the index can be shared by reference between
    /// tasks; every use is short and synchronous.
    db: std::sync::Mutex<rusqlite::Connection>,
    len: usize,
    pub sections: Vec<PlexSection>,
    pub built_at: Option<Instant>,
    /// When new and changed items were last fetched.
    pub refreshed_at: Option<Instant>,
    /// Newest `addedAt` seen, for incremental refreshes. Not `updatedAt`:
    /// every edit we make bumps an item's `updatedAt`, so a refresh by it
    /// would read back everything we just wrote.
    pub newest_added: i64,
    /// Plex reads the index has made.
    pub reads: usize,
    /// Whether [`KEYS_LOOKUP`] was made.
    searchable: std::sync::atomic::AtomicBool,
    /// ratingKeys whose files changed under the index (a rename, a key
    /// handed out again), until taken: the scenes written there before
    /// are delivered again.
    pub moved: Vec<String>,
    /// Items holding files, per section, kept as items come and go: the
    /// count is compared with Plex's every few seconds while scenes miss,
    /// and counting a million rows each time cost more than the miss.
    held_in: std::collections::HashMap<Box<str>, usize>,
}

/// Counts `item` in (`add`) or out of its section's items holding files.
fn count_held(held_in: &mut std::collections::HashMap<Box<str>, usize>, item: &IndexedItem, add: bool) {
    if item.files.is_empty() {
        return;
    }
    let count = held_in.entry(item.section.clone()).or_default();
    *count = if add { *count + 1 } else { count.saturating_sub(1) };
}

/// An error of the index's database, saying where it lives.
fn index_error(e: rusqlite::Error) -> Error {
    let hint = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            "the temporary folder is full; free some space there or point SQLITE_TMPDIR at a larger disk"
        }
        _ => "it is rebuilt from Plex by the next run",
    };
    Error::new(ErrorClass::Bug, format!("the Plex library index (a temporary SQLite file) failed: {e}; {hint}"))
}

fn parse_item(json: &str) -> Result<IndexedItem, Error> {
    serde_json::from_str(json)
        .map_err(|e| Error::new(ErrorClass::Bug, format!("the Plex library index holds an unreadable item: {e}")))
}

impl LibraryIndex {
    /// An index with no items and no sections.
    pub fn empty() -> Result<Self, Error> {
        // An empty name is SQLite's private temporary database.
        let db = rusqlite::Connection::open("").map_err(index_error)?;
        db.execute_batch(SCHEMA).map_err(index_error)?;
        Ok(LibraryIndex {
            db: std::sync::Mutex::new(db),
            len: 0,
            sections: Vec::new(),
            built_at: None,
            refreshed_at: None,
            newest_added: 0,
            reads: 0,
            moved: Vec::new(),
            searchable: false.into(),
            held_in: Default::default(),
        })
    }

    pub(super) fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one transaction (thousands of rows each committed on
    /// their own would be slow); a failure undoes its rows.
    pub(crate) fn in_transaction<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, Error>) -> Result<R, Error> {
        self.db().execute_batch("BEGIN").map_err(index_error)?;
        let (len, moved) = (self.len, self.moved.len());
        let out = f(self);
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.db().execute_batch(end).map_err(index_error);
        if out.is_err() || ended.is_err() {
            self.len = len;
            self.moved.truncate(moved);
            // A lookup index made inside the transaction was undone too.
            self.searchable = false.into();
        }
        ended.and(out)
    }

    /// Reads every configured movie section (all movie sections when none
    /// is named) page by page.
    pub async fn build(plex: &PlexClient, settings: &Settings) -> Result<Self, Error> {
        let all = plex.sections().await?;
        let mut index = LibraryIndex { reads: 1, ..LibraryIndex::empty()? };
        let sections: Vec<PlexSection> = if settings.libraries.is_empty() {
            all.into_iter().filter(|s| s.kind == "movie").collect()
        } else {
            let mut chosen = Vec::new();
            for name in &settings.libraries {
                match all.iter().find(|s| s.title.eq_ignore_ascii_case(name)) {
                    // Movies and Other Videos are both `movie`; a show or photo
                    // section holds no movie items, so every scene would
                    // silently be "not in Plex".
                    Some(s) if s.kind != "movie" => {
                        return Err(Error::new(
                            ErrorClass::Config,
                            format!(
                                "plexLibraries names '{name}', a Plex library of type '{}'; PlexSync writes to \
                                 libraries of type Movies or Other Videos: add your Stash folders to one of those \
                                 in Plex and name it in plexLibraries",
                                s.kind
                            ),
                        ))
                    }
                    Some(s) => chosen.push(s.clone()),
                    None => {
                        let known: Vec<&str> = all.iter().map(|s| s.title.as_str()).collect();
                        return Err(Error::new(
                            ErrorClass::Config,
                            format!(
                                "plexLibraries names '{name}', which Plex does not have; Plex has: {}",
                                known.join(", ")
                            ),
                        ));
                    }
                }
            }
            chosen
        };
        for section in &sections {
            let what = format!("reading Plex library {}", section.title);
            let mut done = 0;
            let mut failed = None;
            index.reads += plex
                .for_each_page(&section.key, &[], &mut |items, total| {
                    done += items.len();
                    crate::progress::report(&what, done, total);
                    if failed.is_none() {
                        failed = index.insert_all(&section.key, &items).err();
                    }
                })
                .await?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        index.sections = sections;
        index.built_at = Some(Instant::now());
        index.refreshed_at = index.built_at;
        Ok(index)
    }

    /// Fetches only items Plex added since the newest one seen (one request
    /// per section, usually tiny), so newly scanned files are found without
    /// re-reading the library, and our own edits are not read back. An item
    /// whose file moved is found by the next full read (or a 404).
    /// Returns the ratingKeys of items new to the index or changed.
    pub(crate) async fn refresh_recent(&mut self, plex: &PlexClient) -> Result<Vec<String>, Error> {
        // A minute of overlap: Plex's times have second precision and
        // clocks of scans in progress may lag.
        let since = (self.newest_added - 60).max(0);
        let mut changed = Vec::new();
        for section in self.sections.clone() {
            let items = plex.section_added_since(&section.key, since).await?;
            self.reads += 1;
            changed.extend(self.insert_all(&section.key, &items)?);
        }
        self.refreshed_at = Some(Instant::now());
        Ok(changed)
    }

    /// Adds or replaces `items` of `section`; the ratingKeys of those new
    /// to the index or changed.
    pub(crate) fn insert_all(&mut self, section: &str, items: &[PlexItem]) -> Result<Vec<String>, Error> {
        self.in_transaction(|index| {
            let mut changed = Vec::new();
            for item in items {
                if index.insert(section, item)? {
                    changed.push(item.rating_key.clone());
                }
            }
            Ok(changed)
        })
    }

    /// Adds or replaces one item; whether it was new or changed.
    pub(crate) fn insert(&mut self, section: &str, item: &PlexItem) -> Result<bool, Error> {
        // `addedAt` may be a file's modification time, even in the future:
        // beyond now it would hide every later addition from refreshes.
        let added = item.added_at.unwrap_or(0).min(crate::store::now_ms() / 1000);
        self.newest_added = self.newest_added.max(added);
        self.insert_indexed(&IndexedItem {
            rating_key: item.rating_key.as_str().into(),
            section: section.into(),
            files: item.files().map(|p| (p.file.as_str().into(), p.size)).collect(),
            durations: item.files().filter_map(|p| p.duration).collect(),
        })
    }

    /// Adds or replaces an item; whether it was new or changed. A
    /// replaced item's old keys stay; lookups check candidates, so they
    /// are harmless. Keys are added only for new files, so an item edited
    /// again and again does not grow the table.
    fn insert_indexed(&mut self, item: &IndexedItem) -> Result<bool, Error> {
        let json = serde_json::to_string(item).expect("items serialize");
        let db = self.db.get_mut().unwrap_or_else(|e| e.into_inner());
        let before: Option<(i64, String)> = db
            .prepare_cached("SELECT id, item FROM items WHERE rating_key = ?1")
            .and_then(|mut s| s.query_row([&*item.rating_key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(index_error)?;
        let held = crate::units::to_i64(item.files.len());
        let id = match before {
            Some((_, old)) if old == json => return Ok(false),
            Some((id, old)) => {
                let old = parse_item(&old)?;
                if !old.files.is_empty() && old.files != item.files {
                    self.moved.push(item.rating_key.to_string());
                }
                count_held(&mut self.held_in, &old, false);
                count_held(&mut self.held_in, item, true);
                db.prepare_cached("UPDATE items SET section = ?2, held = ?3, item = ?4 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id, &*item.section, held, json]))
                    .map_err(index_error)?;
                if old.files == item.files {
                    return Ok(true);
                }
                id
            }
            None => {
                db.prepare_cached("INSERT INTO items (rating_key, section, held, item) VALUES (?1, ?2, ?3, ?4)")
                    .and_then(|mut s| s.execute(params![&*item.rating_key, &*item.section, held, json]))
                    .map_err(index_error)?;
                self.len += 1;
                count_held(&mut self.held_in, item, true);
                db.last_insert_rowid()
            }
        };
        let mut add =
            db.prepare_cached("INSERT INTO keys (kind, hash, id) VALUES (?1, ?2, ?3)").map_err(index_error)?;
        for (path, size) in &item.files {
            let k = FileKeys::of(path);
            let mut keys = vec![(Key::Path, key_hash(&k.path)), (Key::Name, key_hash(&k.name))];
            if let Some(size) = size {
                keys.push((Key::NameSize, key_hash((&k.name, size))));
                keys.push((Key::StemSize, key_hash((&k.stem, size))));
            }
            for (kind, hash) in keys {
                add.execute(params![kind as i64, hash, id]).map_err(index_error)?;
            }
        }
        Ok(true)
    }

    /// The item `rk`, if the library has it.
    pub(crate) fn item(&self, rk: &str) -> Result<Option<IndexedItem>, Error> {
        self.item_json(rk)?.as_deref().map(parse_item).transpose()
    }

    /// The item `rk` as it is stored, if the library has it.
    fn item_json(&self, rk: &str) -> Result<Option<String>, Error> {
        self.db()
            .prepare_cached("SELECT item FROM items WHERE rating_key = ?1")
            .and_then(|mut s| s.query_row([rk], |r| r.get(0)).optional())
            .map_err(index_error)
    }

    /// What to store besides the items: which server and libraries, when
    /// read, the newest addition, the sections.
    pub(crate) fn meta(&self, key: &str) -> String {
        let age_ms = self.built_at.map_or(0, |t| crate::units::millis(t.elapsed()));
        let meta = serde_json::json!({
            "key": key,
            "built_at_ms": crate::store::now_ms() - age_ms,
            "newest_added": self.newest_added,
            "sections": self.sections,
        });
        meta.to_string()
    }

    /// One stored row per item (ratingKey, JSON), of `only` these items
    /// when given, read a thousand at a time as they are taken.
    pub(crate) fn rows<'a>(
        &'a self,
        only: Option<&'a [String]>,
    ) -> Box<dyn Iterator<Item = Result<(String, String), Error>> + 'a> {
        if let Some(keys) = only {
            let row = |k: &String| self.item_json(k).map(|json| json.map(|json| (k.clone(), json))).transpose();
            return Box::new(keys.iter().filter_map(row));
        }
        let mut after = 0;
        let mut run = std::collections::VecDeque::new();
        Box::new(std::iter::from_fn(move || {
            if run.is_empty() {
                let read = self.rows_after(after).map(|rows| {
                    after = rows.last().map_or(after, |r| r.0);
                    run.extend(rows.into_iter().map(|(_, rk, json)| Ok((rk, json))));
                });
                if let Err(e) = read {
                    after = i64::MAX;
                    return Some(Err(e));
                }
            }
            run.pop_front()
        }))
    }

    /// Up to [`ROWS_PER_READ`] items after position `after`: (position,
    /// ratingKey, JSON).
    fn rows_after(&self, after: i64) -> Result<Vec<(i64, String, String)>, Error> {
        let db = self.db();
        let mut stmt = db
            .prepare_cached("SELECT id, rating_key, item FROM items WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(index_error)?;
        let rows = stmt.query_map(params![after, ROWS_PER_READ], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        rows.and_then(Iterator::collect).map_err(index_error)
    }

    /// An empty index described by stored `meta`, unless it was read for
    /// another `key` (server or libraries changed) or is older than
    /// `max_age`; its items follow through [`LibraryIndex::insert_row`].
    pub(crate) fn from_meta(key: &str, meta: &str, max_age: std::time::Duration) -> Option<Self> {
        let meta: serde_json::Value = serde_json::from_str(meta).ok()?;
        if meta["key"].as_str() != Some(key) {
            return None;
        }
        let age_ms = crate::units::to_u64(crate::store::now_ms() - meta["built_at_ms"].as_i64()?);
        let age = std::time::Duration::from_millis(age_ms);
        if age > max_age {
            return None;
        }
        let sections = serde_json::from_value(meta["sections"].clone()).ok()?;
        // An index stored before `newest_added` existed is read again.
        let newest_added = meta["newest_added"].as_i64()?;
        let empty = LibraryIndex::empty().map_err(|e| tracing::warn!("{e}")).ok()?;
        Some(LibraryIndex { sections, newest_added, built_at: Instant::now().checked_sub(age), ..empty })
    }

    /// Adds one stored row; false when it cannot be read or kept.
    pub(crate) fn insert_row(&mut self, row: &str) -> bool {
        serde_json::from_str(row).is_ok_and(|item| self.insert_indexed(&item).is_ok())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The files of item `rk` that are none of the scene's (Plex merged or
    /// stacked other files into it): (path, size).
    pub(crate) fn foreign_files(
        &self,
        rk: &str,
        scene: &Scene,
        maps: &[PathMap],
    ) -> Result<Vec<(String, Option<u64>)>, Error> {
        let Some(item) = self.item(rk)? else { return Ok(Vec::new()) };
        Ok(item
            .files
            .iter()
            .filter(|(p, size)| !scene.files.iter().any(|f| is_file(f, p, *size, maps)))
            .map(|(p, size)| (p.to_string(), *size))
            .collect())
    }

    /// The items of `old` that this index no longer has, or has with other
    /// files (after a full read replaced it).
    pub(crate) fn moved_since(&self, old: &LibraryIndex) -> Result<Vec<String>, Error> {
        let mut moved = Vec::new();
        for row in old.rows(None) {
            let (rk, json) = row?;
            let was = parse_item(&json)?;
            if !was.files.is_empty() && self.item(&rk)?.is_none_or(|now| now.files != was.files) {
                moved.push(rk);
            }
        }
        Ok(moved)
    }

    /// Drops what the index knows of an item Plex no longer has.
    pub(crate) fn forget(&mut self, rk: &str) -> Result<(), Error> {
        let Some(mut item) = self.item(rk)? else { return Ok(()) };
        count_held(&mut self.held_in, &item, false);
        item.files = Box::default();
        item.durations = Box::default();
        let json = serde_json::to_string(&item).expect("items serialize");
        self.db()
            .execute("UPDATE items SET held = 0, item = ?2 WHERE rating_key = ?1", params![rk, json])
            .map_err(index_error)?;
        Ok(())
    }

    /// Items of `section` that hold files (what Plex's count of it should be).
    pub(crate) fn count_in(&self, section: &str) -> usize {
        self.held_in.get(section).copied().unwrap_or(0)
    }

    /// The section holding `path` (after mapping), for a partial scan.
    pub(crate) fn section_for(&self, plex_path: &str) -> Option<&PlexSection> {
        let p = normalize(plex_path, true);
        self.sections.iter().find(|s| {
            s.locations.iter().any(|l| {
                let l = normalize(&l.path, true);
                p.strip_prefix(l.trim_end_matches('/')).is_some_and(|r| r.starts_with('/'))
            })
        })
    }

    /// Finds the scene's items. `recorded` are the ratingKeys we wrote to last time.
    pub fn find(&self, scene: &Scene, recorded: &[String], maps: &[PathMap]) -> Result<Match, Error> {
        decision::find(self, scene, recorded, maps)
    }

    /// Finds the scene's items and says how: one line per signal tried.
    pub(crate) fn explain(
        &self,
        scene: &Scene,
        recorded: &[String],
        maps: &[PathMap],
    ) -> Result<(Match, Vec<String>), Error> {
        decision::explain(self, scene, recorded, maps)
    }
}

impl Lookup for LibraryIndex {
    fn item(&self, rk: &str) -> Result<Option<IndexedItem>, Error> {
        LibraryIndex::item(self, rk)
    }

    // Collisions and moved items drop out here, by `holds`.
    fn lookup(
        &self,
        kind: Key,
        key: i64,
        holds: impl Fn(&FileKeys, Option<u64>) -> bool,
    ) -> Result<Vec<String>, Error> {
        use std::sync::atomic::Ordering;
        let db = self.db();
        if !self.searchable.load(Ordering::Relaxed) {
            db.execute_batch(KEYS_LOOKUP).map_err(index_error)?;
            fit_cache(&db).map_err(index_error)?;
            self.searchable.store(true, Ordering::Relaxed);
        }
        // `IN` counts an item once however many of its files share the key.
        let mut stmt = db
            .prepare_cached("SELECT item FROM items WHERE id IN (SELECT id FROM keys WHERE kind = ?1 AND hash = ?2)")
            .map_err(index_error)?;
        let mut rows = stmt.query(params![kind as i64, key]).map_err(index_error)?;
        let mut found = Vec::new();
        while let Some(row) = rows.next().map_err(index_error)? {
            let item = parse_item(row.get_ref(0).and_then(|v| Ok(v.as_str()?)).map_err(index_error)?)?;
            if item.files.iter().any(|(p, size)| holds(&FileKeys::of(p), *size)) {
                found.push(item.rating_key.into());
            }
        }
        Ok(found)
    }
}
