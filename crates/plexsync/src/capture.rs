//! Change capture by `updated_at` watermark: finds scenes changed in Stash
//! that no hook reported (a hook that failed, a plugin that was disabled,
//! a database restore) and queues them. Cheap when nothing changed: one
//! small query.

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::queue::{Queue, Reason};
use crate::stash::StashClient;
use crate::sync::db;

const WATERMARK_KEY: &str = "stash_watermark";
/// Scenes already looked at within the overlap, so the overlap does not
/// queue them again.
const SEEN_KEY: &str = "stash_watermark_seen";
/// Stash keeps `updated_at` to the second: look again at the last seconds,
/// or an edit made in the same second as the last one seen is missed.
const OVERLAP_SECS: i64 = 2;

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
}

/// Queues scenes changed since the watermark and moves it; returns how many
/// were queued. The first run only sets the watermark (a full sync is the
/// `sync_all` task's job).
pub async fn capture(stash: &StashClient, queue: &Queue) -> Result<usize, Error> {
    let Some(mark) = queue.get_kv(WATERMARK_KEY).map_err(db)?.as_deref().and_then(parse) else {
        if let Some(newest) = stash.newest_update().await?.as_deref().and_then(parse) {
            let recent = stash.changed_since(&overlap_start(newest)).await?;
            remember(queue, newest, recent.into_iter().map(|(id, _)| id).collect())?;
        }
        return Ok(0);
    };
    let seen: Vec<String> =
        queue.get_kv(SEEN_KEY).map_err(db)?.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default();
    let changed = stash.changed_since(&overlap_start(mark)).await?;
    let mut newest = mark;
    let mut queued = 0;
    let mut parsed = Vec::new();
    for (id, updated) in changed {
        let Some(updated) = parse(&updated) else { continue };
        newest = newest.max(updated);
        parsed.push((id, updated));
    }
    for (id, updated) in &parsed {
        if *updated <= mark && seen.contains(id) {
            continue;
        }
        let synced_at_version =
            queue.record(id).map_err(db)?.and_then(|r| parse(&r.stash_updated_at)).is_some_and(|at| at >= *updated);
        if synced_at_version || queue.is_pending(id).map_err(db)? {
            continue;
        }
        queue.enqueue(id, Reason::Watermark).map_err(db)?;
        queued += 1;
    }
    let cutoff = newest - chrono::Duration::seconds(OVERLAP_SECS);
    remember(queue, newest, parsed.into_iter().filter(|(_, at)| *at >= cutoff).map(|(id, _)| id).collect())?;
    Ok(queued)
}

fn overlap_start(mark: DateTime<Utc>) -> String {
    (mark - chrono::Duration::seconds(OVERLAP_SECS)).to_rfc3339()
}

fn remember(queue: &Queue, mark: DateTime<Utc>, seen: Vec<String>) -> Result<(), Error> {
    queue.set_kv(WATERMARK_KEY, &mark.to_rfc3339()).map_err(db)?;
    queue.set_kv(SEEN_KEY, &serde_json::to_string(&seen).expect("ids serialize")).map_err(db)?;
    Ok(())
}
