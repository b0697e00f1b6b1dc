//! Which performers, studios and tags each scene showed when delivered:
//! once one is deleted or merged away, Stash can no longer say which
//! scenes had it.

use rusqlite::params;

use crate::ids::SceneId;

use super::{Result, Store};

impl Store {
    /// Remembers which performers, studios and tags the scene showed when
    /// it was delivered: when one is deleted or merged away, Stash can no
    /// longer say which scenes had it.
    /// Unchanged objects cost a read, not a write: most deliveries change
    /// none, and the write was a tenth of a first sync's time.
    pub(crate) fn save_shows(&self, scene_id: &str, objects: &[(&str, String)]) -> Result<()> {
        let mut wanted: Vec<(&str, &str)> = objects.iter().map(|(kind, id)| (*kind, id.as_str())).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut stmt = self.conn.prepare_cached("SELECT kind, object_id FROM shows WHERE scene_id = ?1")?;
        let rows = stmt.query_map(params![scene_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut stored = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        stored.sort_unstable();
        if stored.iter().map(|(kind, id)| (kind.as_str(), id.as_str())).eq(wanted.iter().copied()) {
            return Ok(());
        }
        self.atomically(|q| {
            q.exec("DELETE FROM shows WHERE scene_id = ?1", params![scene_id])?;
            let mut stmt =
                q.conn.prepare_cached("INSERT OR IGNORE INTO shows (kind, object_id, scene_id) VALUES (?1, ?2, ?3)")?;
            for (kind, id) in wanted {
                stmt.execute(params![kind, id, scene_id])?;
            }
            Ok(())
        })
    }

    /// Scenes that showed the object when last delivered.
    pub(crate) fn scenes_recorded_showing(&self, kind: &str, object_id: &str) -> Result<Vec<SceneId>> {
        let mut stmt = self.conn.prepare_cached("SELECT scene_id FROM shows WHERE kind = ?1 AND object_id = ?2")?;
        let rows = stmt.query_map(params![kind, object_id], |r| r.get::<_, String>(0))?;
        let ids: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(ids.iter().filter_map(|id| SceneId::parse(id)).collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::store;

    fn ids(ids: Vec<crate::ids::SceneId>) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn objects_shown_are_remembered_per_scene() {
        let (_d, q) = store();
        q.save_shows("1", &[("tag", "5".into()), ("performer", "9".into())]).unwrap();
        q.save_shows("2", &[("tag", "5".into())]).unwrap();
        assert_eq!(ids(q.scenes_recorded_showing("tag", "5").unwrap()), ["1", "2"]);
        q.save_shows("1", &[("performer", "9".into())]).unwrap();
        assert_eq!(ids(q.scenes_recorded_showing("tag", "5").unwrap()), ["2"], "replaced, not added to");
        q.save_shows("2", &[("tag", "5".into()), ("tag", "5".into())]).unwrap();
        q.save_shows("2", &[("tag", "5".into())]).unwrap();
        assert_eq!(ids(q.scenes_recorded_showing("tag", "5").unwrap()), ["2"], "the same again");
        q.save_shows("1", &[]).unwrap();
        assert!(q.scenes_recorded_showing("performer", "9").unwrap().is_empty(), "none shown now");
        q.forget("2").unwrap();
        assert!(q.scenes_recorded_showing("tag", "5").unwrap().is_empty());
    }
}
