//! The Stash emulator's data: scenes with files, studios, performers, tags,
//! plugin settings, and a log of the mutations clients made.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset, SecondsFormat, SubsecRound, Utc};
use serde_json::{Map, Value};

use crate::fixtures::Library;
use crate::table::{Row, Table};

#[derive(Clone, Debug, PartialEq)]
pub struct StashFile {
    pub id: u64,
    pub path: String,
    pub size: u64,
    pub duration: f64,
    /// (type, value): `oshash`, `md5`, `phash`.
    pub fingerprints: Vec<(String, String)>,
}

impl StashFile {
    pub fn basename(&self) -> &str {
        self.path.rsplit(['/', '\\']).next().unwrap_or(&self.path)
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct StashScene {
    pub id: u64,
    pub title: Option<String>,
    pub code: Option<String>,
    pub details: Option<String>,
    pub director: Option<String>,
    pub urls: Vec<String>,
    pub date: Option<String>,
    pub rating100: Option<i32>,
    pub organized: bool,
    /// RFC 3339 text in the server's offset at the time of the write, to
    /// the second, as pkg/sqlite stores it (`2026-11-24T05:00:00-05:00`,
    /// `…Z` at offset zero): filters and sorts compare this text.
    pub created_at: String,
    pub updated_at: String,
    pub files: Vec<StashFile>,
    pub studio: Option<u64>,
    pub performers: Vec<u64>,
    pub tags: Vec<u64>,
    /// The groups (once "movies") the scene belongs to.
    pub groups: Vec<u64>,
    /// The galleries attached to the scene.
    pub galleries: Vec<u64>,
    /// (endpoint, stash_id) pairs from stash-box matches.
    pub stash_ids: Vec<(String, String)>,
    /// The cover's bytes; `None` until a scan's screenshot is generated
    /// (the screenshot URL then serves Stash's default SVG).
    pub cover: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StashStudio {
    pub id: u64,
    pub name: String,
    pub parent: Option<u64>,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StashPerformer {
    pub id: u64,
    pub name: String,
    pub disambiguation: Option<String>,
    /// The photo's bytes; `None` for Stash's default image.
    pub image: Option<Vec<u8>>,
    pub tags: Vec<u64>,
    pub updated_at: String,
}

/// A gallery and its images, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct StashGallery {
    pub id: u64,
    pub title: String,
    pub images: Vec<u64>,
}

/// An image file of a gallery.
#[derive(Clone, Debug, PartialEq)]
pub struct StashImage {
    pub id: u64,
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// A group (Stash's former "movie").
#[derive(Clone, Debug, PartialEq)]
pub struct StashGroup {
    pub id: u64,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StashTag {
    pub id: u64,
    pub name: String,
    pub updated_at: String,
}

/// Scenes, studios, performers and tags are listed by `updated_at` (text
/// order, as SQLite sorts the stored strings), ties by id.
macro_rules! by_updated_at {
    ($($t:ty),*) => {$(
        impl Row for $t {
            type Key = String;

            fn key(&self) -> String {
                self.updated_at.clone()
            }

            fn cmp_key(&self, key: &String) -> Ordering {
                self.updated_at.as_str().cmp(key)
            }
        }
    )*};
}
by_updated_at!(StashScene, StashStudio, StashPerformer, StashTag);

/// The objects other than scenes whose changes show in Plex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Performer,
    Studio,
    Tag,
}

impl ObjectKind {
    /// The prefix of the object's hook types (`Performer.Update.Post`).
    pub fn hook_prefix(self) -> &'static str {
        match self {
            Self::Performer => "Performer",
            Self::Studio => "Studio",
            Self::Tag => "Tag",
        }
    }
}

/// A mutation a client made: what real Stash would fire an
/// `Scene.Update.Post` hook for, with the fields the input named.
#[derive(Clone, Debug, PartialEq)]
pub struct MutationRecord {
    pub operation: String,
    pub scene_ids: Vec<u64>,
    pub input_fields: Vec<String>,
    pub input: Value,
}

/// The Stash server's local time zone: an offset (seconds east of UTC)
/// before the first change, then the offsets in force from each change on
/// (daylight saving, or a server restarted with another `TZ`).
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    pub initial: i32,
    pub changes: Vec<(DateTime<Utc>, i32)>,
}

impl Default for Zone {
    /// West of UTC, where a UTC cursor misses edits: a lenient default
    /// would hide that bug.
    fn default() -> Self {
        Self::fixed(-5 * 3600)
    }
}

impl Zone {
    pub fn fixed(offset_secs: i32) -> Self {
        Self { initial: offset_secs, changes: Vec::new() }
    }

    /// `before` until `at`, `after` from then on (a DST change).
    pub fn change_at(before: i32, at: DateTime<Utc>, after: i32) -> Self {
        Self { initial: before, changes: vec![(at, after)] }
    }

    pub fn offset_at(&self, t: DateTime<Utc>) -> FixedOffset {
        let secs = self.changes.iter().filter(|(at, _)| *at <= t).map(|(_, o)| *o).next_back().unwrap_or(self.initial);
        FixedOffset::east_opt(secs).expect("offset within a day")
    }

    /// `t` as Go's `time.Format(time.RFC3339)` writes it in this zone.
    pub fn format(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.offset_at(t)).to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// Everything the Stash emulator knows. The tables read as maps by id and
/// keep an index by `updated_at`, which `findScenes` and the other finders
/// page from (see [`Table`]).
#[derive(Debug, Default)]
pub struct StashState {
    pub scenes: Table<StashScene>,
    pub studios: Table<StashStudio>,
    pub performers: Table<StashPerformer>,
    pub tags: Table<StashTag>,
    pub groups: std::collections::BTreeMap<u64, StashGroup>,
    pub galleries: std::collections::BTreeMap<u64, StashGallery>,
    pub images: std::collections::BTreeMap<u64, StashImage>,
    /// `configuration.plugins`: plugin id → settings.
    pub plugins: Map<String, Value>,
    pub mutations: Vec<MutationRecord>,
    /// The server's time zone; change it to emulate DST or a restart.
    pub zone: Zone,
    next_id: u64,
    last_stamp: Option<DateTime<Utc>>,
}

impl StashState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same data with the server in `zone` (stored times keep the
    /// offset they were written with, as in Stash's database).
    pub fn in_zone(mut self, zone: Zone) -> Self {
        self.zone = zone;
        self
    }

    /// A Stash that holds every scene of `lib`.
    pub fn from_library(lib: &Library) -> Self {
        Self::from_library_in(lib, Zone::default())
    }

    /// A Stash in `zone` that holds every scene of `lib`.
    pub fn from_library_in(lib: &Library, zone: Zone) -> Self {
        let mut state = Self { zone, ..Self::new() };
        let studio_ids: Vec<u64> = lib.studios.iter().map(|s| state.add_studio(&s.name, None)).collect();
        for (i, s) in lib.studios.iter().enumerate() {
            if let Some(parent) = s.parent {
                state.studios.get_mut(&studio_ids[i]).expect("just added").parent = Some(studio_ids[parent]);
            }
        }
        let performer_ids: Vec<u64> = lib.performers.iter().map(|p| state.add_performer(p)).collect();
        let tag_ids: Vec<u64> = lib.tags.iter().map(|t| state.add_tag(t)).collect();
        // Every third performer carries a tag, and every fourth scene is
        // in a group of up to five: chosen by position, not drawn, so the
        // seeded library is the same as before they existed.
        for (i, id) in performer_ids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            if let Some(tag) = tag_ids.get(i % tag_ids.len().max(1)) {
                state.performers.get_mut(id).expect("just added").tags.push(*tag);
            }
        }
        let group_ids: Vec<u64> =
            (0..lib.scenes.len().div_ceil(20)).map(|g| state.add_group(&format!("Series {}", g + 1))).collect();
        // Scenes were added and edited over the past days, one a minute,
        // after the studios, performers and tags they show.
        let start = Utc::now().trunc_subsecs(0)
            - chrono::Duration::minutes(i64::try_from(lib.scenes.len()).unwrap_or(i64::MAX / 120) + 24 * 60);
        let made = state.zone.format(start - chrono::Duration::minutes(1));
        state.studios.for_each_mut(|s| s.updated_at = made.clone());
        state.performers.for_each_mut(|p| p.updated_at = made.clone());
        state.tags.for_each_mut(|t| t.updated_at = made.clone());
        // Built whole, then loaded at once: a million scenes in seconds.
        let mut scenes = Vec::with_capacity(lib.scenes.len());
        for (i, scene) in lib.scenes.iter().enumerate() {
            let files = scene.files.iter().map(|f| (f.stash_path.as_str(), f.size, f.duration_secs));
            let at = state.zone.format(start + chrono::Duration::minutes(i64::try_from(i).unwrap_or(i64::MAX / 120)));
            let mut s = state.new_scene(files, at);
            s.title = Some(scene.title.clone());
            s.code = scene.code.clone();
            s.details = scene.details.clone();
            s.director = scene.director.clone();
            s.urls = scene.urls.clone();
            s.date = scene.date.clone();
            s.rating100 = scene.rating100;
            s.organized = scene.organized;
            s.studio = scene.studio.map(|i| studio_ids[i]);
            s.performers = scene.performers.iter().map(|i| performer_ids[*i]).collect();
            s.tags = scene.tags.iter().map(|i| tag_ids[*i]).collect();
            if i % 4 == 0 {
                s.groups = group_ids.get(i / 20).copied().into_iter().collect();
            }
            s.cover = Some(match i {
                // Stash (v0.30+) keeps covers in formats Plex cannot decode.
                2 => AVIF_COVER.to_vec(),
                4 => JPEG_XL_COVER.to_vec(),
                _ => fixture_image(s.id),
            });
            scenes.push((s.id, s));
        }
        state.scenes = scenes.into_iter().collect();
        // As `add_scene` per scene: later stamps are no earlier than now.
        state.stamp();
        state
    }

    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Current time at Stash's precision (seconds) as stored text in the
    /// server's zone. The instant never goes backwards; the text may (a DST
    /// change), exactly as in Stash.
    pub fn stamp(&mut self) -> String {
        let now = Utc::now().trunc_subsecs(0);
        let now = self.last_stamp.map_or(now, |last| last.max(now));
        self.last_stamp = Some(now);
        self.zone.format(now)
    }

    pub fn add_studio(&mut self, name: &str, parent: Option<u64>) -> u64 {
        let id = self.next();
        let updated_at = self.stamp();
        self.studios.insert(id, StashStudio { id, name: name.into(), parent, updated_at });
        id
    }

    pub fn add_performer(&mut self, name: &str) -> u64 {
        let id = self.next();
        let updated_at = self.stamp();
        self.performers.insert(
            id,
            StashPerformer {
                id,
                name: name.into(),
                disambiguation: None,
                image: Some(fixture_image(id)),
                tags: Vec::new(),
                updated_at,
            },
        );
        id
    }

    /// A gallery of images, each (width, height) with its own bytes.
    pub fn add_gallery(&mut self, title: &str, sizes: &[(u32, u32)]) -> u64 {
        let id = self.next();
        let mut images = Vec::new();
        for (width, height) in sizes {
            let image = self.next();
            let path = format!("/data/galleries/{id}/{image}.png");
            let bytes = fixture_image(image);
            self.images.insert(image, StashImage { id: image, path, width: *width, height: *height, bytes });
            images.push(image);
        }
        self.galleries.insert(id, StashGallery { id, title: title.into(), images });
        id
    }

    pub fn add_group(&mut self, name: &str) -> u64 {
        let id = self.next();
        self.groups.insert(id, StashGroup { id, name: name.into() });
        id
    }

    pub fn add_tag(&mut self, name: &str) -> u64 {
        let id = self.next();
        let updated_at = self.stamp();
        self.tags.insert(id, StashTag { id, name: name.into(), updated_at });
        id
    }

    /// Adds a scene for `files` (path, size, duration in seconds), as a
    /// scan does: no metadata yet.
    pub fn add_scene(&mut self, files: &[(String, u64, f64)]) -> u64 {
        let now = self.stamp();
        let scene = self.new_scene(files.iter().map(|(path, size, duration)| (path.as_str(), *size, *duration)), now);
        let id = scene.id;
        self.scenes.insert(id, scene);
        id
    }

    /// A scene for `files` (path, size, duration in seconds), created and
    /// updated `at`, with the next ids; not yet in `scenes`.
    fn new_scene<'a>(&mut self, files: impl IntoIterator<Item = (&'a str, u64, f64)>, at: String) -> StashScene {
        let id = self.next();
        let files = files
            .into_iter()
            .map(|(path, size, duration)| StashFile {
                id: self.next(),
                path: path.to_string(),
                size,
                duration,
                fingerprints: vec![("oshash".into(), format!("{:016x}", fnv(path) ^ size))],
            })
            .collect();
        StashScene { id, created_at: at.clone(), updated_at: at, files, ..Default::default() }
    }

