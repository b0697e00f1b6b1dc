//! Dead letters: rows given up on, kept until a person retries or purges
//! them (nothing fails silently).

use rusqlite::params;

use super::{now_ms, Result, Store};

impl Store {
    /// Dead letters back into the queue (all, or of one class), due now
    /// with fresh attempts; returns how many.
    pub(crate) fn retry_dead(&self, class: Option<&str>) -> Result<usize> {
        Ok(self.exec(
            "UPDATE queue SET state = 'pending', attempts = 0, next_due = ?2, enqueued_at = ?2
             WHERE state = 'dead' AND (?1 IS NULL OR error_class = ?1)",
            params![class, now_ms()],
        )?)
    }

    /// Deletes dead letters (all, or of one class); returns how many.
    pub(crate) fn purge_dead(&self, class: Option<&str>) -> Result<usize> {
        Ok(self.exec("DELETE FROM queue WHERE state = 'dead' AND (?1 IS NULL OR error_class = ?1)", params![class])?)
    }
}
