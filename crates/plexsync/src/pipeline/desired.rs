//! The mapping table: what each Plex field should hold for a Stash scene,
//! and the edit that gets Plex there.
//!
//! | Plex field                    | from Stash                          | `syncFields` name |
//! |-------------------------------|-------------------------------------|-------------------|
//! | title                         | title (file name when empty)        | title             |
//! | summary                       | details                             | summary           |
//! | studio                        | studio.name                         | studio            |
//! | originallyAvailableAt, year   | date                                | date              |
//! | genres                        | tags[].name                         | genres            |
//! | actors (roles)                | performers[].name (+ image_path with `actorImages`) | actors |
//! | directors                     | director                            | directors         |
//! | collections                   | the agent's collection preferences (site, studio, groups, performers, rating, organized, tags) | collection |
//! | tagline                       | per `taglineSource`: code, first URL, director | tagline |
//! | poster                        | paths.screenshot                    | poster            |
//! | background (art)              | paths.screenshot                    | background        |
//! | contentRating                 | the `contentRating` setting (`XXX`) | contentRating     |
//! | rating (critic)               | rating100 / 10                      | rating            |
//! | user rating (`/:/rate`)       | rating100 / 10, with `SaveUserRatings` | userRating     |
//!
//! Titles, genres and collections follow StashPlexAgent's preferences
//! ([`library`]). Every field written is locked in Plex so agents leave it
//! alone; a field dropped from `syncFields` is unlocked, never cleared.

use sha2::{Digest, Sha256};

use crate::clients::plex::PlexItem;
use crate::clients::stash::Scene;
use crate::config::{Field, Settings, TaglineSource};
use crate::pipeline::library::{self, Managed};
use crate::pipeline::sanitize;

/// A tag entry: name, and for actors an optional photo URL.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct TagValue {
    pub name: String,
    pub thumb: Option<String>,
    /// For actors, the Stash performer (the provider serves the photo by
    /// id). Not part of the value: stored hashes do not change with it.
    #[serde(skip)]
    pub performer: Option<String>,
}

