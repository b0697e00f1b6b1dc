//! Writing to Plex: the fields that changed since the last delivery, in
//! edits that fit a request line, the collections PlexSync manages, and
//! the record of what was written.

use crate::clients::plex::{ImageKind, PlexClient, PlexItem, RatingKey};
use crate::clients::stash::Scene;
use crate::config::{Field, Settings};
use crate::error::{Error, ErrorClass};
use crate::pipeline::desired::{self, Desired, Value};
use crate::pipeline::library::Managed;
use crate::pipeline::matching::MatchedItem;
use crate::pipeline::picture;
use crate::store::{now_ms, Closing, Store, SyncRecord};

use super::delivery::{Outcome, Pipeline};
use super::images::{Images, ADOPTED_SUFFIX, CONTENT_SUFFIX, GALLERY_IMAGES, UNSHOWN_SUFFIX};

/// The longest edit request line sent: reverse proxies refuse longer ones
/// (nginx: 8 KB by default; others 4–16 KB), so an edit is split below it.
const MAX_REQUEST_LINE: usize = 7 * 1024;

/// Part of an edit that goes whole into one request: what it is for, and
/// its query parameters.
type Unit<T> = (T, Vec<(String, String)>);

/// `units` packed in order into as few batches as `room` (the bytes a
/// request line has left for them) allows; a unit that does not fit alone
/// is a batch of its own.
fn batches<T>(units: Vec<Unit<T>>, room: usize) -> Vec<Vec<Unit<T>>> {
    let mut out: Vec<Vec<Unit<T>>> = Vec::new();
    let mut used = 0;
    for unit in units {
        let len: usize = unit.1.iter().map(pair_len).sum();
        match out.last_mut() {
            Some(last) if used + len <= room => {
                used += len;
                last.push(unit);
            }
            _ => {
                used = len;
                out.push(vec![unit]);
            }
        }
    }
    out
}

/// What a query pair adds to a URL's length: `&key=value`, form-encoded
/// as the URL library encodes it.
fn pair_len((key, value): &(String, String)) -> usize {
    let encoded = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).map(str::len).sum::<usize>();
    encoded(key) + encoded(value) + 2
}

/// The performers, studios (and parent) and tags a scene shows, by kind.
fn shown_objects(scene: &Scene) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    out.extend(scene.performers.iter().map(|p| ("performer", p.id.clone())));
    out.extend(scene.tags.iter().map(|t| ("tag", t.id.clone())));
    if let Some(studio) = &scene.studio {
        out.push(("studio", studio.id.clone()));
        out.extend(studio.parent_studio.iter().map(|p| ("studio", p.id.clone())));
    }
    out
}

/// One Plex item a scene is delivered to, and what was last written there.
struct Target<'a> {
    pub(super) rating_key: &'a str,
    pub(super) section: &'a str,
    pub(super) previous: std::collections::BTreeMap<String, String>,
}

/// What one delivery writes: the changed fields, the fields no longer
/// owned (unlocked), the images whose content is new, and the image fields
/// locked by an earlier upload.
#[derive(Clone, Copy)]
struct Plan<'a> {
    pub(super) changes: &'a [&'a Desired],
    pub(super) released: &'a [Field],
    pub(super) images: &'a std::collections::HashMap<Field, picture::Shown>,
    pub(super) locked: &'a [Field],
}

/// The item as read before the write, and which of its collections
/// PlexSync manages.
#[derive(Clone, Copy)]
pub(super) struct Held<'a> {
    pub(super) item: &'a PlexItem,
    pub(super) managed: &'a Managed,
}

/// Record key of the collection names last written to an item (a JSON
/// list), so a collection PlexSync no longer makes is removed and a
/// person's own is not.
const COLLECTION_NAMES: &str = "collection.names";

/// Record key of the Plex URL added to the scene in Stash (`AddPlexURL`).
const PLEX_URL: &str = "plexUrl";

/// Which collections on an item PlexSync manages, from what was recorded
/// at the last write there.
pub(crate) fn managed_collections(
    scene: &Scene,
    settings: &Settings,
    previous: &std::collections::BTreeMap<String, String>,
) -> Managed {
    let written = previous.get(COLLECTION_NAMES).and_then(|j| serde_json::from_str::<Vec<String>>(j).ok());
    let wrote_before = previous.contains_key(Field::Collection.name());
    Managed::new(scene, &settings.agent, written, wrote_before)
}