    /// Changes a scene and bumps its `updated_at`, as every Stash edit does.
    pub fn update_scene(&mut self, id: u64, f: impl FnOnce(&mut StashScene)) -> bool {
        let now = self.stamp();
        match self.scenes.get_mut(&id) {
            Some(mut scene) => {
                f(&mut scene);
                scene.updated_at = now;
                true
            }
            None => false,
        }
    }

    /// Updates a performer, studio or tag (its name, when given) and bumps
    /// its own `updated_at`; the scenes that show it keep theirs (Stash's
    /// join tables do not touch the scene rows). `false` when there is no
    /// such object.
    pub fn update_object(&mut self, kind: ObjectKind, id: u64, name: Option<&str>) -> bool {
        let now = self.stamp();
        fn update<T: Row>(table: &mut Table<T>, id: u64, f: impl FnOnce(&mut T)) -> bool {
            table.get_mut(&id).map(|mut row| f(&mut row)).is_some()
        }
        let rename = |slot: &mut String, stamp: &mut String| {
            if let Some(name) = name {
                *slot = name.to_string();
            }
            *stamp = now;
        };
        match kind {
            ObjectKind::Performer => update(&mut self.performers, id, |p| rename(&mut p.name, &mut p.updated_at)),
            ObjectKind::Studio => update(&mut self.studios, id, |s| rename(&mut s.name, &mut s.updated_at)),
            ObjectKind::Tag => update(&mut self.tags, id, |t| rename(&mut t.name, &mut t.updated_at)),
        }
    }

