//! The durable store: one SQLite database in the data folder, shared by
//! every PlexSync process of that folder (hooks, the worker, the daemon,
//! the CLI). One file per concern; each adds its methods to [`Store`].
//!
//! WAL with `synchronous=NORMAL`: a killed process loses nothing (WAL
//! survives process crashes); only a power cut can lose the last commits,
//! and the `updated_at` watermark re-captures such scenes from Stash. That
//! keeps each hook's enqueue to a few milliseconds.

mod clock;
mod dead;
mod index;
pub mod kv;
mod queue;
mod records;
mod seen;
mod shows;
mod work;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::error::StoreFault;

pub use queue::{Claimed, QueueStats, Reason, RowInfo};
pub use records::{Closing, DeliveredItem, SceneState, SyncRecord};

/// Store operations fail as [`crate::error::Error`]s (class `bug`): the
/// callers' `?` needs no mapping.
pub(crate) type Result<T> = std::result::Result<T, crate::error::Error>;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(crate::units::millis).unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    scene_id     TEXT PRIMARY KEY,
    generation   INTEGER NOT NULL DEFAULT 1,
    reason       TEXT NOT NULL,
    enqueued_at  INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_due     INTEGER NOT NULL,
    lease_until  INTEGER,
    lease_owner  TEXT,
    state        TEXT NOT NULL DEFAULT 'pending',
    error_class  TEXT,
    last_error   TEXT
);
-- Claims take rows in (next_due, scene_id) order; with scene_id in the
-- index that order needs no sort (a whole library queued at once shares
-- one next_due, and sorting it at every claim made large runs quadratic).
DROP INDEX IF EXISTS queue_due;
CREATE INDEX IF NOT EXISTS queue_due_order ON queue(state, next_due, scene_id);
CREATE TABLE IF NOT EXISTS synced_items (
    scene_id          TEXT NOT NULL,
    plex_server       TEXT NOT NULL,
    rating_key        TEXT NOT NULL,
    section           TEXT NOT NULL,
    field_hashes      TEXT NOT NULL,
    stash_updated_at  TEXT NOT NULL,
    synced_at         INTEGER NOT NULL,
    PRIMARY KEY (scene_id, rating_key)
);
CREATE TABLE IF NOT EXISTS shows (
    kind       TEXT NOT NULL,
    object_id  TEXT NOT NULL,
    scene_id   TEXT NOT NULL,
    PRIMARY KEY (kind, object_id, scene_id)
);
CREATE INDEX IF NOT EXISTS shows_by_scene ON shows (scene_id);
CREATE TABLE IF NOT EXISTS plex_index (
    rating_key TEXT PRIMARY KEY,
    item       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    scene_id    TEXT PRIMARY KEY,
    updated_at  TEXT NOT NULL,
    seen_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS work (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    request  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Brings a queue written by an older version up to date: the one-item
/// `synced` table becomes `synced_items` (a scene may be several items).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let old: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'synced')",
        [],
        |r| r.get(0),
    )?;
    if old {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT OR IGNORE INTO synced_items
                SELECT scene_id, plex_server, rating_key, section, field_hashes, stash_updated_at, synced_at FROM synced;
             DROP TABLE synced;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// One open connection to the store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// How long a connection waits for another's lock before its statement
/// fails as [`StoreFault::Locked`]: a hook runs inside a person's request,
/// so it must not hang on a backup tool's lock; the worker waits such
/// failures out.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// The page cache's share of the file, and its bounds in KiB. A large
/// run looks up each scene's rows in B-trees of a million rows; their
/// inner pages are about 1 % of the file, and once SQLite's default 2 MiB
/// no longer holds them every lookup re-reads a path of pages from the
/// operating system. The cache fills only as pages are read, so a hook's
/// few lookups never grow it.
const CACHE_SHARE: u64 = 100;
const CACHE_KIB: std::ops::RangeInclusive<u64> = 2048..=16384;

/// The page cache for a file of `bytes`, in KiB.
fn cache_kib(bytes: u64) -> u64 {
    (bytes / 1024 / CACHE_SHARE).clamp(*CACHE_KIB.start(), *CACHE_KIB.end())
}

/// Sizes `conn`'s page cache for a database of `bytes` by [`CACHE_SHARE`]:
/// the queue's, and the library index's.
pub(crate) fn size_cache(conn: &Connection, bytes: u64) -> rusqlite::Result<()> {
    // A negative cache_size is in KiB.
    conn.pragma_update(None, "cache_size", -crate::units::to_i64(cache_kib(bytes)))
}

/// Prepared statements kept per connection: more than the statements one
/// delivery runs, so none is parsed again per scene.
const STATEMENTS: usize = 64;

/// What a damaged queue file became: kept under `moved_to`, never deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovered {
    /// When the fresh queue was started (ms).
    pub at: i64,
    pub moved_to: PathBuf,
    pub error: String,
}

impl Store {
    /// Opens (creating when needed) the database at `path`. A file that is
    /// not a database or whose schema pages are damaged is moved aside and
    /// a fresh queue started (see [`Store::recovered`]).
    pub fn open(path: &Path) -> Result<Self> {
        match Self::open_as_is(path) {
            Err(e) if e.store_fault == Some(StoreFault::Corrupt) => Self::start_afresh(path, &e),
            other => other,
        }
    }

    /// [`Store::open`], then a check of every page (`PRAGMA quick_check`):
    /// for the processes that run for long (workers, the daemon), which
    /// open the queue rarely; a hook's open must stay a few milliseconds.
    pub fn open_checked(path: &Path) -> Result<Self> {
        let store = Self::open(path)?;
        match store.damage() {
            Ok(None) => Ok(store),
            Ok(Some(damage)) => {
                drop(store);
                let e = crate::error::Error {
                    store_fault: Some(StoreFault::Corrupt),
                    ..crate::error::Error::new(crate::error::ErrorClass::Bug, format!("queue database: {damage}"))
                };
                Self::start_afresh(path, &e)
            }
            Err(e) if e.store_fault == Some(StoreFault::Corrupt) => {
                drop(store);
                Self::start_afresh(path, &e)
            }
            Err(e) => Err(e),
        }
    }

    fn open_as_is(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_WAIT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let store = Self { conn, path: path.to_path_buf() };
        store.fit_cache()?;
        Ok(store)
    }

    /// Whether a write could begin now, waiting at most `wait` for another
    /// connection's write lock (readers never wait in WAL mode, so a held
    /// lock shows only here).
    pub(crate) fn writable(&self, wait: Duration) -> Result<bool> {
        self.conn.busy_timeout(wait)?;
        let tried = self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK");
        self.conn.busy_timeout(BUSY_WAIT)?;
        match tried {
            Ok(()) => Ok(true),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sizes the page cache to the file (see [`CACHE_SHARE`]): at open,
    /// and again now and then by a worker whose run grows the file.
    pub(crate) fn fit_cache(&self) -> Result<()> {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        Ok(size_cache(&self.conn, size)?)
    }

    /// Runs `f` in one transaction, or in the one already open: a
    /// delivery's closing writes are one commit, not one each.
    pub(crate) fn atomically<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        if !self.conn.is_autocommit() {
            return f(self);
        }
        let tx = self.conn.unchecked_transaction()?;
        let out = f(self)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs one statement through the connection's statement cache: a
    /// delivery runs the same few statements for every scene, and parsing
    /// them each time was a measurable share of a large run's CPU.
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute(params)
    }

    /// [`Store::exec`] for a statement that returns one row.
    fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.prepare_cached(sql)?.query_row(params, row)
    }

    /// What `quick_check` found wrong, if anything.
    fn damage(&self) -> Result<Option<String>> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check")?;
        let found: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok((found != ["ok"]).then(|| found.into_iter().take(3).collect::<Vec<_>>().join("; ")))
    }

    /// Moves a damaged queue file (and its WAL) aside, never deleting it,
    /// and opens a fresh queue that remembers why ([`kv::QUEUE_RECOVERED`])
    /// and asks for a reconcile ([`kv::RECOVERY_RECONCILE`]): the lost rows
    /// and records are found again by comparing Stash with Plex.
    fn start_afresh(path: &Path, error: &crate::error::Error) -> Result<Self> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let moved_to = path.with_file_name(format!("{name}.damaged-{stamp}"));
        std::fs::rename(path, &moved_to).map_err(|e| {
            crate::error::Error::new(
                crate::error::ErrorClass::Bug,
                format!(
                    "{error}; it could not be moved aside ({e}): stop Stash and PlexSync, move {} out of the way, and start again",
                    path.display()
                ),
            )
        })?;
        for side in ["-wal", "-shm"] {
            let from = path.with_file_name(format!("{name}{side}"));
            if from.exists() {
                let _ = std::fs::rename(&from, moved_to.with_file_name(format!("{name}.damaged-{stamp}{side}")));
            }
        }
        tracing::error!(
            "{error}: moved it to {} (kept, not deleted) and started a fresh queue; a reconcile compares every scene with Plex so no edit is lost",
            moved_to.display()
        );
        let store = Self::open_as_is(path)?;
        store.set_kv(kv::RECOVERY_RECONCILE, "1")?;
        // As text: a path that is not UTF-8 (a data folder from a Latin-1
        // $HOME) does not serialize as JSON.
        let moved_to = PathBuf::from(moved_to.to_string_lossy().into_owned());
        let note = Recovered { at: now_ms(), moved_to, error: error.message.clone() };
        match serde_json::to_string(&note) {
            Ok(note) => store.set_kv(kv::QUEUE_RECOVERED, &note)?,
            Err(e) => tracing::warn!("the replacement of the queue file is not shown by status: {e}"),
        }
        Ok(store)
    }

    /// Copies the write-ahead log into the database and empties it: the
    /// log only restarts after a checkpoint, which only follows a commit,
    /// so on a full disk a log that cannot grow would never shrink either.
    pub(crate) fn truncate_log(&self) -> Result<()> {
        self.one("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The last time a damaged queue file was replaced, if that was within
    /// the past week (what `status`, the Health check and `/healthz` say).
    pub fn recovered(&self) -> Result<Option<Recovered>> {
        const SHOWN_FOR: i64 = 7 * 86_400_000;
        let note = self.get_kv(kv::QUEUE_RECOVERED)?.and_then(|v| serde_json::from_str::<Recovered>(&v).ok());
        Ok(note.filter(|n| now_ms() - n.at < SHOWN_FOR))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store in a folder of its own, removed with the folder.
    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("q.sqlite")).unwrap();
        (dir, s)
    }

    #[test]
    fn the_page_cache_follows_the_file_within_its_bounds() {
        assert_eq!(cache_kib(0), 2048, "a new queue keeps SQLite's default");
        assert_eq!(cache_kib(140 << 20), 2048, "100 000 scenes' queue");
        assert_eq!(cache_kib(1400 << 20), 14336, "a million scenes' queue: its inner pages");
        assert_eq!(cache_kib(40 << 30), 16384, "never more than 16 MiB");
        let (_dir, q) = store();
        let kib: i64 = q.conn.pragma_query_value(None, "cache_size", |r| r.get(0)).unwrap();
        assert_eq!(kib, -2048, "set at open");
    }

    #[test]
    fn a_queue_with_the_one_item_record_is_migrated_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE synced (scene_id TEXT PRIMARY KEY, plex_server TEXT NOT NULL, rating_key TEXT NOT NULL,
                    section TEXT NOT NULL, field_hashes TEXT NOT NULL, stash_updated_at TEXT NOT NULL, synced_at INTEGER NOT NULL);
                 INSERT INTO synced VALUES ('7', 'http://plex/', '42', '1', '{\"title\":\"abc\"}', '2026-01-01T00:00:00Z', 5);",
            )
            .unwrap();
        }
        let q = Store::open(&path).unwrap();
        let records = q.records("7").unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].rating_key, "42");
        assert_eq!(records[0].field_hashes["title"], "abc");
        q.save_record("7", &SyncRecord { rating_key: "43".into(), ..records[0].clone() }).unwrap();
        assert_eq!(q.records("7").unwrap().len(), 2, "a scene may be several items");
        q.keep_records("7", &["43".to_string()]).unwrap();
        assert_eq!(q.records("7").unwrap().iter().map(|r| r.rating_key.as_str()).collect::<Vec<_>>(), ["43"]);
        drop(q);
        Store::open(&path).unwrap();
    }

    /// A file whose header is fine but whose pages are damaged (a crash of
    /// the disk): a hook's open does not notice, a worker's check does.
    #[test]
    fn damaged_pages_are_found_by_the_workers_check_and_the_file_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        {
            let q = Store::open(&path).unwrap();
            let ids: Vec<_> = (0..3000).filter_map(|i| crate::ids::SceneId::parse(&format!("1000{i:06}"))).collect();
            q.enqueue_many(&ids, Reason::Manual).unwrap();
            q.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        assert!(bytes.len() > 8 * page);
        let end = bytes.len() - page;
        bytes[3 * page..end].iter_mut().for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7));
        std::fs::write(&path, &bytes).unwrap();

        let q = Store::open_checked(&path).unwrap();
        let note = q.recovered().unwrap().expect("the replacement is recorded");
        assert!(note.moved_to.starts_with(dir.path()));
        assert_eq!(std::fs::read(&note.moved_to).unwrap(), bytes, "kept as it was");
        assert_eq!(q.pending_count().unwrap(), 0, "a fresh queue");
        assert_eq!(q.get_kv(kv::RECOVERY_RECONCILE).unwrap().as_deref(), Some("1"));
        drop(q);
        let again = Store::open_checked(&path).unwrap();
        assert_eq!(again.recovered().unwrap().unwrap().moved_to, note.moved_to, "a sound file is left alone");
    }
}
