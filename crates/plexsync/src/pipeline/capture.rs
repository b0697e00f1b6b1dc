//! Change capture by `updated_at` watermark: finds scenes changed in Stash
//! that no hook reported (auto-tag, cover generation, merges, a disabled
//! plugin, a lost hook) and queues them, and performers, studios and tags
//! changed the same way, whose scenes it queues.
//!
//! Stash stores `updated_at` as RFC 3339 text in the server's local offset,
//! to the second, and filters with a plain text comparison
//! (Stash's SQLite store). So the cursor is text too, built from a time Stash
//! returned:
//!
//! - the **narrow look** (every call) sends the newest time seen, minus
//!   [`OVERLAP`], in the offset Stash wrote that time with. Rows in the same
//!   offset compare exactly; a DST change moves the offset by at most an
//!   hour, which the overlap covers.
//! - the **wide look** (at the first call of a process and every
//!   [`WIDE_EVERY`]) keeps its own cursor and sends it in the most western
//!   offset in use, `-12:00`. Any stored time `T` in any offset from
//!   `-12:00` to `+14:00` then compares greater whenever `T` is later than
//!   the cursor, because its wall-clock text is at least the cursor's
//!   instant minus 12 hours. It catches what no narrow look can see: a
//!   server whose zone moved west by more than the overlap.
//!
//! Rows the overlap returns again are de-duplicated by scene and version
//! (the `seen` table): a version counts as taken care of only when it was
//! read or queued at least [`SAME_SECOND`] after its second, so a second
//! edit within the same second as an earlier look is queued once more.

use chrono::{DateTime, FixedOffset, Utc};

use crate::clients::stash::StashClient;
use crate::error::Error;
use crate::store::kv;
use crate::store::{now_ms, Reason, Store};

/// A DST change shifts the server's offset by up to an hour; a little more
/// covers same-second edits and a slow clock.
pub(crate) const OVERLAP: chrono::Duration = chrono::Duration::minutes(65);
/// How often the wide look runs (also at every worker start).
pub(crate) const WIDE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// A version read this long after its second cannot be followed by another
/// edit in that same second.
const SAME_SECOND: i64 = 2000;

fn parse(t: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(t).ok()
}

/// Which look to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Look {
    Narrow,
    Wide,
}

/// Queues scenes changed since the last look; returns how many were queued.
/// The first look only sets the cursors (a full sync is `sync_all`'s job).
pub(crate) async fn capture(stash: &StashClient, queue: &Store, look: Look) -> Result<usize, Error> {
    let key = match look {
        Look::Narrow => kv::WATERMARK_NARROW,
        Look::Wide => kv::WATERMARK_WIDE,
    };
    let Some(mark) = queue.get_kv(key)?.as_deref().and_then(parse) else {
        if let Some(newest) = stash.newest_update().await? {
            queue.set_kv(kv::WATERMARK_NARROW, &newest)?;
            queue.set_kv(kv::WATERMARK_WIDE, &newest)?;
        }
        return Ok(0);
    };
    let from = mark.with_timezone(&Utc) - OVERLAP;
    let cursor = match look {
        Look::Narrow => crate::clients::stash::format_in(from, *mark.offset()),
        Look::Wide => crate::clients::stash::superset_cursor(from),
    };
    let rows = stash.changed_since(&cursor).await?;
    let objects = stash.objects_changed_since(&cursor).await?;
    let mut queued = 0;
    let now = now_ms();
    // The wide cursor's text lets through up to a day of earlier times;
    // only what changed after the cursor's instant is news.
    let after = |at: &DateTime<FixedOffset>| at.with_timezone(&Utc) > from;
    for (id, updated) in &rows {
        let Some(at) = parse(updated).filter(after) else { continue };
        if taken_care_of(queue, id, at)? {
            continue;
        }
        if !queue.is_pending(id)? {
            queue.enqueue(id, Reason::Watermark)?;
            queued += 1;
        }
        queue.mark_seen(id, updated, now)?;
    }
    // A renamed, re-parented or re-imaged performer, studio or tag: its
    // scenes show it, and none of their `updated_at` moved.
    for (kind, id, updated) in &objects {
        let Some(at) = parse(updated).filter(after) else { continue };
        let key = format!("{}:{id}", kind.name());
        if taken_care_of(queue, &key, at)? {
            continue;
        }
        let object = crate::clients::stash::Related { kind: *kind, id: id.clone() };
        queued += crate::pipeline::related::enqueue_showing(stash, queue, &object).await?;
        queue.mark_seen(&key, updated, now)?;
    }
    let times = rows.iter().map(|(_, u)| u).chain(objects.iter().map(|(_, _, u)| u));
    let newest_text = times.filter_map(|u| parse(u).map(|t| (t, u))).filter(|(t, _)| *t > mark).max_by_key(|(t, _)| *t);
    let newest = newest_text.map_or(mark, |(t, _)| t);
    let newest_text = newest_text.map(|(_, u)| u.clone());
    // Keep Stash's own text of the newest time: its offset is the server's.
    if let Some(text) = newest_text {
        queue.set_kv(key, &text)?;
        if look == Look::Wide && queue.get_kv(kv::WATERMARK_NARROW)?.as_deref().and_then(parse) < Some(newest) {
            queue.set_kv(kv::WATERMARK_NARROW, &text)?;
        }
    }
    if look == Look::Wide {
        queue.set_kv(kv::WATERMARK_WIDE_AT, &now.to_string())?;
    }
    Ok(queued)
}

