//! The durable store: one SQLite database in the data folder, shared by
//! every PlexSync process of that folder (hooks, the worker, the daemon,
//! the CLI). One file per concern; each adds its methods to [`Store`].
//!
//! WAL with `synchronous=NORMAL`: a killed process loses nothing (WAL
//! survives process crashes); only a power cut can lose the last commits,
//! and the `updated_at` watermark re-captures such scenes from Stash. That
//! keeps each hook's enqueue to a few milliseconds.

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

pub use queue::{Claimed, QueueStats, Reason, RowInfo};
pub use records::{DeliveredItem, SceneState, SyncRecord};

/// Store operations fail as [`crate::error::Error`]s (class `bug`): the
/// callers' `?` needs no mapping.
pub(crate) type Result<T> = std::result::Result<T, crate::error::Error>;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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

impl Store {
    /// Opens (creating when needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self { conn, path: path.to_path_buf() })
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
}
