//! The Plex library index as the last process left it, so a new worker
//! does not read the whole library again.

use rusqlite::params;

use super::{Result, Store};

impl Store {
    /// Stores the Plex library index: `meta` and one JSON row per item.
    /// `whole` replaces what was stored; otherwise the rows are added to it
    /// (an incremental refresh). Rows are written as they come, never
    /// gathered first; a row that cannot be read undoes the whole save.
    pub(crate) fn save_index(
        &self,
        meta: &str,
        rows: impl Iterator<Item = Result<(String, String)>>,
        whole: bool,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction()?;
        if whole {
            tx.execute("DELETE FROM plex_index", [])?;
        }
        {
            let mut stmt = tx.prepare("INSERT OR REPLACE INTO plex_index (rating_key, item) VALUES (?1, ?2)")?;
            for row in rows {
                let (rk, item) = row?;
                stmt.execute(params![rk, item])?;
            }
        }
        tx.execute(
            "INSERT INTO kv (key, value) VALUES (?2, ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![meta, super::kv::PLEX_INDEX_META],
        )?;
        tx.commit()?;
        if whole {
            // The whole index is the largest write the queue file sees
            // (its log reached 190 MB at a million items), and SQLite
            // keeps a log file at its largest size until told otherwise.
            if let Err(e) = self.truncate_log() {
                tracing::debug!("the queue's log was not emptied after the index was stored: {e}");
            }
        }
        Ok(())
    }

    /// The stored index's meta, if an index is stored.
    pub(crate) fn index_meta(&self) -> Result<Option<String>> {
        self.get_kv(super::kv::PLEX_INDEX_META)
    }

    /// Hands each stored index row to `row` as it is read, until it returns
    /// false; whether every row was taken.
    pub(crate) fn each_index_row(&self, mut row: impl FnMut(&str) -> bool) -> Result<bool> {
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
    pub(crate) fn drop_index(&self) -> Result<()> {
        self.exec("DELETE FROM kv WHERE key = ?1", [super::kv::PLEX_INDEX_META])?;
        self.exec("DELETE FROM plex_index", [])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn storing_the_whole_index_leaves_no_large_log_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let store = Store::open(&path).unwrap();
        let padding = "x".repeat(200);
        let rows = (0..20_000).map(|i| Ok((i.to_string(), format!("{{\"rating_key\":\"{i}\",\"p\":\"{padding}\"}}"))));
        store.save_index("{}", rows, true).unwrap();
        let log = std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
        assert_eq!(log, 0, "the log holds the index until a checkpoint");
        assert!(store.each_index_row(|_| true).unwrap());
        assert_eq!(store.index_meta().unwrap().as_deref(), Some("{}"));
    }
}