/// Whether the wide look is due (never made, or [`WIDE_EVERY`] ago).
pub(crate) fn wide_due(queue: &Store) -> Result<bool, Error> {
    let at = queue.kv_number(kv::WATERMARK_WIDE_AT)?;
    Ok(now_ms() - at >= WIDE_EVERY.as_millis() as i64)
}

/// Whether version `at` of the scene was already read or queued late
/// enough that no later edit can share its second.
fn taken_care_of(queue: &Store, id: &str, at: DateTime<FixedOffset>) -> Result<bool, Error> {
    let Some((version, seen_at)) = queue.seen(id)? else { return Ok(false) };
    let Some(seen_version) = parse(&version) else { return Ok(false) };
    Ok(seen_version > at || (seen_version == at && seen_at >= at.timestamp_millis() + SAME_SECOND))
}

#[cfg(test)]
mod tests {
    use super::*;
    use emulators::{Library, StashAuth, StashEmulator, StashState};

    /// A fresh install on a library edited over the last day: the wide
    /// look's text cursor lets hours of earlier edits through (Stash's zone
    /// is UTC−5, the cursor's UTC−12), and none of them is news.
    #[tokio::test]
    async fn the_wide_look_queues_only_what_changed_after_its_cursor() {
        let stash = StashEmulator::start(StashState::from_library(&Library::sample(600, 1)), StashAuth::default())
            .await
            .unwrap();
        let client = StashClient::new(&stash.url(), Default::default(), &Default::default()).unwrap();
        let (_dir, store) = crate::store::tests::store();
        assert_eq!(capture(&client, &store, Look::Wide).await.unwrap(), 0, "the first look only sets the cursors");
        let mark = parse(&store.get_kv(kv::WATERMARK_WIDE).unwrap().unwrap()).unwrap();
        let cursor = crate::clients::stash::superset_cursor(mark.with_timezone(&Utc) - OVERLAP);
        let returned = client.changed_since(&cursor).await.unwrap().len();
        let queued = capture(&client, &store, Look::Wide).await.unwrap();
        // One scene a minute: the 65 minutes of the overlap, and no more.
        assert!((60..=66).contains(&queued), "queued {queued} of the {returned} Stash returned");
        assert!(returned > 300, "the superset cursor returns hours more ({returned}): the check would see nothing");
        assert_eq!(store.pending_count().unwrap(), queued);
    }
}
