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
//!
//! A look costs what changed, not its window (after a library-wide edit
//! the window holds every scene for an hour): each look first asks Stash
//! for the count and newest time after its cursor ([`Probe`]). The same
//! answer as last time means nothing changed; a count that grew by exactly
//! the rows newer than the last newest time means only those are read.
//! Anything else (a row committed late inside the window, a zone change)
//! reads the whole window. A look keeps its cursor while it is between one
//! and two overlaps behind the watermark, so the probe compares like with
//! like, and moves it (one whole read) once it falls further behind.

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use crate::clients::stash::StashClient;
use crate::error::Error;
use crate::ids::SceneId;
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

/// What a look last learnt of its window: Stash's count of rows after
/// `cursor`, the newest text among them, and when it asked (ms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Probe {
    cursor: String,
    count: usize,
    newest: Option<String>,
    asked_at: i64,
}

fn probe_key(look: Look) -> &'static str {
    match look {
        Look::Narrow => kv::WATERMARK_NARROW_PROBE,
        Look::Wide => kv::WATERMARK_WIDE_PROBE,
    }
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
    let last: Option<Probe> = queue.get_kv(probe_key(look))?.and_then(|v| serde_json::from_str(&v).ok());
    let cursor = match last.as_ref().filter(|p| keeps_cursor(&p.cursor, from)) {
        Some(p) => p.cursor.clone(),
        None => cursor_for(look, &mark),
    };
    let window_from = cursor_instant(&cursor).unwrap_or(from);
    let (count, newest) = stash.probe_since(&cursor).await?;
    let now = now_ms();
    let last = last.filter(|p| p.cursor == cursor && settled(p));
    let (rows, whole) = match &last {
        Some(p) if p.count == count && p.newest == newest => (Vec::new(), false),
        Some(Probe { newest: Some(before), count: before_count, .. }) => {
            let new = stash.changed_since(before).await?;
            let moved = moved_out(queue, &new, &cursor, before)?;
            if before_count + new.len() - moved == count {
                (new, false)
            } else {
                (stash.changed_since(&cursor).await?, true)
            }
        }
        _ => (stash.changed_since(&cursor).await?, true),
    };
    let mut probe = Probe { cursor: cursor.clone(), count, newest, asked_at: now };
    let objects = stash.objects_changed_since(&cursor).await?;
    let mut queued = 0;
    // The wide cursor's text lets through up to a day of earlier times;
    // only what changed after the window's instant is news.
    let after = |at: &DateTime<FixedOffset>| at.with_timezone(&Utc) > window_from;
    for (id, updated) in &rows {
        let Some(at) = parse(updated).filter(after) else { continue };
        let Some(scene) = SceneId::parse(id) else { continue };
        if taken_care_of(queue, id, at)? {
            continue;
        }
        if !queue.is_pending(id)? {
            queue.enqueue(&scene, Reason::Watermark)?;
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
    // A whole read holds every row after any later cursor: the next look
    // can start from the watermark's own cursor without reading it again.
    if whole {
        let next = cursor_for(look, &newest);
        let after_next = rows.iter().map(|(_, u)| u).filter(|u| u.as_str() > next.as_str());
        probe.count = after_next.clone().count();
        probe.newest = after_next.max().cloned();
        probe.cursor = next;
    }
    queue.set_kv(probe_key(look), &serde_json::to_string(&probe).expect("serializes"))?;
    if look == Look::Wide {
        queue.set_kv(kv::WATERMARK_WIDE_AT, &now.to_string())?;
    }
    Ok(queued)
}

/// The cursor a look starts from when it has none to keep: one overlap
/// before the watermark, in the watermark's offset (narrow) or as the
/// superset text (wide).
fn cursor_for(look: Look, mark: &DateTime<FixedOffset>) -> String {
    let from = mark.with_timezone(&Utc) - OVERLAP;
    match look {
        Look::Narrow => crate::clients::stash::format_in(from, *mark.offset()),
        Look::Wide => crate::clients::stash::superset_cursor(from),
    }
}

/// The instant a cursor's text stands for.
fn cursor_instant(cursor: &str) -> Option<DateTime<Utc>> {
    parse(cursor).map(|t| t.with_timezone(&Utc))
}

/// Whether a look keeps its cursor: between one and two overlaps behind
/// the watermark (`from` is one overlap behind it).
fn keeps_cursor(cursor: &str, from: DateTime<Utc>) -> bool {
    cursor_instant(cursor).is_some_and(|t| t <= from && t > from - OVERLAP)
}

/// Whether no edit can still share the newest second the probe saw.
fn settled(p: &Probe) -> bool {
    p.newest.as_deref().and_then(parse).is_none_or(|t| p.asked_at >= t.timestamp_millis() + SAME_SECOND)
}

/// How many of `new` (rows after `before`) were inside the window
/// (`cursor`, `before`] at the last look, as the `seen` table knows them:
/// they left it, so the window's count did not grow by them.
fn moved_out(queue: &Store, new: &[(String, String)], cursor: &str, before: &str) -> Result<usize, Error> {
    let mut moved = 0;
    for (id, _) in new {
        if queue.seen(id)?.is_some_and(|(version, _)| version.as_str() > cursor && version.as_str() <= before) {
            moved += 1;
        }
    }
    Ok(moved)
}

/// Whether the wide look is due (never made, or [`WIDE_EVERY`] ago).
pub(crate) fn wide_due(queue: &Store) -> Result<bool, Error> {
    let at = queue.kv_number(kv::WATERMARK_WIDE_AT)?;
    Ok(now_ms() - at >= crate::units::millis(WIDE_EVERY))
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

    /// A library-wide edit fills the look's window for an hour; the looks
    /// after the one that read it cost a probe, then only what changed.
    #[tokio::test]
    async fn after_a_library_wide_edit_a_look_reads_only_what_changed_since_the_last() {
        let stash = StashEmulator::start(StashState::from_library(&Library::sample(2500, 3)), StashAuth::default())
            .await
            .unwrap();
        let client = StashClient::new(&stash.url(), Default::default(), &Default::default()).unwrap();
        let (_dir, store) = crate::store::tests::store();
        assert_eq!(capture(&client, &store, Look::Narrow).await.unwrap(), 0, "the first look only sets the cursors");
        let ids: Vec<u64> = stash.with_state(|s| s.scenes.keys().copied().collect());
        for id in &ids {
            stash.update_scene(*id, |s| s.details = Some(format!("Bulk {id}")));
        }
        // Past the edit's second, so no later edit can share it.
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(capture(&client, &store, Look::Narrow).await.unwrap(), ids.len(), "the edit is read once");
        store.clear().unwrap(); // delivered

        // What a narrow look queued, and the requests it cost.
        let look = || async {
            let requests = stash.request_count();
            let queued = capture(&client, &store, Look::Narrow).await.unwrap();
            (queued, stash.request_count() - requests)
        };
        let (queued, cost) = look().await;
        assert_eq!(queued, 0);
        assert!(cost <= 2, "an unchanged window costs the probe and the objects' query, not its 3 pages: {cost}");

        stash.update_scene(ids[10], |s| s.title = Some("One More".into()));
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let (queued, cost) = look().await;
        assert_eq!(queued, 1, "the new edit is queued");
        assert!(cost <= 3, "probe, the one new row and the objects' query, not the window: {cost}");
        assert!(store.is_pending(&ids[10].to_string()).unwrap());
        assert_eq!(store.pending_count().unwrap(), 1);
    }
}
