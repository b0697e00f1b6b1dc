//! The durable queue and sync record, in SQLite.
//!
//! One row per dirty scene: a second event for a waiting scene bumps its
//! generation instead of adding a row. Workers claim rows with a lease that
//! expires, so a killed worker's rows come back by themselves. A row is
//! completed only if its generation did not change while it was delivered.
//!
//! WAL with `synchronous=NORMAL`: a killed process loses nothing (WAL
//! survives process crashes); only a power cut can lose the last commits,
//! and the `updated_at` watermark re-captures such scenes from Stash. That
//! keeps each hook's enqueue to a few milliseconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::ErrorClass;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The rows a claim takes: due, not leased, oldest first.
const CLAIM_SELECT: &str = "SELECT scene_id FROM queue
    WHERE state = 'pending' AND next_due <= ?3 AND (lease_until IS NULL OR lease_until < ?3)
    ORDER BY next_due, scene_id LIMIT ?4";

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

/// Marks a scene dirty (`?1` id, `?2` reason, `?3` now): a new row, or the
/// waiting row's generation bumped and made due now; a dead row comes back
/// to life with fresh attempts and a fresh age.
const ENQUEUE: &str = "INSERT INTO queue (scene_id, reason, enqueued_at, next_due) VALUES (?1, ?2, ?3, ?3)
     ON CONFLICT(scene_id) DO UPDATE SET
        generation = generation + 1,
        reason = excluded.reason,
        next_due = MIN(next_due, excluded.next_due),
        attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END,
        enqueued_at = CASE WHEN state = 'dead' THEN excluded.enqueued_at ELSE enqueued_at END,
        state = 'pending'";

/// Why a scene was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Hook,
    Manual,
    Watermark,
    Reconcile,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hook => "hook",
            Self::Manual => "manual",
            Self::Watermark => "watermark",
            Self::Reconcile => "reconcile",
        }
    }
}

/// A row claimed for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    pub scene_id: String,
    pub generation: i64,
    pub attempts: i64,
    pub enqueued_at: i64,
}

/// What we last wrote for a scene.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncRecord {
    pub plex_server: String,
    pub rating_key: String,
    pub section: String,
    pub field_hashes: BTreeMap<String, String>,
    pub stash_updated_at: String,
    pub synced_at: i64,
}

/// Counts for `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueStats {
    pub pending: i64,
    pub due_now: i64,
    pub leased: i64,
    pub dead: i64,
    pub synced: i64,
    pub by_class: BTreeMap<String, i64>,
    pub next_due_in_secs: Option<i64>,
    /// Long operations (sync all, reconcile) handed to the worker, not begun.
    pub requests: i64,
}

/// A row of the dead-letter or waiting list, for `status` and the CLI.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RowInfo {
    pub scene_id: String,
    pub state: String,
    pub attempts: i64,
    pub error_class: Option<String>,
    pub last_error: Option<String>,
    pub next_due: i64,
}

/// Where one scene stands, answered from this database alone (the Stash
/// UI's badge and the status page ask per page view, so no Stash or Plex
/// request): its queue row if any, and the Plex items it was written to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SceneState {
    pub scene_id: String,
    /// `synced`, `waiting`, `not_in_plex`, `ambiguous`, `dead` or `unknown`
    /// (never queued, never delivered).
    pub state: &'static str,
    /// The queue row, while the scene waits or is a dead letter.
    pub row: Option<RowInfo>,
    /// The Plex items written to, with when (ms since the epoch).
    pub items: Vec<DeliveredItem>,
}

/// One Plex item a scene's metadata was written to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeliveredItem {
    pub scene_id: String,
    pub rating_key: String,
    pub section: String,
    pub synced_at: i64,
}

/// The columns [`row_info`] reads.
const ROW_INFO: &str = "scene_id, state, attempts, error_class, last_error, next_due";