impl Pipeline {
    /// Writes the scene's owned fields (`only` those, when given) into
    /// every item that holds one of its files.
    pub(super) async fn push(
        &self,
        queue: &Store,
        scene: &Scene,
        attempts: i64,
        only: Option<&[Field]>,
    ) -> Result<(Outcome, Closing), Error> {
        self.plex()?;
        let (wanted, report) = self.wanted(scene, only);
        for w in &report.dropped {
            tracing::warn!("{w}");
        }
        for c in &report.changed {
            tracing::debug!("sanitized: {c}");
        }
        self.tally(|s| s.warnings += report.dropped.len());

        let mut images = Images::default();
        let (mut fields, mut wrote) = (0, false);
        // An item found to hold none of the scene's files when read before
        // its write (the index was stale: renamed, rebuilt, a key reused)
        // is re-indexed, and the scene is matched once more.
        let mut rounds = 0;
        // The record of the item just written, saved before the next item
        // is tried, or with the closing writes after the last.
        let mut last: Option<SyncRecord> = None;
        let targets = 'matched: loop {
            rounds += 1;
            let records = queue.records(&scene.id)?;
            let recorded: Vec<String> = records.iter().map(|r| r.rating_key.clone()).collect();
            let targets = self.targets(queue, scene, &recorded, attempts).await?;
            for MatchedItem { rating_key: rk, section } in &targets {
                if let Some(done) = last.take() {
                    queue.save_record(&scene.id, &done)?;
                }
                let previous = records.iter().find(|r| &r.rating_key == rk).map(|r| r.field_hashes.clone());
                let item = Target { rating_key: rk, section, previous: previous.unwrap_or_default() };
                match self.push_item(queue, scene, &wanted, item, &mut images).await? {
                    Some((n, any, record)) => {
                        fields += n;
                        wrote |= any;
                        last = record;
                    }
                    None if rounds < 2 => continue 'matched,
                    None => {
                        return Err(Error::new(
                            ErrorClass::NotInPlex,
                            format!("Plex item {rk} no longer holds the scene's file, and no other item does yet"),
                        ))
                    }
                }
            }
            break targets;
        };
        let keys: Vec<String> = targets.into_iter().map(|i| i.rating_key).collect();
        let outcome = if wrote { Outcome::Synced { rating_key: keys.join(","), fields } } else { Outcome::Unchanged };
        let closing = Closing { scene_id: scene.id.clone(), record: last, keep: keys, shows: shown_objects(scene) };
        Ok((outcome, closing))
    }

    /// Delivers the scene to one of its items: only the fields whose value
    /// changed since the last write there. Before anything is written the
    /// item is read, and nothing is written unless it holds one of the
    /// scene's files: the index may be minutes old, and ratingKeys are
    /// handed out again after deletions (the read also gives the tags to
    /// remove, whether Plex's tag edits replace or add, and the locks
    /// `preservePlexEdits` looks at). Returns (fields written, anything
    /// sent, the item's record when it is left to the caller to save), or
    /// `None` when the item holds none of the scene's files.
    async fn push_item(
        &self,
        queue: &Store,
        scene: &Scene,
        wanted: &[Desired],
        target: Target<'_>,
        images: &mut Images,
    ) -> Result<Option<(usize, bool, Option<SyncRecord>)>, Error> {
        let Target { rating_key: rk, section, previous } = target;
        let (changes, released) = self.pending(wanted, &previous);
        let writes = !changes.is_empty() || !released.is_empty();
        let item = if writes { self.read_item(rk).await? } else { PlexItem::default() };
        if writes && !self.holds_scene_file(&item, section, scene).await {
            return Ok(None);
        }
        let changes: Vec<&Desired> = changes
            .into_iter()
            .filter(|d| {
                !self.settings.preserve_plex_edits
                    || !desired::person_edited(d, &item, previous.contains_key(d.field.name()))
            })
            .collect();
        let managed = managed_collections(scene, &self.settings, &previous);
        // What StashPlexAgent or the metadata provider left on an item
        // PlexSync never wrote is kept where it equals what PlexSync would
        // write: recorded, not sent.
        let agents = desired::written_by_legacy_agent(&item);
        let pulled = agents || desired::pulled_from_provider(&item);
        let (adopted, changes): (Vec<&Desired>, Vec<&Desired>) = changes.into_iter().partition(|d| {
            pulled
                && !previous.contains_key(d.field.name())
                && !matches!(d.value, Value::Image(_))
                && !desired::differs(d, &item, &managed)
        });
        let mut checked = self.check_images(&changes, &previous, scene, images).await?;
        if agents {
            self.keep_agents_poster(&item, &previous, &mut checked).await?;
        }
        let mut changes: Vec<&Desired> = changes
            .into_iter()
            .filter(|d| !matches!(d.value, desired::Value::Image(Some(_))) || checked.upload.contains_key(&d.field))
            .collect();
        let gallery = if self.settings.agent.gallery_images && self.settings.owns(Field::Poster) {
            let (on_item, reselect) = self.upload_gallery(rk, scene, &previous).await?;
            // The cover goes up again after them, so it stays the one shown.
            for d in wanted.iter().filter(|d| reselect.contains(&d.field) && self.settings.owns(d.field)) {
                if !changes.contains(&d) && self.cover_bytes(scene, d, &mut checked).await? {
                    changes.push(d);
                }
            }
            Some(on_item)
        } else {
            None
        };
        // An image we uploaded before is locked already: a new one needs
        // only its upload.
        let locked: Vec<Field> = [Field::Poster, Field::Background]
            .into_iter()
            .filter(|f| {
                previous.contains_key(&format!("{}{CONTENT_SUFFIX}", f.name()))
                    && !previous.contains_key(&format!("{}{ADOPTED_SUFFIX}", f.name()))
            })
            .collect();
        let plan = Plan { changes: &changes, released: &released, images: &checked.upload, locked: &locked };
        let held = Held { item: &item, managed: &managed };
        let mut written = match self.write(section, rk, &plan, held, scene).await {
            Err(e) if e.class == ErrorClass::NotInPlex => return Err(self.item_gone(rk).await),
            other => other?,
        };
        let mut hashes = previous;
        hashes.retain(|name, _| {
            name == PLEX_URL
                || Field::parse(name.split('.').next().unwrap_or(name)).is_some_and(|f| self.settings.owns(f))
        });
        written.extend(adopted.iter().map(|d| (d.field, d.hash())));
        for d in changes.iter().chain(&adopted) {
            if let Some(hash) = written.remove(&d.field) {
                hashes.insert(d.field.name().to_string(), hash);
                if let Value::Tags("collection", list) = &d.value {
                    let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
                    hashes.insert(COLLECTION_NAMES.into(), serde_json::json!(names).to_string());
                }
            }
        }
        hashes.extend(checked.record);
        if let Some(on_item) = gallery {
            hashes.insert(GALLERY_IMAGES.into(), serde_json::json!(on_item).to_string());
        }
        for d in wanted.iter().filter(|d| checked.adopted.contains(&d.field)) {
            hashes.insert(d.field.name().to_string(), d.hash());
            hashes.insert(format!("{}{ADOPTED_SUFFIX}", d.field.name()), "1".into());
        }
        for d in changes.iter().filter(|d| checked.upload.contains_key(&d.field)) {
            // Uploaded, so locked now.
            hashes.remove(&format!("{}{ADOPTED_SUFFIX}", d.field.name()));
            hashes.remove(&format!("{}{UNSHOWN_SUFFIX}", d.field.name()));
        }
        let record = SyncRecord {
            plex_server: self.plex_server(),
            rating_key: rk.to_string(),
            section: section.to_string(),
            field_hashes: hashes,
            stash_updated_at: scene.updated_at.clone(),
            synced_at: now_ms(),
        };
        let sent = !changes.is_empty() || !released.is_empty();
        if self.settings.agent.add_plex_url && !record.field_hashes.contains_key(PLEX_URL) {
            queue.save_record(&scene.id, &record)?;
            self.add_plex_url(queue, scene, record).await?;
            return Ok(Some((changes.len(), sent, None)));
        }
        Ok(Some((changes.len(), sent, Some(record))))
    }

    /// The values PlexSync writes for the scene (`only` those fields, when
    /// given), and what sanitizing dropped or changed on the way.
    pub(super) fn wanted(&self, scene: &Scene, only: Option<&[Field]>) -> (Vec<Desired>, desired::Report) {
        let mut report = desired::Report::default();
        let mut wanted = desired::desired(scene, &self.settings, &mut report);
        if let Some(only) = only {
            wanted.retain(|d| only.contains(&d.field));
        }
        (wanted, report)
    }

    /// What an item last written with the hashes `previous` lacks: the
    /// values that changed, and the fields no longer owned whose locks are
    /// to be released.
    pub(super) fn pending<'a>(
        &self,
        wanted: &'a [Desired],
        previous: &std::collections::BTreeMap<String, String>,
    ) -> (Vec<&'a Desired>, Vec<Field>) {
        let changes = wanted.iter().filter(|d| previous.get(d.field.name()) != Some(&d.hash())).collect();
        let released =
            previous.keys().filter_map(|name| Field::parse(name)).filter(|f| !self.settings.owns(*f)).collect();
        (changes, released)
    }

    /// `AddPlexURL`: the item's `plex/library/metadata/<ratingKey>` on the
    /// scene in Stash (what the old plugin's refresh and other tools read),
    /// once per item: a URL a person removed is not added again. The write
    /// fires Stash's update hook, which the plugin knows as ours, and moves
    /// the scene's `updated_at`, which is marked as taken care of so change
    /// capture does not deliver the scene again for it.
    async fn add_plex_url(&self, queue: &Store, scene: &Scene, mut record: SyncRecord) -> Result<(), Error> {
        let url = format!("{}{}", crate::pipeline::legacy::PLEX_URL_PREFIX, record.rating_key);
        if !scene.urls.iter().any(|u| u.trim() == url) {
            tracing::info!("scene {}: adding {url} to its URLs in Stash (AddPlexURL)", scene.id);
            let updated_at = self.stash.add_url(&scene.id, &url).await?;
            if !updated_at.is_empty() {
                queue.mark_seen(&scene.id, &updated_at, now_ms())?;
            }
        }
        record.field_hashes.insert(PLEX_URL.into(), url);
        queue.save_record(&scene.id, &record)
    }

    /// Writes `changes` in as few edits as a proxy in front of Plex accepts
    /// (falling back to one edit per field when Plex refuses a value, and
    /// to a smaller value when a proxy refuses a request for its size),
    /// then the images. Returns the hashes of what was written; a refused
    /// field is left out and warned about.
    async fn write(
        &self,
        section: &str,
        rk: &str,
        plan: &Plan<'_>,
        held: Held<'_>,
        scene: &Scene,
    ) -> Result<std::collections::HashMap<Field, String>, Error> {
        let Plan { changes, released, images, locked } = *plan;
        let plex = self.plex()?.clone();
        let key = RatingKey::parse(rk)?;
        let mut written = std::collections::HashMap::new();
        let edits: Vec<&Desired> = changes
            .iter()
            .copied()
            .filter(|d| !(matches!(d.value, Value::Image(_)) && locked.contains(&d.field)))
            .collect();
        // One unit per field (a tag list whole: split over two requests, a
        // list that replaces would keep only its second half), and the locks
        // of released fields.
        let mut units: Vec<Unit<Option<&Desired>>> = edits
            .iter()
            .filter(|d| !matches!(d.value, Value::Rate(_)))
            .map(|d| (Some(*d), desired::edit_params(&[d], &[], held.item, held.managed)))
            .collect();
        units.push((None, desired::edit_params(&[], released, held.item, held.managed)));
        units.retain(|(_, params)| !params.is_empty());
        let room = MAX_REQUEST_LINE.saturating_sub(plex.edit_line_len(section, &key, &[]));
        for batch in batches(units, room) {
            let params: Vec<(String, String)> = batch.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
            self.tally(|s| s.plex_writes += 1);
            let refused = match plex.edit(section, &key, &params).await {
                Ok(()) => {
                    written.extend(batch.iter().filter_map(|(d, _)| d.map(|d| (d.field, d.hash()))));
                    continue;
                }
                Err(e) if e.class == ErrorClass::BadData => e,
                Err(e) => return Err(e),
            };
            let alone = batch.len() == 1;
            for (d, params) in batch {
                let first = if alone { Some(refused.clone()) } else { None };
                if let Some((field, hash)) =
                    self.edit_alone(&plex, section, &key, d, params, held, scene, first).await?
                {
                    written.insert(field, hash);
                }
            }
        }
        for d in changes {
            if let Value::Rate(rating) = &d.value {
                self.tally(|s| s.plex_writes += 1);
                plex.rate(&key, rating.as_deref()).await?;
                written.insert(d.field, d.hash());
                continue;
            }
            let Some(image) = images.get(&d.field) else { continue };
            let kind = if d.field == Field::Poster { ImageKind::Poster } else { ImageKind::Background };
            self.tally(|s| s.plex_writes += 1);
            plex.upload_image(rk, kind, image.bytes.clone(), image.kind).await?;
            written.insert(d.field, d.hash());
        }
        Ok(written)
    }

    /// One field's edit on its own (`refused`: how it was refused already,
    /// if it was sent alone). A proxy refusing it for its size gets the
    /// value smaller until it passes (recorded as written, with a warning:
    /// retrying the whole value could never pass); a value Plex refuses is
    /// skipped with a warning. Returns the field's hash when written.
    #[allow(clippy::too_many_arguments)]
    async fn edit_alone(
        &self,
        plex: &PlexClient,
        section: &str,
        key: &RatingKey,
        d: Option<&Desired>,
        mut params: Vec<(String, String)>,
        held: Held<'_>,
        scene: &Scene,
        mut refused: Option<Error>,
    ) -> Result<Option<(Field, String)>, Error> {
        let name = d.map_or("locks", |d| d.field.name());
        let mut current = d.cloned();
        loop {
            let e = match refused.take() {
                Some(e) => e,
                None => {
                    self.tally(|s| s.plex_writes += 1);
                    match plex.edit(section, key, &params).await {
                        Ok(()) => {
                            if current.as_ref() != d {
                                self.tally(|s| s.warnings += 1);
                                tracing::warn!(
                                    "scene {}: {name} was cut to fit a request the proxy in front of Plex accepts",
                                    scene.id
                                );
                            }
                            return Ok(d.map(|d| (d.field, d.hash())));
                        }
                        Err(e) if e.class == ErrorClass::BadData => e,
                        Err(e) => return Err(e),
                    }
                }
            };
            match current.as_ref().filter(|_| e.too_large()).and_then(desired::shrunk) {
                Some(smaller) => {
                    params = desired::edit_params(&[&smaller], &[], held.item, held.managed);
                    current = Some(smaller);
                }
                None => {
                    self.tally(|s| s.warnings += 1);
                    tracing::warn!("scene {}: Plex refused the {name} value; field skipped ({e})", scene.id);
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_adds_its_length_to_the_url() {
        let base = url::Url::parse("http://plex:32400/library/sections/1/all?type=1&id=7").unwrap();
        let pairs: Vec<(String, String)> = [
            ("title.value", "Café & “quotes” at 100%"),
            ("summary.value", "two\nlines / ? = + #"),
            ("tag[0].tag.tag", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut url = base.clone();
        url.query_pairs_mut().extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(url.as_str().len(), base.as_str().len() + pairs.iter().map(pair_len).sum::<usize>());
    }

    #[test]
    fn units_are_packed_in_order_within_the_room() {
        // ("k", n × "v") adds n + 4 bytes: `&k=` and the value.
        let unit = |n: usize| (n, vec![("k".to_string(), "v".repeat(n))]);
        let packed = batches(vec![unit(10), unit(12), unit(50), unit(5), unit(5)], 30);
        let sizes: Vec<Vec<usize>> = packed.iter().map(|b| b.iter().map(|(n, _)| *n).collect()).collect();
        assert_eq!(sizes, vec![vec![10, 12], vec![50], vec![5, 5]]);
    }
}
