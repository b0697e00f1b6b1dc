//! The version of each scene last taken care of (Stash's `updated_at`
//! text), so change capture does not queue a scene twice for one edit.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store};

impl Store {
    /// Records that the scene's version `updated_at` (Stash's text) was
    /// taken care of (read for delivery, or queued) at `at_ms`, our clock.
    pub(crate) fn mark_seen(&self, scene_id: &str, updated_at: &str, at_ms: i64) -> Result<()> {
        self.exec(
            "INSERT INTO seen (scene_id, updated_at, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(scene_id) DO UPDATE SET updated_at = excluded.updated_at, seen_at = excluded.seen_at",
            params![scene_id, updated_at, at_ms],
        )?;
        Ok(())
    }

    /// The version of the scene last taken care of, and when.
    pub(crate) fn seen(&self, scene_id: &str) -> Result<Option<(String, i64)>> {
        Ok(self
            .one("SELECT updated_at, seen_at FROM seen WHERE scene_id = ?1", params![scene_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }
}
