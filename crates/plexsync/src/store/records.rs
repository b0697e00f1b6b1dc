//! The sync record: what was last written to each Plex item of a scene
//! (field hashes, so an unchanged field is never written again), and where
//! a scene stands for the status page and Stash's UI.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::ids::SceneId;

use super::queue::{row_info, RowInfo, ROW_INFO};
use super::{Result, Store};

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

/// The writes that end a scene's delivery: the last item's record, the
/// items the scene is still in, and the objects it shows. Handed back
/// rather than written at once, so a worker commits many deliveries'
/// endings (with their queue rows) together: a commit per scene was a
/// large share of a first sync's CPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Closing {
    pub(crate) scene_id: String,
    pub(crate) record: Option<SyncRecord>,
    pub(crate) keep: Vec<String>,
    pub(crate) shows: Vec<(&'static str, String)>,
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

const RECORDS: &str = "SELECT plex_server, rating_key, section, field_hashes, stash_updated_at, synced_at, rowid
    FROM synced_items WHERE scene_id = ?1";

impl Store {
    /// Where the scene stands: the queue row decides (a dead letter, a
    /// scene waiting as not in Plex or ambiguous, or waiting for delivery),
    /// else whether it was ever delivered.
    pub fn scene_state(&self, scene_id: &str) -> Result<SceneState> {
        let row = self
            .one(&format!("SELECT {ROW_INFO} FROM queue WHERE scene_id = ?1"), params![scene_id], row_info)
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
    pub(crate) fn recent_deliveries(&self, limit: usize) -> Result<Vec<DeliveredItem>> {
        self.delivered("ORDER BY synced_at DESC, rowid DESC LIMIT ?1", params![crate::units::to_i64(limit)])
    }

    fn delivered(&self, tail: &str, args: impl rusqlite::Params) -> Result<Vec<DeliveredItem>> {
        let sql = format!("SELECT scene_id, rating_key, section, synced_at FROM synced_items {tail}");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok(DeliveredItem { scene_id: r.get(0)?, rating_key: r.get(1)?, section: r.get(2)?, synced_at: r.get(3)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets the stored hashes of a scene, so its next delivery writes
    /// every field again (reconcile found Plex different).
    /// Scenes written to any of the ratingKeys `keys`.
    pub(crate) fn scenes_recorded_at(&self, keys: &[String]) -> Result<Vec<SceneId>> {
        let mut stmt = self.conn.prepare_cached("SELECT DISTINCT scene_id FROM synced_items WHERE rating_key = ?1")?;
        let mut out = Vec::new();
        for key in keys {
            for id in stmt.query_map(params![key], |r| r.get::<_, String>(0))? {
                let Some(id) = SceneId::parse(&id?) else { continue };
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn reset_hashes(&self, scene_id: &str) -> Result<()> {
        self.exec("UPDATE synced_items SET field_hashes = '{}' WHERE scene_id = ?1", params![scene_id])?;
        Ok(())
    }

    /// The scene's record for its first Plex item (most scenes have one).
    pub fn record(&self, scene_id: &str) -> Result<Option<SyncRecord>> {
        Ok(self.records(scene_id)?.into_iter().next())
    }

    /// What was last written to each of the scene's Plex items.
    /// In the order they were first written. Sorted here, not by SQL: an
    /// `ORDER BY` made SQLite prepare the statement again at every call
    /// (its plan then depends on the bound value), a tenth of a first
    /// sync's CPU.
    pub fn records(&self, scene_id: &str) -> Result<Vec<SyncRecord>> {
        let mut stmt = self.conn.prepare_cached(RECORDS)?;
        let rows = stmt.query_map(params![scene_id], |r| {
            let hashes: String = r.get(3)?;
            let record = SyncRecord {
                plex_server: r.get(0)?,
                rating_key: r.get(1)?,
                section: r.get(2)?,
                field_hashes: serde_json::from_str(&hashes).unwrap_or_default(),
                stash_updated_at: r.get(4)?,
                synced_at: r.get(5)?,
            };
            Ok((r.get::<_, i64>(6)?, record))
        })?;
        let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        rows.sort_unstable_by_key(|(rowid, _)| *rowid);
        Ok(rows.into_iter().map(|(_, record)| record).collect())
    }

    /// The ratingKeys of the scene's items we wrote to.
    pub fn rating_keys(&self, scene_id: &str) -> Result<Vec<String>> {
        Ok(self.records(scene_id)?.into_iter().map(|r| r.rating_key).collect())
    }

    /// Stores what was written to one of the scene's items.
    pub(crate) fn save_record(&self, scene_id: &str, rec: &SyncRecord) -> Result<()> {
        let hashes = serde_json::to_string(&rec.field_hashes).expect("string map serializes");
        self.exec(
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
    pub(crate) fn keep_records(&self, scene_id: &str, keep: &[String]) -> Result<()> {
        let keep = serde_json::to_string(keep).expect("strings serialize");
        self.exec(
            "DELETE FROM synced_items WHERE scene_id = ?1 AND rating_key NOT IN (SELECT value FROM json_each(?2))",
            params![scene_id, keep],
        )?;
        Ok(())
    }

    /// Writes a delivery's ending as one change (inside the caller's
    /// transaction, when one is open).
    pub(crate) fn close(&self, closing: &Closing) -> Result<()> {
        self.atomically(|q| {
            if let Some(record) = &closing.record {
                q.save_record(&closing.scene_id, record)?;
            }
            q.keep_records(&closing.scene_id, &closing.keep)?;
            q.save_shows(&closing.scene_id, &closing.shows)
        })
    }

    pub(crate) fn forget(&self, scene_id: &str) -> Result<()> {
        self.exec("DELETE FROM synced_items WHERE scene_id = ?1", params![scene_id])?;
        self.exec("DELETE FROM seen WHERE scene_id = ?1", params![scene_id])?;
        self.exec("DELETE FROM shows WHERE scene_id = ?1", params![scene_id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use crate::store::now_ms;
    use crate::store::queue::{Claimed, Reason};
    use crate::store::tests::store;
    use std::time::Duration;

    #[test]
    fn scene_state_follows_the_row_then_the_record() {
        let (_d, q) = store();
        assert_eq!(q.scene_state("1").unwrap().state, "unknown");
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Hook).unwrap();
        assert_eq!(q.scene_state("1").unwrap().state, "waiting");
        let row = q.claim("w", Duration::from_secs(60), 1).unwrap().remove(0);
        q.fail(&row, ErrorClass::NotInPlex, "no item", true, now_ms() + 1000, false).unwrap();
        assert_eq!(q.scene_state("1").unwrap().state, "not_in_plex");
        let row = Claimed { attempts: 1, ..row };
        q.fail(&row, ErrorClass::BadData, "Plex said 400", true, now_ms(), true).unwrap();
        let dead = q.scene_state("1").unwrap();
        assert_eq!((dead.state, dead.row.unwrap().last_error.as_deref()), ("dead", Some("Plex said 400")));
        q.enqueue(&crate::ids::SceneId::parse("1").unwrap(), Reason::Manual).unwrap();
        let row = q.claim("w", Duration::from_secs(60), 1).unwrap().remove(0);
        q.save_record("1", &SyncRecord { rating_key: "42".into(), synced_at: 7, ..SyncRecord::default() }).unwrap();
        assert!(q.complete(&row).unwrap());
        let synced = q.scene_state("1").unwrap();
        assert_eq!(synced.state, "synced");
        assert_eq!((synced.items[0].rating_key.as_str(), synced.items[0].synced_at), ("42", 7));
        assert_eq!(q.recent_deliveries(5).unwrap(), synced.items);
    }

    #[test]
    fn a_scenes_records_come_in_the_order_written_from_a_statement_prepared_once() {
        let (_dir, q) = store();
        for (scene, rk) in [("1", "30"), ("2", "5"), ("1", "20"), ("1", "10")] {
            q.save_record(scene, &SyncRecord { rating_key: rk.into(), ..Default::default() }).unwrap();
        }
        for _ in 0..5 {
            assert_eq!(q.rating_keys("1").unwrap(), ["30", "20", "10"]);
            assert_eq!(q.rating_keys("2").unwrap(), ["5"]);
        }
        let stmt = q.conn.prepare_cached(RECORDS).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
