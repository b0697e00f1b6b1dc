//! Finding a scene's Plex item: an in-memory index of the Plex library
//! (read once, paged) and these signals, strongest first:
//! recorded ratingKey (verified) → Plex URL on the scene → mapped path →
//! file name + size → unique file name. Every result says why; an
//! ambiguous result is never written.

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{params, OptionalExtension};

use crate::clients::plex::{PlexClient, PlexItem, PlexSection};
use crate::clients::stash::Scene;
use crate::config::{PathMap, Settings};
use crate::error::{Error, ErrorClass};

/// A Plex item as the index keeps it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct IndexedItem {
    pub rating_key: Box<str>,
    pub section: Box<str>,
    /// (raw path, size)
    pub files: Box<[(Box<str>, Option<u64>)]>,
    /// Part durations in ms, for tie-breaks.
    pub durations: Box<[u64]>,
}

impl IndexedItem {
    /// Whether one of the item's files is the Stash file `file` (after mapping).
    fn holds(&self, file: &crate::clients::stash::SceneFile, maps: &[PathMap]) -> bool {
        self.files.iter().any(|(p, size)| is_file(file, p, *size, maps))
    }
}

/// How sure a match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Confidence {
    Low,
    Medium,
    High,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Match {
    /// The scene's item; `also` lists more items (ratingKey, section) when
    /// the scene's files are separate items in Plex: each gets the metadata.
    Found {
        rating_key: String,
        section: String,
        confidence: Confidence,
        reason: String,
        also: Vec<(String, String)>,
    },
    Ambiguous {
        candidates: Vec<String>,
        reason: String,
    },
    NotFound {
        tried: Vec<String>,
    },
}

