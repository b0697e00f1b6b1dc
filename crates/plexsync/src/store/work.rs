//! Long operations a plugin task hands to the worker (Stash runs one
//! plugin task at a time, so the task returns at once).

use rusqlite::params;

use super::{Result, Store};

impl Store {
    /// Hands a long operation to the worker (a JSON request).
    pub(crate) fn push_work(&self, request: &str) -> Result<()> {
        self.exec("INSERT INTO work (request) VALUES (?1)", params![request])?;
        Ok(())
    }

    /// Takes every waiting request, oldest first.
    pub(crate) fn take_work(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("DELETE FROM work RETURNING id, request")?;
        let mut rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.sort();
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }
}
