//! The queue proper: one row per dirty scene. A second event for a waiting
//! scene bumps its generation instead of adding a row; workers claim rows
//! with a lease that expires, so a killed worker's rows come back by
//! themselves; a row is completed only if its generation did not change
//! while it was delivered.

use crate::ids::SceneId;
use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::params;
use serde::Serialize;

use super::{now_ms, Result, Store};
use crate::error::ErrorClass;

/// The rows a claim takes: due, not leased, oldest first.
const CLAIM_SELECT: &str = "SELECT scene_id FROM queue
    WHERE state = 'pending' AND next_due <= ?3 AND (lease_until IS NULL OR lease_until < ?3)
    ORDER BY next_due, scene_id LIMIT ?4";

/// Marks a scene dirty (`?1` id, `?2` reason, `?3` now, `?4` due): a new
/// row, or the waiting row's generation bumped and made due by `?4`; a dead
/// row comes back to life with fresh attempts and a fresh age. A waiting
/// row keeps the stronger of the two reasons (see [`Reason::rank`]).
const ENQUEUE: &str = "INSERT INTO queue (scene_id, reason, enqueued_at, next_due) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT(scene_id) DO UPDATE SET
        generation = generation + 1,
        reason = CASE
            WHEN state = 'dead' THEN excluded.reason
            WHEN reason = 'rematch' OR excluded.reason = 'provider' THEN reason
            ELSE excluded.reason END,
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
    /// Plex read the scene from the metadata provider: what the provider
    /// cannot carry (images, collections) is to be written into its items.
    Provider,
    /// The provider could not answer Plex about the scene: Plex is to be
    /// asked to match its items again, besides the usual delivery.
    Rematch,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hook => "hook",
            Self::Manual => "manual",
            Self::Watermark => "watermark",
            Self::Reconcile => "reconcile",
            Self::Provider => "provider",
            Self::Rematch => "rematch",
        }
    }

    /// The reason a stored row names (an unknown one, from a newer
    /// version, as a hook: a full delivery).
    fn parse(s: &str) -> Self {
        match s {
            "manual" => Self::Manual,
            "watermark" => Self::Watermark,
            "reconcile" => Self::Reconcile,
            "provider" => Self::Provider,
            "rematch" => Self::Rematch,
            _ => Self::Hook,
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
    pub reason: Reason,
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

/// The columns [`row_info`] reads.
pub(super) const ROW_INFO: &str = "scene_id, state, attempts, error_class, last_error, next_due";

pub(super) fn row_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowInfo> {
    Ok(RowInfo {
        scene_id: r.get(0)?,
        state: r.get(1)?,
        attempts: r.get(2)?,
        error_class: r.get(3)?,
        last_error: r.get(4)?,
        next_due: r.get(5)?,
    })
}

impl Store {
    /// Marks a scene dirty: a new row, or the waiting row's generation bumped
    /// and made due now. A dead row comes back to life with fresh attempts.
    /// Rows are keyed by the id's one spelling ([`SceneId`]), so one scene
    /// is one row whoever names it.
    pub fn enqueue(&self, scene_id: &SceneId, reason: Reason) -> Result<()> {
        let now = now_ms();
        self.exec(ENQUEUE, params![scene_id.as_str(), reason.as_str(), now, now])?;
        Ok(())
    }

    /// Enqueues many scenes in one transaction.
    pub fn enqueue_many<'a>(&self, ids: impl IntoIterator<Item = &'a SceneId>, reason: Reason) -> Result<usize> {
        self.enqueue_many_after(ids, reason, Duration::ZERO)
    }

    /// Enqueues many scenes in one transaction, due after `delay` (a row
    /// already due sooner stays so).
    pub fn enqueue_many_after<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a SceneId>,
        reason: Reason,
        delay: Duration,
    ) -> Result<usize> {
        let tx = self.conn.unchecked_transaction()?;
        let now = now_ms();
        let due = now.saturating_add(crate::units::millis(delay));
        let mut n = 0;
        {
            let mut stmt = tx.prepare(ENQUEUE)?;
            for id in ids {
                stmt.execute(params![id.as_str(), reason.as_str(), now, due])?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Claims up to `limit` due rows for `owner` for `lease`.
    pub(crate) fn claim(&self, owner: &str, lease: Duration, limit: usize) -> Result<Vec<Claimed>> {
        let now = now_ms();
        let mut stmt = self.conn.prepare_cached(&format!(
            "UPDATE queue SET lease_owner = ?1, lease_until = ?2 WHERE scene_id IN ({CLAIM_SELECT})
             RETURNING scene_id, generation, attempts, enqueued_at, reason"
        ))?;
        let rows = stmt.query_map(
            params![owner, now.saturating_add(crate::units::millis(lease)), now, crate::units::to_i64(limit)],
            |r| {
                Ok(Claimed {
                    scene_id: r.get(0)?,
                    generation: r.get(1)?,
                    attempts: r.get(2)?,
                    enqueued_at: r.get(3)?,
                    reason: Reason::parse(&r.get::<_, String>(4)?),
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delivered: removes the row unless it changed meanwhile, in which case
    /// it is released to run again. Returns whether it was removed.
    pub(crate) fn complete(&self, row: &Claimed) -> Result<bool> {
        let removed = self
            .exec("DELETE FROM queue WHERE scene_id = ?1 AND generation = ?2", params![row.scene_id, row.generation])?;
        if removed == 0 {
            self.release(&row.scene_id, now_ms())?;
        }
        Ok(removed == 1)
    }

    /// Gives a row back, due at `due_ms`, without counting an attempt
    /// (outages: the item was never tried).
    pub(crate) fn release(&self, scene_id: &str, due_ms: i64) -> Result<()> {
        self.exec(
            "UPDATE queue SET lease_owner = NULL, lease_until = NULL, next_due = ?2 WHERE scene_id = ?1",
            params![scene_id, due_ms],
        )?;
        Ok(())
    }

    /// Records a failed attempt: due again at `due_ms`, or dead when `dead`.
    /// A row whose generation moved meanwhile is due at once instead, with
    /// the failure still recorded.
    pub(crate) fn fail(
        &self,
        row: &Claimed,
        class: ErrorClass,
        error: &str,
        burn_attempt: bool,
        due_ms: i64,
        dead: bool,
    ) -> Result<()> {
        self.exec(
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
    pub(crate) fn release_owner(&self, owner: &str) -> Result<()> {
        self.exec("UPDATE queue SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?1", params![owner])?;
        Ok(())
    }

    /// Voids every lease (returns how many): for a worker that holds the
    /// worker lock, any lease is a dead worker's.
    pub(crate) fn release_all_leases(&self) -> Result<usize> {
        Ok(self.exec("UPDATE queue SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL", [])?)
    }

    /// When the next pending row is due (ms), if any.
    pub(crate) fn next_due(&self) -> Result<Option<i64>> {
        Ok(self.one(
            "SELECT MIN(MAX(next_due, COALESCE(lease_until, 0))) FROM queue WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Rows waiting (an index count, cheaper than [`Store::stats`]).
    pub(crate) fn pending_count(&self) -> Result<usize> {
        Ok(self
            .one("SELECT COUNT(*) FROM queue WHERE state = 'pending'", [], |r| r.get::<_, i64>(0))
            .map(crate::units::to_usize)?)
    }

    pub fn stats(&self) -> Result<QueueStats> {
        let now = now_ms();
        let count = |sql: &str| self.one(sql, params![now], |r| r.get::<_, i64>(0));
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
            pending: crate::units::to_i64(self.pending_count()?),
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
    pub fn rows(&self, state: &str, limit: usize) -> Result<Vec<RowInfo>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_INFO} FROM queue WHERE state = ?1 ORDER BY enqueued_at, scene_id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![state, crate::units::to_i64(limit)], row_info)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether the scene waits in the queue (not dead).
    pub fn is_pending(&self, scene_id: &str) -> Result<bool> {
        Ok(self.one(
            "SELECT EXISTS(SELECT 1 FROM queue WHERE scene_id = ?1 AND state = 'pending')",
            params![scene_id],
            |r| r.get(0),
        )?)
    }

    /// Makes every waiting row of `class` due now (its cause was fixed).
    pub(crate) fn wake(&self, class: ErrorClass) -> Result<usize> {
        Ok(self.exec(
            "UPDATE queue SET next_due = ?1 WHERE state = 'pending' AND error_class = ?2",
            params![now_ms(), class.as_str()],
        )?)
    }

    /// Empties the queue (not the sync record); returns how many rows went.
    pub(crate) fn clear(&self) -> Result<usize> {
        Ok(self.exec("DELETE FROM queue", [])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[test]
    fn a_claim_reads_rows_in_index_order_without_sorting_the_queue() {
        let (_dir, q) = store();
        let sql = CLAIM_SELECT.replace("?3", "0").replace("?4", "25");
        let plan: Vec<String> = q
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(std::result::Result::unwrap)
            .collect();
        assert!(plan.iter().any(|p| p.contains("queue_due_order")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "a claim sorts the whole queue: {plan:?}");
    }

    #[test]
    fn second_event_coalesces_into_one_row() {
        let (_d, q) = store();
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        let claimed = q.claim("w", Duration::from_secs(60), 10).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].generation, 2);
        assert!(q.claim("w2", Duration::from_secs(60), 10).unwrap().is_empty(), "leased rows are not claimed twice");
        assert!(q.complete(&claimed[0]).unwrap());
        assert_eq!(q.stats().unwrap().pending, 0);
    }

    #[test]
    fn update_during_delivery_runs_again() {
        let (_d, q) = store();
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        let row = q.claim("w", Duration::from_secs(60), 10).unwrap().remove(0);
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        assert!(!q.complete(&row).unwrap());
        let again = q.claim("w", Duration::from_secs(60), 10).unwrap();
        assert_eq!(again[0].generation, 2);
    }

    #[test]
    fn expired_leases_come_back_and_failures_are_recorded() {
        let (_d, q) = store();
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
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
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        let revived = q.rows("pending", 10).unwrap();
        assert_eq!(revived[0].attempts, 0, "a new event revives a dead row");
        // A bulk enqueue revives the same way, with a fresh age.
        let again = q.claim("w", Duration::from_secs(60), 10).unwrap().remove(0);
        q.fail(&again, ErrorClass::NotInPlex, "no item", true, now_ms(), true).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let before = now_ms();
        q.enqueue_many(&[crate::ids::SceneId::parse("1").unwrap()], Reason::Manual).unwrap();
        let fresh = q.claim("w", Duration::from_secs(60), 10).unwrap().remove(0);
        assert_eq!(fresh.attempts, 0);
        assert!(fresh.enqueued_at >= before, "the dead row's old age is gone");
    }

    #[test]
    fn one_scene_is_one_row_however_its_id_is_spelled() {
        let (_d, q) = store();
        for spelling in ["007", "7", "0007"] {
            q.enqueue(&crate::ids::SceneId::parse(spelling).unwrap(), Reason::Hook).unwrap();
        }
        assert_eq!(q.pending_count().unwrap(), 1);
        assert!(q.is_pending("7").unwrap());
    }
}