    /// Deletes a performer, studio or tag. Stash's foreign keys drop it
    /// from every scene (and a studio from its children) without touching
    /// their `updated_at`. `false` when there is no such object.
    pub fn destroy_object(&mut self, kind: ObjectKind, id: u64) -> bool {
        let gone = match kind {
            ObjectKind::Performer => self.performers.remove(&id).is_some(),
            ObjectKind::Studio => self.studios.remove(&id).is_some(),
            ObjectKind::Tag => self.tags.remove(&id).is_some(),
        };
        self.scenes.for_each_mut(|scene| match kind {
            ObjectKind::Performer => scene.performers.retain(|p| *p != id),
            ObjectKind::Studio if scene.studio == Some(id) => scene.studio = None,
            ObjectKind::Studio => {}
            ObjectKind::Tag => scene.tags.retain(|t| *t != id),
        });
        if kind == ObjectKind::Studio {
            self.studios.for_each_mut(|s| {
                if s.parent == Some(id) {
                    s.parent = None;
                }
            });
        }
        gone
    }

    /// `tagsMerge`: every scene with a source tag gets the destination
    /// instead (once), the sources are deleted; no scene's `updated_at`
    /// moves (pkg/sqlite `TagStore.Merge`).
    pub fn merge_tags(&mut self, sources: &[u64], destination: u64) -> Result<(), String> {
        if !self.tags.contains_key(&destination) {
            return Err(format!("tag with id {destination} not found"));
        }
        if sources.contains(&destination) {
            return Err("cannot merge where source == destination".into());
        }
        self.scenes.for_each_mut(|scene| {
            if scene.tags.iter().any(|t| sources.contains(t)) {
                scene.tags.retain(|t| !sources.contains(t));
                if !scene.tags.contains(&destination) {
                    scene.tags.push(destination);
                }
            }
        });
        for id in sources {
            self.tags.remove(id);
        }
        Ok(())
    }