impl Match {
    /// The matched items (ratingKey, section), the main one first; none
    /// unless found.
    pub(crate) fn items(&self) -> Vec<(String, String)> {
        match self {
            Match::Found { rating_key, section, also, .. } => {
                std::iter::once((rating_key.clone(), section.clone())).chain(also.iter().cloned()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Normalizes a path for comparison: `\` → `/`, Unicode NFC, repeated
/// separators collapsed, trailing spaces and dots of each component
/// dropped (Windows ignores them), optionally case-folded.
pub(crate) fn normalize(path: &str, fold_case: bool) -> String {
    let slashed = path.replace('\\', "/");
    let unified = super::sanitize::nfc(&slashed);
    let mut out = String::with_capacity(unified.len());
    for (i, part) in unified.split('/').enumerate() {
        if part.is_empty() && i > 0 {
            continue;
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(part.trim_end_matches([' ', '.']));
    }
    if fold_case {
        out.to_lowercase()
    } else {
        out
    }
}

/// Decodes `%XX` sequences when the result is valid UTF-8 and differs
/// (paths that went through a URL somewhere).
pub(crate) fn percent_decoded(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    (decoded != path).then(|| decoded.into_owned())
}

/// Applies the longest matching `stash => plex` prefix rule, comparing
/// normalized forms and only at component boundaries.
pub(crate) fn map_path(stash_path: &str, maps: &[PathMap], fold_case: bool) -> String {
    let path = normalize(stash_path, fold_case);
    let mut best: Option<(usize, String)> = None;
    for m in maps {
        let from = normalize(&m.stash, fold_case);
        let from = from.trim_end_matches('/');
        let rest = match path.strip_prefix(from) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => continue,
        };
        if best.as_ref().is_none_or(|(len, _)| from.len() > *len) {
            let to = normalize(&m.plex, fold_case);
            best = Some((from.len(), format!("{}{rest}", to.trim_end_matches('/'))));
        }
    }
    best.map(|(_, p)| p).unwrap_or(path)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The path without its extension (the part after the last dot of the name).
fn stem(path: &str) -> &str {
    match path.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') => stem,
        _ => path,
    }
}

/// The ratingKey in a Plex URL the agent left on a scene
/// (`plex/library/metadata/12345`, possibly with more after it).
pub(crate) fn rating_key_in_url(url: &str) -> Option<String> {
    let rest = url.split("/library/metadata/").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then_some(digits)
}

fn key_hash(key: impl std::hash::Hash) -> i64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    // The bits as SQLite's signed integer: a key, not a quantity.
    hash.cast_signed()
}

/// The lookups an item's files are found by, as stored in `keys.kind`.
#[derive(Clone, Copy)]
enum Key {
    Path = 0,
    Name = 1,
    NameSize = 2,
    StemSize = 3,
}

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

/// The lookup keys of one file: its normalized path, its file name (lower
/// case) and its stem (lower case).
struct FileKeys {
    path: String,
    name: String,
    stem: String,
}

impl FileKeys {
    fn of(path: &str) -> Self {
        let path = normalize(path, false);
        let (name, stem) = (file_name(&path).to_lowercase(), stem(&path).to_lowercase());
        Self { path, name, stem }
    }
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

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
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

    /// Rating keys of the items under `key` of `kind` whose own files
    /// satisfy `holds` (collisions and moved items drop out here).
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

    /// Whether the item `rk` holds one of the scene's files.
    fn holds_any(&self, rk: &str, scene: &Scene, maps: &[PathMap]) -> Result<bool, Error> {
        Ok(self.item(rk)?.is_some_and(|item| scene.files.iter().any(|f| item.holds(f, maps))))
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

    /// Why the Plex URL on the scene (the newest one) is not taken, when it
    /// is not: the item it names holds none of the scene's files.
    pub(crate) fn refused_url(&self, scene: &Scene, maps: &[PathMap]) -> Result<Option<String>, Error> {
        let Some(rk) = scene.urls.iter().rev().find_map(|u| rating_key_in_url(u)) else { return Ok(None) };
        if self.holds_any(&rk, scene, maps)? {
            return Ok(None);
        }
        Ok(Some(match self.item(&rk)? {
            Some(_) => format!("Plex URL on the scene names {rk}, which holds none of the scene's files (a stale URL: another video): ignored"),
            None => format!("Plex URL on the scene names {rk}, which is not in the library: ignored"),
        }))
    }

    /// `items` (the first is the main one) as a match.
    fn found(&self, items: &[String], confidence: Confidence, reason: String) -> Result<Match, Error> {
        let mut with_section = Vec::with_capacity(items.len());
        for rk in items {
            with_section.push((rk.clone(), self.item(rk)?.map(|i| i.section.to_string()).unwrap_or_default()));
        }
        let mut with_section = with_section.into_iter();
        let Some((rating_key, section)) = with_section.next() else {
            return Err(Error::new(ErrorClass::Bug, format!("a match of no item ({reason})")));
        };
        Ok(Match::Found { rating_key, section, confidence, reason, also: with_section.collect() })
    }

    /// Finds the scene's items. `recorded` are the ratingKeys we wrote to last time.
    pub fn find(&self, scene: &Scene, recorded: &[String], maps: &[PathMap]) -> Result<Match, Error> {
        Ok(self.explain(scene, recorded, maps)?.0)
    }

    /// Finds the scene's items and says how: one line per signal tried.
    /// Each file is resolved on its own; a scene whose files are different
    /// items matches all of them, and one file that could be several items
    /// makes the whole scene ambiguous.
    pub(crate) fn explain(
        &self,
        scene: &Scene,
        recorded: &[String],
        maps: &[PathMap],
    ) -> Result<(Match, Vec<String>), Error> {
        let mut trace = Vec::new();
        if !recorded.is_empty() {
            let keys = recorded.join(", ");
            // Each recorded item read once, kept when it holds a file of the scene.
            let mut items = Vec::new();
            for rk in recorded {
                items.extend(self.item(rk)?.filter(|i| scene.files.iter().any(|f| i.holds(f, maps))));
            }
            let all_held = scene.files.iter().all(|f| items.iter().any(|i| i.holds(f, maps)));
            let holding: Vec<String> = items.iter().map(|i| i.rating_key.to_string()).collect();
            if all_held && !holding.is_empty() {
                trace.push(format!("recorded ratingKey {keys}: still holds the scene's files — match"));
                let reason = format!("recorded ratingKey {}, same files", holding.join(", "));
                return Ok(decided(self.found(&holding, Confidence::High, reason)?, trace));
            }
            trace.push(format!("recorded ratingKey {keys}: no longer holds every file of the scene"));
        }
        // The old agent's URL names no server and goes stale after a
        // rebuild, a migration or on a second server: a candidate only,
        // taken when the item holds one of the scene's files.
        if let Some(rk) = scene.urls.iter().rev().find_map(|u| rating_key_in_url(u)) {
            match self.refused_url(scene, maps)? {
                None => {
                    trace.push(format!("Plex URL on the scene names {rk}, which holds the scene's file — match"));
                    let reason = format!("Plex URL on the scene names {rk}, same file");
                    return Ok(decided(self.found(std::slice::from_ref(&rk), Confidence::High, reason)?, trace));
                }
                Some(why) => trace.push(why),
            }
        }
        let mut per_file = Vec::with_capacity(scene.files.len());
        for f in &scene.files {
            per_file.push((f, self.file_candidates(f, maps, &mut trace)?));
        }
        // Only the strongest signal counts: a weaker one never outvotes it.
        let best = per_file.iter().flat_map(|(_, c)| c).map(|c| c.1).max();
        let mut chosen: Vec<(String, Confidence, String)> = Vec::new();
        let mut ambiguous = None;
        for (file, mut candidates) in per_file {
            candidates.retain(|c| Some(c.1) == best);
            candidates.sort_by(|a, b| a.0.cmp(&b.0));
            candidates.dedup_by(|a, b| a.0 == b.0);
            match candidates.as_slice() {
                [] => {}
                [one] => chosen.push(one.clone()),
                many => match self.break_tie(file, many)? {
                    Some(one) => chosen.push(one),
                    None => ambiguous = Some(many.iter().map(|(rk, _, _)| rk.clone()).collect::<Vec<_>>()),
                },
            }
        }
        chosen.sort_by(|a, b| a.0.cmp(&b.0));
        chosen.dedup_by(|a, b| a.0 == b.0);
        let decision = match (ambiguous, chosen.as_slice()) {
            (Some(candidates), _) => Match::Ambiguous {
                reason: format!("{} Plex items could hold one of the scene's files", candidates.len()),
                candidates,
            },
            (None, []) => Match::NotFound { tried: trace.clone() },
            (None, [(rk, confidence, reason)]) => self.found(std::slice::from_ref(rk), *confidence, reason.clone())?,
            (None, many) => {
                let keys: Vec<String> = many.iter().map(|c| c.0.clone()).collect();
                let confidence = many.iter().map(|c| c.1).min().expect("several");
                let reasons: Vec<&str> = many.iter().map(|c| c.2.as_str()).collect();
                self.found(&keys, confidence, format!("one item per file: {}", reasons.join("; ")))?
            }
        };
        Ok(decided(decision, trace))
    }

    /// The candidates of one scene file, by the first signal that has any.
    fn file_candidates(
        &self,
        file: &crate::clients::stash::SceneFile,
        maps: &[PathMap],
        trace: &mut Vec<String>,
    ) -> Result<Vec<(String, Confidence, String)>, Error> {
        let mapped = map_path(&file.path, maps, false);
        let mut keys = vec![mapped.clone()];
        keys.extend(percent_decoded(&mapped).map(|p| normalize(&p, false)));
        trace.push(format!("file {} → {}", file.path, keys.join(" | ")));
        let with = |rks: &[String], c: Confidence, why: String| -> Vec<(String, Confidence, String)> {
            rks.iter().map(|rk| (rk.clone(), c, why.clone())).collect()
        };
        let mut exact = Vec::new();
        for k in &keys {
            exact.extend(self.lookup(Key::Path, key_hash(k), |f, _| &f.path == k)?);
        }
        if !exact.is_empty() {
            trace.push(format!("  exact path: items {}", exact.join(", ")));
            return Ok(with(&exact, Confidence::High, format!("path {mapped}")));
        }
        trace.push("  exact path: none".into());
        let mut folded = Vec::new();
        for k in keys.iter().map(|k| k.to_lowercase()) {
            // Paths equal but for case have equal file names in lower case:
            // the name keys hold the candidates.
            folded.extend(self.lookup(Key::Name, key_hash(file_name(&k)), |f, _| f.path.to_lowercase() == k)?);
        }
        if !folded.is_empty() {
            trace.push(format!("  path ignoring case: items {}", folded.join(", ")));
            return Ok(with(&folded, Confidence::Medium, format!("path {mapped} (ignoring case)")));
        }
        trace.push("  path ignoring case: none".into());
        let decoded = keys.last().expect("at least the mapped path");
        let name = file_name(decoded).to_lowercase();
        let size = Some(file.size);
        let rks = self.lookup(Key::NameSize, key_hash((&name, &file.size)), |f, s| f.name == name && s == size)?;
        if !rks.is_empty() {
            trace.push(format!("  file name {name} + size {}: items {}", file.size, rks.join(", ")));
            return Ok(with(&rks, Confidence::Medium, format!("file name {name} and size {}", file.size)));
        }
        trace.push(format!("  file name {name} + size {}: none", file.size));
        let stem_of = stem(decoded).to_lowercase();
        let rks =
            self.lookup(Key::StemSize, key_hash((&stem_of, &file.size)), |f, s| f.stem == stem_of && s == size)?;
        if !rks.is_empty() {
            trace.push(format!("  same name, other extension, same size: items {}", rks.join(", ")));
            return Ok(with(&rks, Confidence::Medium, format!("{} with another extension, same size", stem(decoded))));
        }
        trace.push("  same name with another extension: none".into());
        // A name alone only where Plex does not say the size: a file of the
        // same name and another size is another video (a re-encode, or the
        // same name in a folder Plex has not scanned yet).
        let sized = self.lookup(Key::Name, key_hash(&name), |f, s| f.name == name && s.is_some())?;
        if !sized.is_empty() {
            trace.push(format!("  file name {name} alone: items {} hold it with another size", sized.join(", ")));
            return Ok(Vec::new());
        }
        Ok(match self.lookup(Key::Name, key_hash(&name), |f, _| f.name == name)?.as_slice() {
            [rk] => {
                trace.push(format!("  file name {name} alone: only item {rk}"));
                vec![(rk.clone(), Confidence::Low, format!("unique file name {name}"))]
            }
            [] => {
                trace.push(format!("  file name {name} alone: none"));
                Vec::new()
            }
            many => {
                trace.push(format!("  file name {name} alone: {} items, not unique", many.len()));
                Vec::new()
            }
        })
    }

    /// Several candidates for one file: its duration may single one out
    /// (within 2 s); otherwise the file is ambiguous.
    fn break_tie(
        &self,
        file: &crate::clients::stash::SceneFile,
        many: &[(String, Confidence, String)],
    ) -> Result<Option<(String, Confidence, String)>, Error> {
        let mut close = Vec::new();
        for c in many {
            let durations = self.item(&c.0)?.map(|i| i.durations).unwrap_or_default();
            if durations.iter().any(|d| (file.duration - *d as f64 / 1000.0).abs() <= 2.0) {
                close.push(c);
            }
        }
        Ok(match close.as_slice() {
            [(rk, _, reason)] => Some((rk.clone(), Confidence::Low, format!("{reason}; duration breaks a tie"))),
            _ => None,
        })
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
}

/// Whether the Stash file `file` is the Plex file `path` (with `size`):
/// the same path after mapping (ignoring case), or the same file name and size.
pub(crate) fn is_file(
    file: &crate::clients::stash::SceneFile,
    path: &str,
    size: Option<u64>,
    maps: &[PathMap],
) -> bool {
    let mapped = map_path(&file.path, maps, true);
    let plex = normalize(path, true);
    plex == mapped || (file_name(&plex) == file_name(&mapped) && size == Some(file.size))
}

/// The file name of a Plex or Stash path (either separator).
pub(crate) fn file_name_of(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// The decision, with its line added to the trace.
fn decided(decision: Match, mut trace: Vec<String>) -> (Match, Vec<String>) {
    trace.push(decision_line(&decision));
    (decision, trace)
}

/// The trace's last line: what was decided.
pub(crate) fn decision_line(decision: &Match) -> String {
    match decision {
        Match::Found { rating_key, confidence, reason, also, .. } if !also.is_empty() => {
            let more: Vec<&str> = also.iter().map(|(rk, _)| rk.as_str()).collect();
            format!("decision: items {rating_key}, {} ({confidence:?} confidence: {reason})", more.join(", "))
        }
        Match::Found { rating_key, confidence, reason, .. } => {
            format!("decision: item {rating_key} ({confidence:?} confidence: {reason})")
        }
        Match::Ambiguous { candidates, reason } => {
            format!("decision: ambiguous, nothing written: {reason} ({})", candidates.join(", "))
        }
        Match::NotFound { .. } => "decision: not in Plex".to_string(),
    }
}

/// A proposed `stash => plex` prefix rule and how many files it explains.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Suggestion {
    pub stash: String,
    pub plex: String,
    pub files: usize,
}

/// Proposes path mappings: every Stash file whose name and size exist once
/// in Plex is paired with that Plex file; the components both paths share
/// at the end are dropped, and what is left of each is a prefix rule. Rules
/// are ranked by how many files they explain.
pub fn suggest_mappings(stash_files: &[(String, u64)], index: &LibraryIndex) -> Result<Vec<Suggestion>, Error> {
    let mut tally = MappingTally::default();
    for (path, size) in stash_files {
        tally.add(index, path, *size)?;
    }
    Ok(tally.rules())
}

/// The prefix rules [`suggest_mappings`] proposes, counted as Stash's files
/// come, so a library is never held whole: one entry per distinct rule.
#[derive(Debug, Default)]
pub struct MappingTally {
    counts: HashMap<(String, String), usize>,
    /// Stash files seen.
    pub files: usize,
}

impl MappingTally {
    /// Counts the rule the Stash file `path` of `size` bytes explains, if any.
    pub fn add(&mut self, index: &LibraryIndex, path: &str, size: u64) -> Result<(), Error> {
        self.files += 1;
        let stash = normalize(path, false);
        let name = file_name(&stash).to_lowercase();
        let same = |f: &FileKeys, s: Option<u64>| f.name == name && s == Some(size);
        let Ok::<[String; 1], _>([rk]) = index.lookup(Key::NameSize, key_hash((&name, &size)), same)?.try_into() else {
            return Ok(());
        };
        let Some(item) = index.item(&rk)? else { return Ok(()) };
        let Some((plex, _)) = item.files.iter().find(|(p, s)| same(&FileKeys::of(p), *s)) else { return Ok(()) };
        let plex = normalize(plex, false);
        let (a, b): (Vec<&str>, Vec<&str>) = (stash.split('/').collect(), plex.split('/').collect());
        let common = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x.eq_ignore_ascii_case(y)).count();
        let prefix = |parts: &[&str]| {
            let p = parts.join("/");
            if p.is_empty() {
                "/".to_string()
            } else {
                p
            }
        };
        *self.counts.entry((prefix(&a[..a.len() - common]), prefix(&b[..b.len() - common]))).or_default() += 1;
        Ok(())
    }

    /// The rules that change a path, the one explaining most files first.
    pub fn rules(self) -> Vec<Suggestion> {
        let mut rules: Vec<Suggestion> = self
            .counts
            .into_iter()
            .filter(|((s, p), _)| s != p)
            .map(|((stash, plex), files)| Suggestion { stash, plex, files })
            .collect();
        rules.sort_by(|x, y| y.files.cmp(&x.files).then(x.stash.cmp(&y.stash)));
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::plex::{PlexMedia, PlexPart};
    use crate::clients::stash::SceneFile;

    fn item(rk: &str, path: &str, size: u64) -> PlexItem {
        PlexItem {
            rating_key: rk.into(),
            media: vec![PlexMedia {
                parts: vec![PlexPart { file: path.into(), size: Some(size), ..Default::default() }],
            }],
            ..Default::default()
        }
    }

    fn scene(path: &str, size: u64) -> Scene {
        Scene {
            id: "1".into(),
            files: vec![SceneFile { path: path.into(), size, ..Default::default() }],
            ..Default::default()
        }
    }

    fn maps() -> Vec<PathMap> {
        vec![
            PathMap { stash: "/data".into(), plex: "/media".into() },
            PathMap { stash: "/data/special".into(), plex: "/other".into() },
        ]
    }

    #[test]
    fn normalization_and_longest_prefix_mapping() {
        assert_eq!(normalize("D:\\\\Videos\\a.mp4", false), "D:/Videos/a.mp4");
        assert_eq!(normalize("/x//Cafe\u{301} ./a.mp4", false), "/x/Café/a.mp4");
        assert_eq!(map_path("/data/special/a.mp4", &maps(), false), "/other/a.mp4");
        assert_eq!(map_path("/data/a.mp4", &maps(), false), "/media/a.mp4");
        assert_eq!(map_path("/database/a.mp4", &maps(), false), "/database/a.mp4", "component boundary");
        assert_eq!(rating_key_in_url("plex/library/metadata/123"), Some("123".into()));
        assert_eq!(rating_key_in_url("https://x/library/metadata/77/refresh"), Some("77".into()));
        assert_eq!(rating_key_in_url("https://example.com/scene/1"), None);
    }

    #[test]
    fn stored_index_is_reused_only_for_the_same_server_and_while_young() {
        let mut index = LibraryIndex::empty().unwrap();
        index.insert("1", &item("10", "/media/a/x.mp4", 5)).unwrap();
        index.built_at = Some(Instant::now());
        let meta = index.meta("http://plex/|");
        let rows: Vec<String> = index.rows(None).map(|r| r.unwrap().1).collect();
        let hour = std::time::Duration::from_secs(3600);
        let mut back = LibraryIndex::from_meta("http://plex/|", &meta, hour).unwrap();
        assert!(rows.iter().all(|r| back.insert_row(r)));
        assert!(!back.insert_row("{not json"), "an unreadable row is refused");
        assert!(matches!(back.find(&scene("/data/a/x.mp4", 5), &[], &maps()).unwrap(), Match::Found { .. }));
        assert!(LibraryIndex::from_meta("http://other/|", &meta, hour).is_none(), "other server");
        let old = meta.replace("\"built_at_ms\":", "\"built_at_ms\":0,\"x\":");
        assert!(LibraryIndex::from_meta("http://plex/|", &old, hour).is_none(), "too old");
    }

    #[test]
    fn rows_come_back_in_runs_and_a_full_read_reports_what_moved() {
        let items: Vec<PlexItem> =
            (0..2_500).map(|i| item(&i.to_string(), &format!("/media/{i}/v{i}.mp4"), i)).collect();
        let mut old = LibraryIndex::empty().unwrap();
        assert_eq!(old.insert_all("1", &items).unwrap().len(), 2_500, "all new");
        assert!(old.insert_all("1", &items).unwrap().is_empty(), "nothing changed");
        let rows: Vec<String> = old.rows(None).map(|r| r.unwrap().0).collect();
        assert_eq!(rows.len(), 2_500, "three runs of rows, none lost or repeated");
        assert_eq!(rows.iter().collect::<std::collections::BTreeSet<_>>().len(), 2_500);
        let mut fresh = LibraryIndex::empty().unwrap();
        let mut moved = items.clone();
        moved[7] = item("7", "/media/elsewhere/v7.mp4", 7);
        moved.truncate(2_400);
        fresh.insert_all("1", &moved).unwrap();
        let mut gone = fresh.moved_since(&old).unwrap();
        gone.sort();
        assert_eq!(gone.len(), 101, "one moved, a hundred gone: {:?}", &gone[..3]);
        assert!(gone.contains(&"7".to_string()) && gone.contains(&"2499".to_string()));
        fresh.forget("8").unwrap();
        assert_eq!((fresh.count_in("1"), fresh.count_in("2"), fresh.len()), (2_399, 0, 2_400));
        assert!(matches!(fresh.find(&scene("/data/8/v8.mp4", 8), &[], &maps()).unwrap(), Match::NotFound { .. }));
        // Kept as items come and go: what a count of the rows says.
        fresh.insert("2", &item("9", "/media/9/v9.mp4", 9)).unwrap();
        fresh.forget("8").unwrap();
        fresh.insert("1", &item("8", "/media/8/v8.mp4", 8)).unwrap();
        fresh.insert("1", &item("8", "/media/8/v8.mp4", 8)).unwrap();
        fresh.forget("no such key").unwrap();
        let counted = |section: &str| -> usize {
            let sql = "SELECT count(*) FROM items WHERE section = ?1 AND held > 0";
            fresh.db().query_row(sql, [section], |r| r.get::<_, i64>(0)).map(crate::units::to_usize).unwrap()
        };
        assert_eq!((fresh.count_in("1"), fresh.count_in("2")), (counted("1"), counted("2")));
        assert_eq!((fresh.count_in("1"), fresh.count_in("2")), (2_399, 1));
    }

    #[test]
    fn the_first_lookup_sizes_the_page_cache_to_the_file() {
        let index = LibraryIndex::empty().unwrap();
        let kib = || -> i64 { index.db().pragma_query_value(None, "cache_size", |r| r.get(0)).unwrap() };
        assert_eq!(kib(), -2000, "SQLite's default until the index is searched");
        let _ = index.find(&scene("/data/a/x.mp4", 5), &[], &maps()).unwrap();
        assert_eq!(kib(), -2048, "a small index gets the rule's floor");
    }

    #[test]
    fn an_item_whose_file_moved_no_longer_matches_its_old_path() {
        let mut index = LibraryIndex::empty().unwrap();
        index.insert("1", &item("10", "/media/a/x.mp4", 5)).unwrap();
        index.insert("1", &item("10", "/media/b/moved.mp4", 6)).unwrap();
        assert_eq!(index.len(), 1);
        assert!(matches!(index.find(&scene("/data/a/x.mp4", 5), &[], &maps()).unwrap(), Match::NotFound { .. }));
        assert!(matches!(index.find(&scene("/data/b/moved.mp4", 6), &[], &maps()).unwrap(), Match::Found { .. }));
    }

    #[test]
    fn signals_in_order_and_ambiguity() {
        let mut index = LibraryIndex::empty().unwrap();
        index.insert("1", &item("10", "/media/a/x.mp4", 5)).unwrap();
        index.insert("1", &item("11", "/media/b/dup.mp4", 7)).unwrap();
        index.insert("1", &item("12", "/media/c/dup.mp4", 7)).unwrap();
        index.insert("1", &item("13", "/media/d/Y.MP4", 9)).unwrap();
        let m = maps();
        assert!(
            matches!(index.find(&scene("/data/a/x.mp4", 5), &[], &m).unwrap(), Match::Found { ref rating_key, confidence: Confidence::High, .. } if rating_key == "10")
        );
        assert!(
            matches!(index.find(&scene("/data/b/dup.mp4", 7), &[], &m).unwrap(), Match::Found { ref rating_key, .. } if rating_key == "11")
        );
        assert!(matches!(index.find(&scene("/elsewhere/dup.mp4", 7), &[], &m).unwrap(), Match::Ambiguous { .. }));
        assert!(matches!(
            index.find(&scene("/data/d/y.mp4", 9), &[], &m).unwrap(),
            Match::Found { confidence: Confidence::Medium, .. }
        ));
        assert!(matches!(index.find(&scene("/data/zzz.mp4", 1), &[], &m).unwrap(), Match::NotFound { .. }));
        // A recorded key that still holds the file wins; a stale one is reported and skipped.
        assert!(
            matches!(index.find(&scene("/data/a/x.mp4", 5), &["10".to_string()], &m).unwrap(), Match::Found { ref reason, .. } if reason.contains("recorded"))
        );
        // A Plex URL naming another video (a rebuild, another server) is
        // refused, and the path decides.
        let mut s = scene("/data/a/x.mp4", 5);
        s.urls = vec!["plex/library/metadata/13".into()];
        let (found, trace) = index.explain(&s, &["12".to_string()], &m).unwrap();
        assert!(matches!(found, Match::Found { ref rating_key, .. } if rating_key == "10"), "{found:?}");
        assert!(trace.iter().any(|l| l.contains("names 13") && l.ends_with("ignored")), "{trace:?}");
        s.urls = vec!["plex/library/metadata/999".into()];
        assert!(index.refused_url(&s, &m).unwrap().is_some_and(|why| why.contains("not in the library")));
        // A URL naming the item that holds the file settles a duplicate.
        let mut s = scene("/elsewhere/dup.mp4", 7);
        s.urls = vec!["plex/library/metadata/12".into()];
        assert!(
            matches!(index.find(&s, &[], &m).unwrap(), Match::Found { ref rating_key, ref reason, .. } if rating_key == "12" && reason.contains("URL"))
        );
    }
}