fn row_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowInfo> {
    Ok(RowInfo {
        scene_id: r.get(0)?,
        state: r.get(1)?,
        attempts: r.get(2)?,
        error_class: r.get(3)?,
        last_error: r.get(4)?,
        next_due: r.get(5)?,
    })
}

pub struct Queue {
    conn: Connection,
    path: PathBuf,
}

impl Queue {
    /// Opens (creating when needed) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks a scene dirty: a new row, or the waiting row's generation bumped
    /// and made due now. A dead row comes back to life with fresh attempts.
    pub fn enqueue(&self, scene_id: &str, reason: Reason) -> rusqlite::Result<()> {
        let now = now_ms();
        self.conn.execute(ENQUEUE, params![scene_id, reason.as_str(), now])?;
        Ok(())
    }

    /// Enqueues many scenes in one transaction.
    pub fn enqueue_many<'a>(&self, ids: impl IntoIterator<Item = &'a str>, reason: Reason) -> rusqlite::Result<usize> {
        let tx = self.conn.unchecked_transaction()?;
        let now = now_ms();
        let mut n = 0;
        {
            let mut stmt = tx.prepare(ENQUEUE)?;
            for id in ids {
                stmt.execute(params![id, reason.as_str(), now])?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Claims up to `limit` due rows for `owner` for `lease`.
    pub fn claim(&self, owner: &str, lease: Duration, limit: usize) -> rusqlite::Result<Vec<Claimed>> {
        let now = now_ms();
        let mut stmt = self.conn.prepare(&format!(
            "UPDATE queue SET lease_owner = ?1, lease_until = ?2 WHERE scene_id IN ({CLAIM_SELECT})
             RETURNING scene_id, generation, attempts, enqueued_at"
        ))?;
        let rows = stmt.query_map(params![owner, now + lease.as_millis() as i64, now, limit as i64], |r| {
            Ok(Claimed { scene_id: r.get(0)?, generation: r.get(1)?, attempts: r.get(2)?, enqueued_at: r.get(3)? })
        })?;
        rows.collect()
    }

    /// Delivered: removes the row unless it changed meanwhile, in which case
    /// it is released to run again. Returns whether it was removed.
    pub fn complete(&self, row: &Claimed) -> rusqlite::Result<bool> {
        let removed = self.conn.execute(
            "DELETE FROM queue WHERE scene_id = ?1 AND generation = ?2",
            params![row.scene_id, row.generation],
        )?;
        if removed == 0 {
            self.release(&row.scene_id, now_ms())?;
        }
        Ok(removed == 1)
    }

    /// Gives a row back, due at `due_ms`, without counting an attempt
    /// (outages: the item was never tried).
    pub fn release(&self, scene_id: &str, due_ms: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE queue SET lease_owner = NULL, lease_until = NULL, next_due = ?2 WHERE scene_id = ?1",
            params![scene_id, due_ms],
        )?;
        Ok(())
    }

    /// Records a failed attempt: due again at `due_ms`, or dead when `dead`.
    /// A row whose generation moved meanwhile is due at once instead, with
    /// the failure still recorded.
    pub fn fail(
        &self,
        row: &Claimed,
        class: ErrorClass,
        error: &str,
        burn_attempt: bool,
        due_ms: i64,
        dead: bool,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE queue SET lease_owner = NULL, lease_until = NULL,
                attempts = attempts + ?3, error_class = ?4, last_error = ?5,
                next_due = CASE WHEN generation = ?2 THEN ?6 ELSE ?7 END,
                state = CASE WHEN generation = ?2 AND ?8 THEN 'dead' ELSE 'pending' END
             WHERE scene_id = ?1",
            params![
                row.scene_id,
                row.generation,
                i64::from(burn_attempt),
                class.as_str(),
                error,
                due_ms,
                now_ms(),
                dead
            ],
        )?;
        Ok(())
    }

    /// Releases every lease held by `owner` (a worker shutting down cleanly).
    pub fn release_owner(&self, owner: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE queue SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?1",
            params![owner],
        )?;
        Ok(())
    }

    /// Voids every lease (returns how many): for a worker that holds the
    /// worker lock, any lease is a dead worker's.
    pub fn release_all_leases(&self) -> rusqlite::Result<usize> {
        self.conn.execute("UPDATE queue SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL", [])
    }

    /// When the next pending row is due (ms), if any.
    pub fn next_due(&self) -> rusqlite::Result<Option<i64>> {
        self.conn.query_row(
            "SELECT MIN(MAX(next_due, COALESCE(lease_until, 0))) FROM queue WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
    }

    /// Rows waiting (an index count, cheaper than [`Queue::stats`]).
    pub fn pending_count(&self) -> rusqlite::Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM queue WHERE state = 'pending'", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
    }

    pub fn stats(&self) -> rusqlite::Result<QueueStats> {
        let now = now_ms();
        let count = |sql: &str| self.conn.query_row(sql, params![now], |r| r.get::<_, i64>(0));
        let mut by_class = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT error_class, COUNT(*) FROM queue WHERE error_class IS NOT NULL GROUP BY error_class")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (class, n) = row?;
            by_class.insert(class, n);
        }
        let next = self.next_due()?;
        Ok(QueueStats {
            pending: self.pending_count()? as i64,
            due_now: count("SELECT COUNT(*) FROM queue WHERE state = 'pending' AND next_due <= ?1")?,
            leased: count("SELECT COUNT(*) FROM queue WHERE lease_until >= ?1")?,
            dead: count("SELECT COUNT(*) FROM queue WHERE state = 'dead' AND ?1 = ?1")?,
            synced: count("SELECT COUNT(DISTINCT scene_id) FROM synced_items WHERE ?1 = ?1")?,
            by_class,
            next_due_in_secs: next.map(|n| ((n - now).max(0)) / 1000),
            requests: count("SELECT COUNT(*) FROM work WHERE ?1 = ?1")?,
        })
    }

    /// Rows in `state` (`pending` or `dead`), oldest first.
    pub fn rows(&self, state: &str, limit: usize) -> rusqlite::Result<Vec<RowInfo>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_INFO} FROM queue WHERE state = ?1 ORDER BY enqueued_at, scene_id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![state, limit as i64], row_info)?;
        rows.collect()
    }

    /// Where the scene stands: the queue row decides (a dead letter, a
    /// scene waiting as not in Plex or ambiguous, or waiting for delivery),
    /// else whether it was ever delivered.
    pub fn scene_state(&self, scene_id: &str) -> rusqlite::Result<SceneState> {
        let row = self
            .conn
            .query_row(&format!("SELECT {ROW_INFO} FROM queue WHERE scene_id = ?1"), params![scene_id], row_info)
            .optional()?;
        let items = self.delivered("WHERE scene_id = ?1", params![scene_id])?;
        let state = match &row {
            Some(r) if r.state == "dead" => "dead",
            Some(r) => match r.error_class.as_deref() {
                Some("not_in_plex") => "not_in_plex",
                Some("ambiguous") => "ambiguous",
                _ => "waiting",
            },
            None if items.is_empty() => "unknown",
            None => "synced",
        };
        Ok(SceneState { scene_id: scene_id.to_string(), state, row, items })
    }

    /// The newest deliveries, newest first.
    pub fn recent_deliveries(&self, limit: usize) -> rusqlite::Result<Vec<DeliveredItem>> {
        self.delivered("ORDER BY synced_at DESC, rowid DESC LIMIT ?1", params![limit as i64])
    }

    fn delivered(&self, tail: &str, args: impl rusqlite::Params) -> rusqlite::Result<Vec<DeliveredItem>> {
        let sql = format!("SELECT scene_id, rating_key, section, synced_at FROM synced_items {tail}");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok(DeliveredItem { scene_id: r.get(0)?, rating_key: r.get(1)?, section: r.get(2)?, synced_at: r.get(3)? })
        })?;
        rows.collect()
    }

    /// Whether the scene waits in the queue (not dead).
    pub fn is_pending(&self, scene_id: &str) -> rusqlite::Result<bool> {
        self.conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM queue WHERE scene_id = ?1 AND state = 'pending')",
            params![scene_id],
            |r| r.get(0),
        )
    }

    /// Dead letters back into the queue (all, or of one class), due now
    /// with fresh attempts; returns how many.
    pub fn retry_dead(&self, class: Option<&str>) -> rusqlite::Result<usize> {
        self.conn.execute(
            "UPDATE queue SET state = 'pending', attempts = 0, next_due = ?2, enqueued_at = ?2
             WHERE state = 'dead' AND (?1 IS NULL OR error_class = ?1)",
            params![class, now_ms()],
        )
    }

    /// Deletes dead letters (all, or of one class); returns how many.
    pub fn purge_dead(&self, class: Option<&str>) -> rusqlite::Result<usize> {
        self.conn.execute("DELETE FROM queue WHERE state = 'dead' AND (?1 IS NULL OR error_class = ?1)", params![class])
    }

    /// Forgets the stored hashes of a scene, so its next delivery writes
    /// every field again (reconcile found Plex different).
    /// Scenes written to any of the ratingKeys `keys`.
    pub fn scenes_recorded_at(&self, keys: &[String]) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached("SELECT DISTINCT scene_id FROM synced_items WHERE rating_key = ?1")?;
        let mut out = Vec::new();
        for key in keys {
            for id in stmt.query_map(params![key], |r| r.get::<_, String>(0))? {
                let id = id?;
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    pub fn reset_hashes(&self, scene_id: &str) -> rusqlite::Result<()> {
        self.conn.execute("UPDATE synced_items SET field_hashes = '{}' WHERE scene_id = ?1", params![scene_id])?;
        Ok(())
    }

    /// Empties the queue (not the sync record); returns how many rows went.
    pub fn clear(&self) -> rusqlite::Result<usize> {
        self.conn.execute("DELETE FROM queue", [])
    }

    /// The scene's record for its first Plex item (most scenes have one).
    pub fn record(&self, scene_id: &str) -> rusqlite::Result<Option<SyncRecord>> {
        Ok(self.records(scene_id)?.into_iter().next())
    }

    /// What was last written to each of the scene's Plex items.
    pub fn records(&self, scene_id: &str) -> rusqlite::Result<Vec<SyncRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT plex_server, rating_key, section, field_hashes, stash_updated_at, synced_at FROM synced_items
             WHERE scene_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![scene_id], |r| {
            let hashes: String = r.get(3)?;
            Ok(SyncRecord {
                plex_server: r.get(0)?,
                rating_key: r.get(1)?,
                section: r.get(2)?,
                field_hashes: serde_json::from_str(&hashes).unwrap_or_default(),
                stash_updated_at: r.get(4)?,
                synced_at: r.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// The ratingKeys of the scene's items we wrote to.
    pub fn rating_keys(&self, scene_id: &str) -> rusqlite::Result<Vec<String>> {
        Ok(self.records(scene_id)?.into_iter().map(|r| r.rating_key).collect())
    }

    /// Stores what was written to one of the scene's items.
    pub fn save_record(&self, scene_id: &str, rec: &SyncRecord) -> rusqlite::Result<()> {
        let hashes = serde_json::to_string(&rec.field_hashes).expect("string map serializes");
        self.conn.execute(
            "INSERT INTO synced_items (scene_id, plex_server, rating_key, section, field_hashes, stash_updated_at, synced_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(scene_id, rating_key) DO UPDATE SET plex_server = excluded.plex_server,
                section = excluded.section, field_hashes = excluded.field_hashes,
                stash_updated_at = excluded.stash_updated_at, synced_at = excluded.synced_at",
            params![
                scene_id,
                rec.plex_server,
                rec.rating_key,
                rec.section,
                hashes,
                rec.stash_updated_at,
                rec.synced_at
            ],
        )?;
        Ok(())
    }

    /// Drops the records of the scene's items other than `keep` (the scene
    /// is no longer in them).
    pub fn keep_records(&self, scene_id: &str, keep: &[String]) -> rusqlite::Result<()> {
        let keep = serde_json::to_string(keep).expect("strings serialize");
        self.conn.execute(
            "DELETE FROM synced_items WHERE scene_id = ?1 AND rating_key NOT IN (SELECT value FROM json_each(?2))",
            params![scene_id, keep],
        )?;
        Ok(())
    }

    /// Remembers which performers, studios and tags the scene showed when
    /// it was delivered: when one is deleted or merged away, Stash can no
    /// longer say which scenes had it.
    pub fn save_shows(&self, scene_id: &str, objects: &[(&str, String)]) -> rusqlite::Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM shows WHERE scene_id = ?1", params![scene_id])?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO shows (kind, object_id, scene_id) VALUES (?1, ?2, ?3)")?;
            for (kind, id) in objects {
                stmt.execute(params![kind, id, scene_id])?;
            }
        }
        tx.commit()
    }

    /// Scenes that showed the object when last delivered.
    pub fn scenes_recorded_showing(&self, kind: &str, object_id: &str) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached("SELECT scene_id FROM shows WHERE kind = ?1 AND object_id = ?2")?;
        let rows = stmt.query_map(params![kind, object_id], |r| r.get(0))?;
        rows.collect()
    }

    pub fn forget(&self, scene_id: &str) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM synced_items WHERE scene_id = ?1", params![scene_id])?;
        self.conn.execute("DELETE FROM seen WHERE scene_id = ?1", params![scene_id])?;
        self.conn.execute("DELETE FROM shows WHERE scene_id = ?1", params![scene_id])?;
        Ok(())
    }

    /// Records that the scene's version `updated_at` (Stash's text) was
    /// taken care of (read for delivery, or queued) at `at_ms`, our clock.
    pub fn mark_seen(&self, scene_id: &str, updated_at: &str, at_ms: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO seen (scene_id, updated_at, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(scene_id) DO UPDATE SET updated_at = excluded.updated_at, seen_at = excluded.seen_at",
            params![scene_id, updated_at, at_ms],
        )?;
        Ok(())
    }

    /// The version of the scene last taken care of, and when.
    pub fn seen(&self, scene_id: &str) -> rusqlite::Result<Option<(String, i64)>> {
        self.conn
            .query_row("SELECT updated_at, seen_at FROM seen WHERE scene_id = ?1", params![scene_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
    }

    /// Stores the Plex library index: `meta` and one JSON row per item.
    /// `whole` replaces what was stored; otherwise the rows are added to it
    /// (an incremental refresh). Rows are written as they come, never
    /// gathered first.
    pub fn save_index(
        &mut self,
        meta: &str,
        rows: impl Iterator<Item = (String, String)>,
        whole: bool,
    ) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        if whole {
            tx.execute("DELETE FROM plex_index", [])?;
        }
        {
            let mut stmt = tx.prepare("INSERT OR REPLACE INTO plex_index (rating_key, item) VALUES (?1, ?2)")?;
            for (rk, item) in rows {
                stmt.execute(params![rk, item])?;
            }
        }
        tx.execute(
            "INSERT INTO kv (key, value) VALUES ('plex_index_meta', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![meta],
        )?;
        tx.commit()
    }

    /// The stored index's meta, if an index is stored.
    pub fn index_meta(&self) -> rusqlite::Result<Option<String>> {
        self.get_kv("plex_index_meta")
    }

    /// Hands each stored index row to `row` as it is read, until it returns
    /// false; whether every row was taken.
    pub fn each_index_row(&self, mut row: impl FnMut(&str) -> bool) -> rusqlite::Result<bool> {
        let mut stmt = self.conn.prepare("SELECT item FROM plex_index")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let text = r
                .get_ref(0)?
                .as_str()
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?;
            if !row(text) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Forgets the stored index (an item vanished: the next run reads Plex again).
    pub fn drop_index(&self) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM kv WHERE key = 'plex_index_meta'", [])?;
        self.conn.execute("DELETE FROM plex_index", [])?;
        Ok(())
    }

    /// Makes every waiting row of `class` due now (its cause was fixed).
    pub fn wake(&self, class: ErrorClass) -> rusqlite::Result<usize> {
        self.conn.execute(
            "UPDATE queue SET next_due = ?1 WHERE state = 'pending' AND error_class = ?2",
            params![now_ms(), class.as_str()],
        )
    }

    /// Hands a long operation to the worker (a JSON request).
    pub fn push_work(&self, request: &str) -> rusqlite::Result<()> {
        self.conn.execute("INSERT INTO work (request) VALUES (?1)", params![request])?;
        Ok(())
    }

    /// Takes every waiting request, oldest first.
    pub fn take_work(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare("DELETE FROM work RETURNING id, request")?;
        let mut rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.sort();
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    pub fn get_kv(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.conn.query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| r.get(0)).optional()
    }

    /// A number kept in the key-value table (times in ms, counters); 0 when
    /// absent or unreadable.
    pub fn kv_number(&self, key: &str) -> rusqlite::Result<i64> {
        Ok(self.get_kv(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    pub fn set_kv(&self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        (dir, q)
    }

    #[test]
    fn a_claim_reads_rows_in_index_order_without_sorting_the_queue() {
        let (_dir, q) = queue();
        let sql = CLAIM_SELECT.replace("?3", "0").replace("?4", "25");
        let plan: Vec<String> = q
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(plan.iter().any(|p| p.contains("queue_due_order")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "a claim sorts the whole queue: {plan:?}");
    }

    #[test]
    fn scene_state_follows_the_row_then_the_record() {
        let (_d, q) = queue();
        assert_eq!(q.scene_state("1").unwrap().state, "unknown");
        q.enqueue("1", Reason::Hook).unwrap();
        assert_eq!(q.scene_state("1").unwrap().state, "waiting");
        let row = q.claim("w", Duration::from_secs(60), 1).unwrap().remove(0);
        q.fail(&row, ErrorClass::NotInPlex, "no item", true, now_ms() + 1000, false).unwrap();
        assert_eq!(q.scene_state("1").unwrap().state, "not_in_plex");
        let row = Claimed { attempts: 1, ..row };
        q.fail(&row, ErrorClass::BadData, "Plex said 400", true, now_ms(), true).unwrap();
        let dead = q.scene_state("1").unwrap();
        assert_eq!((dead.state, dead.row.unwrap().last_error.as_deref()), ("dead", Some("Plex said 400")));
        q.enqueue("1", Reason::Manual).unwrap();
        let row = q.claim("w", Duration::from_secs(60), 1).unwrap().remove(0);
        q.save_record("1", &SyncRecord { rating_key: "42".into(), synced_at: 7, ..SyncRecord::default() }).unwrap();
        assert!(q.complete(&row).unwrap());
        let synced = q.scene_state("1").unwrap();
        assert_eq!(synced.state, "synced");
        assert_eq!((synced.items[0].rating_key.as_str(), synced.items[0].synced_at), ("42", 7));
        assert_eq!(q.recent_deliveries(5).unwrap(), synced.items);
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
        let q = Queue::open(&path).unwrap();
        let records = q.records("7").unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].rating_key, "42");
        assert_eq!(records[0].field_hashes["title"], "abc");
        q.save_record("7", &SyncRecord { rating_key: "43".into(), ..records[0].clone() }).unwrap();
        assert_eq!(q.records("7").unwrap().len(), 2, "a scene may be several items");
        q.keep_records("7", &["43".to_string()]).unwrap();
        assert_eq!(q.records("7").unwrap().iter().map(|r| r.rating_key.as_str()).collect::<Vec<_>>(), ["43"]);
        drop(q);
        Queue::open(&path).unwrap();
    }

    #[test]
    fn objects_shown_are_remembered_per_scene() {
        let (_d, q) = queue();
        q.save_shows("1", &[("tag", "5".into()), ("performer", "9".into())]).unwrap();
        q.save_shows("2", &[("tag", "5".into())]).unwrap();
        assert_eq!(q.scenes_recorded_showing("tag", "5").unwrap(), ["1", "2"]);
        q.save_shows("1", &[("performer", "9".into())]).unwrap();
        assert_eq!(q.scenes_recorded_showing("tag", "5").unwrap(), ["2"], "replaced, not added to");
        q.forget("2").unwrap();
        assert!(q.scenes_recorded_showing("tag", "5").unwrap().is_empty());
    }

    #[test]
    fn second_event_coalesces_into_one_row() {
        let (_d, q) = queue();
        q.enqueue("1", Reason::Hook).unwrap();
        q.enqueue("1", Reason::Hook).unwrap();
        let claimed = q.claim("w", Duration::from_secs(60), 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].generation, 2);
        assert!(q.claim("w2", Duration::from_secs(60), 10).unwrap().is_empty(), "leased rows are not claimed twice");
        assert!(q.complete(&claimed[0]).unwrap());
        assert_eq!(q.stats().unwrap().pending, 0);
    }

    #[test]
    fn update_during_delivery_runs_again() {
        let (_d, q) = queue();
        q.enqueue("1", Reason::Hook).unwrap();
        let row = q.claim("w", Duration::from_secs(60), 10).unwrap().remove(0);
        q.enqueue("1", Reason::Hook).unwrap();
        assert!(!q.complete(&row).unwrap());
        let again = q.claim("w", Duration::from_secs(60), 10).unwrap();
        assert_eq!(again[0].generation, 2);
    }

    #[test]
    fn expired_leases_come_back_and_failures_are_recorded() {
        let (_d, q) = queue();
        q.enqueue("1", Reason::Hook).unwrap();
        let row = q.claim("dead-worker", Duration::from_millis(0), 10).unwrap().remove(0);
        std::thread::sleep(Duration::from_millis(5));
        let again = q.claim("w", Duration::from_secs(60), 10).unwrap();
        assert_eq!(again.len(), 1, "a killed worker's lease expires");
        q.fail(&row, ErrorClass::NotInPlex, "no item", true, now_ms() + 60_000, false).unwrap();
        let stats = q.stats().unwrap();
        assert_eq!(stats.by_class.get("not_in_plex"), Some(&1));
        assert_eq!(stats.due_now, 0);
        q.fail(&row, ErrorClass::NotInPlex, "no item", true, now_ms(), true).unwrap();
        assert_eq!(q.stats().unwrap().dead, 1);
        q.enqueue("1", Reason::Hook).unwrap();
        let revived = q.rows("pending", 10).unwrap();
        assert_eq!(revived[0].attempts, 0, "a new event revives a dead row");
        // A bulk enqueue revives the same way, with a fresh age.
        let again = q.claim("w", Duration::from_secs(60), 10).unwrap().remove(0);
        q.fail(&again, ErrorClass::NotInPlex, "no item", true, now_ms(), true).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let before = now_ms();
        q.enqueue_many(["1"], Reason::Manual).unwrap();
        let fresh = q.claim("w", Duration::from_secs(60), 10).unwrap().remove(0);
        assert_eq!(fresh.attempts, 0);
        assert!(fresh.enqueued_at >= before, "the dead row's old age is gone");
    }
}