    pub fn tag_by_name(&self, name: &str) -> Option<u64> {
        self.tags.values().find(|t| t.name.eq_ignore_ascii_case(name)).map(|t| t.id)
    }
}

/// A cover saved as AVIF (48×72), as Stash v0.30+ accepts: the third scene
/// of every library built by [`StashState::from_library`] has it.
pub const AVIF_COVER: &[u8] = include_bytes!("../../assets/cover.avif");
/// A cover saved as JPEG XL (48×72): the fifth scene's.
pub const JPEG_XL_COVER: &[u8] = include_bytes!("../../assets/cover.jxl");

/// Whether an item's poster shows the scene's `cover` as Plex would: the
/// same bytes, a JPEG made of a JPEG XL cover, or, for an AVIF cover (which
/// Plex cannot decode), Plex's own image (its frame or its agent's), never
/// an upload.
pub fn poster_shows(cover: &[u8], poster: Option<&crate::plex::Image>) -> bool {
    use crate::plex::Image;
    match (cover, poster) {
        ([_, _, _, _, b'f', b't', b'y', b'p', b'a', b'v', b'i', b'f', ..], p) => !matches!(p, Some(Image::Upload(_))),
        ([0xFF, 0x0A, ..], Some(Image::Upload(bytes))) => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        (cover, Some(Image::Upload(bytes))) => cover == bytes.as_slice(),
        _ => false,
    }
}