/// The value one field should have.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) enum Value {
    /// Plex scalar fields (name, value); an empty value clears.
    Scalars(Vec<(&'static str, String)>),
    /// A tag field (`genre`, `actor`, …) and its whole list.
    Tags(&'static str, Vec<TagValue>),
    /// An image from Stash (URL on the Stash server), or none.
    Image(Option<String>),
    /// The token's user's rating (`/:/rate`), or none to clear it.
    Rate(Option<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Desired {
    pub field: Field,
    pub value: Value,
}

impl Desired {
    /// Stable hash of the value, stored to detect changes.
    pub(crate) fn hash(&self) -> String {
        let json = serde_json::to_vec(&self.value).expect("values serialize");
        hex::encode(&Sha256::digest(&json)[..12])
    }
}

/// Plex names a field occupies, for locking and unlocking.
pub(crate) fn plex_names(field: Field) -> &'static [&'static str] {
    match field {
        Field::Title => &["title"],
        Field::Summary => &["summary"],
        Field::Studio => &["studio"],
        Field::Date => &["originallyAvailableAt", "year"],
        Field::Genres => &["genre"],
        Field::Actors => &["actor"],
        Field::Directors => &["director"],
        Field::Collection => &["collection"],
        Field::Tagline => &["tagline"],
        Field::Poster => &["thumb"],
        Field::Background => &["art"],
        Field::ContentRating => &["contentRating"],
        Field::Rating => &["rating"],
        // A user's own rating has no lock.
        Field::UserRating => &[],
    }
}

pub(crate) fn scene_title(scene: &Scene) -> String {
    match scene.title.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => t.to_string(),
        // Stash shows the file name when a scene has no title; so do we.
        _ => scene
            .files
            .first()
            .map(|f| f.basename.rsplit_once('.').map_or(f.basename.as_str(), |(stem, _)| stem).to_string())
            .unwrap_or_default(),
    }
}

fn tags(kind: &'static str, names: Vec<String>) -> Value {
    Value::Tags(kind, names.into_iter().map(|name| TagValue { name, thumb: None, performer: None }).collect())
}

/// What the sanitizer did to a scene's values: `dropped` values (a warning
/// each, naming scene and field) and `changed` ones (shown at debug level
/// and by `explain`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct Report {
    pub dropped: Vec<String>,
    pub changed: Vec<String>,
}

impl Report {
    fn note<T>(&mut self, scene: &Scene, field: Field, clean: sanitize::Clean<T>) -> T {
        for n in clean.notes {
            self.changed.push(format!("scene {}: {}: {n}", scene.id, field.name()));
        }
        clean.value
    }

    fn drop(&mut self, scene: &Scene, field: Field, why: String) {
        self.dropped.push(format!("scene {}: {} dropped: {why}", scene.id, field.name()));
    }
}

/// Computes the desired value of every owned field, recording in `report`
/// what the sanitizer changed or dropped.
pub(crate) fn desired(scene: &Scene, settings: &Settings, report: &mut Report) -> Vec<Desired> {
    let mut out = Vec::new();
    for field in settings.fields.iter().copied() {
        let mut line = |s: &str| report.note(scene, field, sanitize::one_line(s, sanitize::ONE_LINE_MAX));
        let prefs = &settings.agent;
        let value = match field {
            Field::Title if prefs.formatted_title => {
                Value::Scalars(vec![("title", line(&library::formatted_title(scene, prefs, &scene_title(scene))))])
            }
            Field::Title => Value::Scalars(vec![("title", line(&scene_title(scene)))]),
            Field::ContentRating if prefs.content_rating.is_empty() => continue,
            Field::ContentRating => Value::Scalars(vec![("contentRating", line(&prefs.content_rating))]),
            Field::Rating => Value::Scalars(vec![("rating", library::ten_point(scene.rating100).unwrap_or_default())]),
            Field::UserRating if !prefs.user_ratings => continue,
            Field::UserRating => Value::Rate(library::ten_point(scene.rating100)),
            Field::Studio => {
                Value::Scalars(vec![("studio", scene.studio.as_ref().map(|s| line(&s.name)).unwrap_or_default())])
            }
            Field::Tagline => {
                let raw = match settings.tagline {
                    TaglineSource::None => continue,
                    TaglineSource::Code => scene.code.clone(),
                    TaglineSource::Url => scene.urls.first().cloned(),
                    TaglineSource::Director => scene.director.clone(),
                };
                Value::Scalars(vec![("tagline", line(raw.as_deref().unwrap_or("")))])
            }
            Field::Summary => {
                let clean = sanitize::multi_line(scene.details.as_deref().unwrap_or(""), sanitize::MULTI_LINE_MAX);
                Value::Scalars(vec![("summary", report.note(scene, field, clean))])
            }
            Field::Date => {
                let (date, year) = match scene.date.as_deref().filter(|d| !d.trim().is_empty()).map(sanitize::date) {
                    Some(Ok(d)) => (d.date.unwrap_or_default(), d.year.to_string()),
                    Some(Err(e)) => {
                        report.drop(scene, field, e);
                        (String::new(), String::new())
                    }
                    None => (String::new(), String::new()),
                };
                Value::Scalars(vec![("originallyAvailableAt", date), ("year", year)])
            }
            Field::Genres => {
                let names = sanitize::name_list(library::genres(scene, prefs), sanitize::LIST_MAX);
                tags("genre", report.note(scene, field, names))
            }
            Field::Actors => {
                let names = sanitize::name_list(scene.performers.iter().map(|p| p.name.as_str()), sanitize::LIST_MAX);
                let names = report.note(scene, field, names);
                let mut list = Vec::new();
                for name in names {
                    let performer = scene
                        .performers
                        .iter()
                        .find(|p| sanitize::one_line(&p.name, sanitize::ONE_LINE_MAX).value == name);
                    let photo = performer
                        .filter(|_| settings.actor_images)
                        .and_then(|p| p.image_path.as_deref())
                        .filter(|u| !is_stand_in(u));
                    let thumb = match photo.map(sanitize::url) {
                        Some(Ok(u)) => Some(u),
                        Some(Err(e)) => {
                            report.drop(scene, field, format!("photo of {name}: {e}"));
                            None
                        }
                        None => None,
                    };
                    list.push(TagValue { name, thumb, performer: performer.map(|p| p.id.clone()) });
                }
                Value::Tags("actor", list)
            }
            Field::Directors => {
                let raw = scene.director.as_deref().unwrap_or("");
                let names = sanitize::name_list(raw.split(','), sanitize::LIST_MAX);
                tags("director", report.note(scene, field, names))
            }
            Field::Collection => {
                let names = library::collections(scene, prefs);
                let names = sanitize::name_list(names.iter().map(String::as_str), sanitize::LIST_MAX);
                tags("collection", report.note(scene, field, names))
            }
            Field::Poster | Field::Background => Value::Image(scene.paths.screenshot.clone().filter(|s| !s.is_empty())),
        };
        out.push(Desired { field, value });
    }
    out
}

/// Whether a performer's image URL is Stash's stand-in for one without a
/// photo (`…/image?t=…&default=true`): not a photo of that person.
fn is_stand_in(image_url: &str) -> bool {
    url::Url::parse(image_url).is_ok_and(|u| u.query_pairs().any(|(k, v)| k == "default" && v == "true"))
}

/// Whether Plex's value of `d` is a person's edit (for `preservePlexEdits`):
/// Plex Web locks a field a person edits, while an agent's values and the
/// frame Plex extracts for a poster stay unlocked (items are never empty,
/// so emptiness says nothing). A lock of ours (`ours`: we wrote the field to
/// this item before) is not a person's.
pub(crate) fn person_edited(d: &Desired, item: &PlexItem, ours: bool) -> bool {
    !ours && locked_in_plex(d, item)
}

/// The metadata provider's identifier (Plex requires the `custom.` part);
/// its guids are `<identifier>://movie/<scene id>`.
pub(crate) const PROVIDER_IDENTIFIER: &str = "tv.plex.agents.custom.plexsync";

/// Whether StashPlexAgent, the legacy agent PlexSync replaces, matched and
/// wrote the item (its guids are `com.plexapp.agents.stashplexagent://…`).
pub(crate) fn written_by_legacy_agent(item: &PlexItem) -> bool {
    item.guid.as_deref().is_some_and(|g| g.starts_with("com.plexapp.agents.stashplexagent://"))
}

/// Whether Plex filled the item from PlexSync's metadata provider: its
/// values are the scene's already, and only what differs is sent.
pub(crate) fn pulled_from_provider(item: &PlexItem) -> bool {
    item.guid.as_deref().and_then(|g| g.strip_prefix(PROVIDER_IDENTIFIER)).is_some_and(|r| r.starts_with("://"))
}

/// Whether Plex shows `d`'s field locked (by us or by a person).
fn locked_in_plex(d: &Desired, item: &PlexItem) -> bool {
    plex_names(d.field).iter().any(|name| item.is_locked(name))
}

/// Whether Plex's current value differs from `d` (for reconcile). Of the
/// collections, only those PlexSync manages (`managed`) are compared.
pub(crate) fn differs(d: &Desired, item: &PlexItem, managed: &Managed) -> bool {
    let current = |name: &str| -> String {
        match name {
            "title" => item.title.clone(),
            "summary" => item.summary.clone(),
            "studio" => item.studio.clone(),
            "tagline" => item.tagline.clone(),
            "contentRating" => item.content_rating.clone(),
            "rating" => item.rating.and_then(library::ten_point_of_plex),
            "originallyAvailableAt" => item.originally_available_at.clone(),
            "year" => item.year.map(|y| y.to_string()),
            _ => None,
        }
        .unwrap_or_default()
    };
    match &d.value {
        Value::Scalars(values) => values.iter().any(|(name, value)| current(name) != *value),
        Value::Tags(kind, list) => {
            let have: Vec<String> = item
                .tags(kind)
                .iter()
                .filter(|t| *kind != "collection" || managed.owns(&t.tag))
                .map(|t| t.tag.to_lowercase())
                .collect();
            let want: Vec<String> = list.iter().map(|t| t.name.to_lowercase()).collect();
            have.len() != want.len() || want.iter().any(|w| !have.contains(w))
        }
        // Plex shows an extracted frame or an agent's image until one is
        // uploaded; ours is locked when uploaded.
        Value::Image(url) => url.is_some() && !locked_in_plex(d, item),
        Value::Rate(want) => {
            let have = item.user_rating.and_then(library::ten_point_of_plex);
            have != *want
        }
    }
}

/// Query parameters of the one edit that writes `changes` (scalars and
/// tags; images and ratings are sent separately) and unlocks `released`
/// fields. An indexed list may replace the field or add to it (real servers
/// are unsettled), so the tags `item` holds (it was read) and not wanted
/// any more are also removed explicitly, which an empty list needs anyway.
/// A collection PlexSync does not manage (`managed`) is a person's: it is
/// sent along (a list that replaces would drop it) and never removed.
pub(crate) fn edit_params(
    changes: &[&Desired],
    released: &[Field],
    item: &PlexItem,
    managed: &Managed,
) -> Vec<(String, String)> {
    let mut params = Vec::new();
    for d in changes {
        match &d.value {
            Value::Scalars(values) => {
                for (name, value) in values {
                    params.push((format!("{name}.value"), value.clone()));
                    params.push((format!("{name}.locked"), "1".into()));
                }
            }
            Value::Tags(kind, list) => {
                let ours = |name: &str| *kind != "collection" || managed.owns(name);
                let theirs = item
                    .tags(kind)
                    .iter()
                    .filter(|t| !ours(&t.tag) && !list.iter().any(|w| w.name.eq_ignore_ascii_case(&t.tag)))
                    .map(|t| TagValue { name: t.tag.clone(), thumb: None, performer: None });
                for (i, tag) in list.iter().cloned().chain(theirs).enumerate() {
                    params.push((format!("{kind}[{i}].tag.tag"), tag.name.clone()));
                    if let Some(thumb) = &tag.thumb {
                        params.push((format!("{kind}[{i}].tag.thumb"), thumb.clone()));
                    }
                }
                let stale: Vec<String> = item
                    .tags(kind)
                    .iter()
                    .filter(|t| ours(&t.tag) && !list.iter().any(|w| w.name.eq_ignore_ascii_case(&t.tag)))
                    // Each name is encoded before the comma join (so a comma in a
                    // name survives); the URL library encodes the whole again.
                    .map(|t| {
                        percent_encoding::utf8_percent_encode(&t.tag, percent_encoding::NON_ALPHANUMERIC).to_string()
                    })
                    .collect();
                if !stale.is_empty() {
                    params.push((format!("{kind}[].tag.tag-"), stale.join(",")));
                }
                params.push((format!("{kind}.locked"), "1".into()));
            }
            Value::Image(_) => {
                for name in plex_names(d.field) {
                    params.push((format!("{name}.locked"), "1".into()));
                }
            }
            Value::Rate(_) => {}
        }
    }
    for field in released {
        for name in plex_names(*field) {
            params.push((format!("{name}.locked"), "0".into()));
        }
    }
    params
}

/// `d` made smaller for a request a proxy refused for its size: tag photos
/// dropped first, then half the tags, or half of the longest text; `None`
/// when nothing is left to take away.
pub(crate) fn shrunk(d: &Desired) -> Option<Desired> {
    let value = match &d.value {
        Value::Tags(kind, list) if list.iter().any(|t| t.thumb.is_some()) => {
            Value::Tags(kind, list.iter().map(|t| TagValue { thumb: None, ..t.clone() }).collect())
        }
        Value::Tags(kind, list) if list.len() > 1 => Value::Tags(kind, list[..list.len() / 2].to_vec()),
        Value::Scalars(values) => {
            let (longest, _) = values.iter().enumerate().max_by_key(|(_, (_, v))| v.chars().count())?;
            let mut values = values.clone();
            let text = &mut values[longest].1;
            let keep = text.chars().count() / 2;
            if keep == 0 {
                return None;
            }
            *text = crate::pipeline::sanitize::cut(text, keep);
            Value::Scalars(values)
        }
        _ => return None,
    };
    Some(Desired { field: d.field, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stashs_stand_in_performer_image_is_not_a_photo() {
        assert!(is_stand_in("http://stash:9999/performer/3/image?t=1700000000&default=true"));
        assert!(!is_stand_in("http://stash:9999/performer/3/image?t=1700000000"));
        assert!(!is_stand_in("not a url"));
    }
}
