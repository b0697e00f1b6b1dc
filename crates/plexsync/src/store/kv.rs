//! Small values kept between processes, and every key in one place.

use rusqlite::{params, OptionalExtension};

use super::{Result, Store};

/// Until when the breaker holds the queue (ms), `0` when closed.
pub(crate) const BREAKER_UNTIL: &str = "plex_breaker_until";
/// Probes that failed in a row, for the breaker's growing delay.
pub(crate) const BREAKER_FAILURES: &str = "plex_breaker_failures";
/// When the current Plex outage began (ms), `0` when Plex answers.
pub const OUTAGE_SINCE: &str = "plex_outage_since";
/// When change capture last succeeded (ms): Stash answers.
pub(crate) const LAST_CAPTURE: &str = "last_capture_ms";
/// When a delivery last succeeded (ms).
pub(crate) const LAST_SYNC: &str = "last_sync_ms";
/// When the daemon last queued a reconcile (ms).
pub(crate) const LAST_RECONCILE: &str = "last_reconcile_ms";
/// Set by hooks: the worker looks for unreported changes at its next turn.
pub(crate) const CAPTURE_SOON: &str = "capture_soon";
/// The newest session cookie Stash gave the plugin.
pub const STASH_SESSION: &str = "stash_session";
/// Change capture's cursors (Stash's own time text) and when the wide
/// look last ran (ms).
pub(crate) const WATERMARK_NARROW: &str = "stash_watermark";
pub(crate) const WATERMARK_WIDE: &str = "stash_watermark_wide";
pub(crate) const WATERMARK_WIDE_AT: &str = "stash_watermark_wide_at";
/// What each look last learnt of its window (JSON): see `capture.rs`.
pub(crate) const WATERMARK_NARROW_PROBE: &str = "stash_watermark_probe";
pub(crate) const WATERMARK_WIDE_PROBE: &str = "stash_watermark_wide_probe";
/// What the stored Plex library index is for (server, libraries, age).
pub(crate) const PLEX_INDEX_META: &str = "plex_index_meta";

/// The last damaged queue file PlexSync moved aside (JSON, `Recovered`).
pub(crate) const QUEUE_RECOVERED: &str = "queue_recovered";
/// `1` until the worker has asked for the reconcile a fresh queue needs.
pub(crate) const RECOVERY_RECONCILE: &str = "recovery_reconcile";

/// When a worker wrote to the queue after a full disk or a lock (ms).
pub(crate) const STORE_WRITTEN_AT: &str = "store_written_at";

/// The metadata provider's secret path segment, made at its first start.
pub(crate) const PROVIDER_SECRET: &str = "provider_secret";
/// The address the daemon last listened on, for `plexsync provider-url`
/// (the daemon may listen elsewhere than `daemonListen` says: `--listen`).
pub(crate) const DAEMON_LISTEN: &str = "daemon_listen";

/// When a partial scan of `folder` in `section` was last asked for (ms).
pub(crate) fn scan_asked(section: &str, folder: &str) -> String {
    format!("scan:{section}:{folder}")
}

impl Store {
    pub fn get_kv(&self, key: &str) -> Result<Option<String>> {
        Ok(self.one("SELECT value FROM kv WHERE key = ?1", params![key], |r| r.get(0)).optional()?)
    }

    /// A number kept in the key-value table (times in ms, counters); 0 when
    /// absent or unreadable.
    pub(crate) fn kv_number(&self, key: &str) -> Result<i64> {
        Ok(self.get_kv(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    pub(crate) fn set_kv(&self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}