/// A small PNG that differs per `seed` (the 1×1 PNG with the seed in a
/// `tEXt` chunk-sized tail after `IEND`, which decoders ignore).
pub fn fixture_image(seed: u64) -> Vec<u8> {
    let png = crate::stash::IMAGE_PNG;
    let mut bytes = Vec::with_capacity(png.len() + 8);
    bytes.extend_from_slice(png);
    bytes.extend_from_slice(&seed.to_be_bytes());
    bytes
}

/// `bytes` as the `data:` URL Stash's UI sends for an uploaded image
/// (`cover_image`, `image`).
pub fn data_url(bytes: &[u8]) -> String {
    use base64::Engine;
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The default cover a scene without one is served: Stash's `scene.svg`.
pub const DEFAULT_COVER_SVG: &[u8] =
    b"<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 9\"><rect width=\"16\" height=\"9\"/></svg>";

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_format_like_go_and_change_at_their_instant() {
        let at = Utc::now().trunc_subsecs(0);
        let z = Zone::change_at(-8 * 3600, at, -7 * 3600);
        assert!(z.format(at - chrono::Duration::seconds(1)).ends_with("-08:00"));
        assert!(z.format(at).ends_with("-07:00"));
        assert!(Zone::fixed(0).format(at).ends_with('Z'));
    }
}
