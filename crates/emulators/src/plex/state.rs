//! The Plex emulator's data: sections, items, the disk it scans, and edits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::fixtures::Library;
use crate::table::{Row, Table};

/// Scalar fields the edit API accepts as `<field>.value`.
pub const SCALAR_FIELDS: &[&str] = &[
    "title",
    "titleSort",
    "originalTitle",
    "summary",
    "studio",
    "tagline",
    "originallyAvailableAt",
    "year",
    "contentRating",
    "rating",
];

/// Tag fields, by their edit-API name; each renders as its own element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TagKind {
    Genre,
    Collection,
    Actor,
    Director,
    Label,
}

impl TagKind {
    pub const ALL: [TagKind; 5] = [Self::Genre, Self::Collection, Self::Actor, Self::Director, Self::Label];

    /// Name in edit parameters and in the `filter` attribute.
    pub fn param(self) -> &'static str {
        match self {
            Self::Genre => "genre",
            Self::Collection => "collection",
            Self::Actor => "actor",
            Self::Director => "director",
            Self::Label => "label",
        }
    }

    /// Element name in responses.
    pub fn element(self) -> &'static str {
        match self {
            Self::Genre => "Genre",
            Self::Collection => "Collection",
            Self::Actor => "Role",
            Self::Director => "Director",
            Self::Label => "Label",
        }
    }

    pub fn from_param(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.param() == name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub key: u32,
    pub title: String,
    pub kind: String,
    pub agent: String,
    pub scanner: String,
    pub uuid: String,
    pub locations: Vec<String>,
    pub updated_at: i64,
    pub scanned_at: i64,
    /// Until when a scan it was asked for runs (`refreshing="1"` meanwhile).
    pub scanning_until: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub id: u64,
    pub file: String,
    pub size: u64,
    pub duration_ms: u64,
    pub container: String,
    /// When its file vanished, while the item waits in the trash
    /// (`deletedAt`; "Empty trash automatically after every scan" off).
    pub deleted_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Media {
    pub id: u64,
    pub duration_ms: u64,
    pub container: String,
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    pub id: u64,
    pub tag: String,
    /// Actors only: the role played.
    pub role: Option<String>,
    /// Actors only: a photo URL.
    pub thumb: Option<String>,
}

/// A poster or background: set from a URL Plex would fetch, uploaded, or
/// a frame Plex extracted from the video (what an item shows before any
/// agent or person gave it an image).
#[derive(Clone, Debug, PartialEq)]
pub enum Image {
    Url(String),
    Upload(Vec<u8>),
    Frame,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub rating_key: u64,
    pub section: u32,
    pub guid: String,
    /// Scalar fields by Plex name (see [`SCALAR_FIELDS`]); absent when unset.
    pub fields: BTreeMap<String, String>,
    pub added_at: i64,
    pub updated_at: i64,
    pub media: Vec<Media>,
    pub tags: BTreeMap<TagKind, Vec<Tag>>,
    /// Locked field names (`title`, `genre`, …).
    pub locked: BTreeSet<String>,
    pub poster: Option<Image>,
    pub art: Option<Image>,
    /// Content keys of the posters uploaded to the item (`upload://posters/<key>`).
    pub uploads: Vec<String>,
    /// The section's agent matched the file to a movie (and filled fields).
    pub agent_matched: bool,
    /// How often `/refresh` was called for this item.
    pub refreshes: u32,
    /// What the item waits for from its section's metadata provider.
    pub pull: Option<Pull>,
    /// The server owner's own rating (`/:/rate`), 0–10.
    pub user_rating: Option<f64>,
}

/// Items are listed by section, then `addedAt` (PlexSync pages with
/// `sort=addedAt`), ties by ratingKey.
impl Row for Item {
    type Key = (u32, i64);

    fn key(&self) -> (u32, i64) {
        (self.section, self.added_at)
    }
}

/// A custom metadata provider the server owner added (Settings → Metadata
/// Agents → Add Provider), as its manifest described it.
#[derive(Clone, Debug, PartialEq)]
pub struct Provider {
    pub identifier: String,
    pub title: String,
    /// The URL the owner entered; every feature key is appended to it.
    pub root: String,
    pub metadata_key: String,
    pub match_key: String,
    /// The optional `collection` feature's key.
    pub collection_key: Option<String>,
}

/// A provider call an item waits for.
#[derive(Clone, Debug, PartialEq)]
pub enum Pull {
    /// A new item: match by its file, then read the metadata.
    Match,
    /// "Refresh metadata": match again (with the stored guid), read again.
    Refresh,
    /// "Fix Match" chose this guid: read its metadata.
    Fix(String),
}

/// The content key of an uploaded image (Plex names uploads by a hash of
/// their bytes, so the same bytes twice are one poster).
pub fn content_key(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().take(20).map(|b| format!("{b:02x}")).collect()
}

impl Item {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    pub fn tag_names(&self, kind: TagKind) -> Vec<&str> {
        self.tags.get(&kind).map(|t| t.iter().map(|t| t.tag.as_str()).collect()).unwrap_or_default()
    }

    /// The item's files, leaving out parts in the trash (their file is gone).
    pub fn files(&self) -> impl Iterator<Item = &Part> {
        self.media.iter().flat_map(|m| m.parts.iter()).filter(|p| p.deleted_at.is_none())
    }

    pub fn duration_ms(&self) -> u64 {
        self.media.first().map(|m| m.duration_ms).unwrap_or(0)
    }
}

/// A file on the emulated disk that Plex has not scanned yet.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskFile {
    pub path: String,
    pub size: u64,
    pub duration_ms: u64,
    /// When it becomes an item: set by a scan of its folder or by the
    /// automatic scan delay; `None` waits for a scan.
    pub due: Option<Instant>,
}

/// One applied edit, as [`PlexState::journal`] keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub rating_key: u64,
    /// The item's files when the edit was applied.
    pub files: Vec<String>,
    /// The `title.value` it set, if any.
    pub title: Option<String>,
}

/// Why an edit was refused (answered with `400`).
#[derive(Debug, PartialEq)]
pub struct EditError(pub String);

fn earliest_due(disk: &[DiskFile]) -> Option<Instant> {
    disk.iter().filter_map(|f| f.due).min()
}

/// Everything the Plex emulator knows.
#[derive(Debug)]
pub struct PlexState {
    pub machine_identifier: String,
    pub version: String,
    pub friendly_name: String,
    pub sections: Vec<Section>,
    /// By ratingKey, and indexed by section and `addedAt` for the section
    /// listings' pages (see [`Table`]).
    pub items: Table<Item>,
    pub disk: Vec<DiskFile>,
    /// The earliest `due` in `disk`, kept with it.
    disk_due: Option<Instant>,
    /// Files added with [`PlexState::add_disk_file`] appear after this delay
    /// even without a scan request (Plex's "scan automatically").
    pub auto_scan_delay: Option<Duration>,
    /// How long a requested partial scan takes before its files appear.
    pub scan_duration: Duration,
    /// When set, every applied edit is written down with the files its
    /// item held at that moment, so a test can prove no edit ever reached
    /// an item that did not hold the scene's file. Off by default.
    pub journal: Option<Vec<JournalEntry>>,
    /// The section's agent matches every fourth new item to a movie and
    /// fills its fields (see [`PlexState::agent_fill`]); on by default.
    pub agent_fills: bool,
    /// A partial scan of a folder Plex has never indexed finds nothing
    /// (Plex decides by folder modification times; some are skipped).
    pub skip_new_folders: bool,
    /// What an indexed tag edit (`genre[0].tag.tag=…`) does: replace the
    /// item's list (false) or add to it (true). Real servers are unsettled
    /// (facts: Plex's docs say "adds", python-plexapi says replaces); the
    /// default comes from `PLEX_TAG_EDITS` (`add` or `replace`, the default)
    /// so that whole suites run under either.
    pub tag_edits_add: bool,
    /// Legacy agents still installed (Plex removes them in 2026), by
    /// identifier, with their preferences as Plex keeps them (id → text).
    pub legacy_agents: BTreeMap<String, BTreeMap<String, String>>,
    /// Registered metadata providers; a section whose `agent` is one's
    /// identifier pulls from it (the agent runner, `agent.rs`).
    pub providers: Vec<Provider>,
    /// What a match call's `filename` holds: the path relative to the
    /// section's folder (false, as Plex's provider docs show) or the
    /// server's full path (true, as one provider reports receiving).
    pub provider_full_paths: bool,
    /// What went wrong talking to providers (a refused manifest, a bad
    /// answer), as Plex's log would say it.
    pub agent_log: Vec<String>,
    /// What a provider's match call carries as `includeAdult`: Plex's docs
    /// name the field and never say when PMS sends it, so by default it is
    /// left out (`None`).
    pub provider_include_adult: Option<u8>,
    /// Whether this server fetches LAN image URLs itself. A real PMS hands
    /// an image URL (a provider's, an actor photo an edit sets) to Plex's
    /// cloud image service, which cannot reach a private or loopback
    /// address and answers 400; so by default such an image never shows.
    pub lan_images_reachable: bool,
    /// The image URLs (without their query) Plex's cloud refused.
    pub cloud_refused: BTreeSet<String>,
    /// Provider calls taken and not yet answered.
    pub pulls_in_flight: usize,
    next_id: u64,
    tag_ids: HashMap<(TagKind, String), u64>,
}

/// `PLEX_TAG_EDITS=add` makes indexed tag edits add (see
/// [`PlexState::tag_edits_add`]).
pub fn tag_edits_add_by_default() -> bool {
    std::env::var("PLEX_TAG_EDITS").is_ok_and(|v| v.eq_ignore_ascii_case("add"))
}

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// The file name of `path` without its extension (Plex's title before any agent).
pub(crate) fn file_stem(path: &str) -> &str {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    name.rsplit_once('.').map(|(stem, _)| stem).unwrap_or(name)
}

fn extension(path: &str) -> String {
    path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default()
}

/// Whether Plex's cloud image service cannot fetch `url`: its host is a
/// loopback, private, link-local or unspecified address, or a name without
/// a dot (a LAN or container name), or it is no URL at all.
pub fn lan_url(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else { return true };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Some(url::Host::Domain(name)) => !name.contains('.') || name.ends_with(".local") || name.ends_with(".lan"),
        None => true,
    }
}

/// The type of an image Plex decodes (JPEG, PNG, GIF or WebP), by its bytes.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("image/webp"),
        _ => None,
    }
}

/// Whether `path` lies in `folder` (or is it), by whole path components.
pub fn in_folder(path: &str, folder: &str) -> bool {
    let folder = folder.trim_end_matches('/');
    path == folder || path.strip_prefix(folder).is_some_and(|rest| rest.starts_with('/'))
}

impl PlexState {
    /// An empty server with one movie section at `movie_location`.
    pub fn new(movie_location: &str) -> Self {
        let now = unix_now();
        Self {
            machine_identifier: "5f1e3c0b2a6d4e8f9a7b6c5d4e3f2a1b0c9d8e7f".into(),
            version: "1.40.1.8227-c0dd5a73e".into(),
            friendly_name: "PlexSync Emulator".into(),
            sections: vec![Section {
                key: 1,
                title: "Movies".into(),
                kind: "movie".into(),
                agent: "tv.plex.agents.movie".into(),
                scanner: "Plex Movie".into(),
                uuid: "0e2f5b8a-4c1d-4f7e-9a3b-2d6c8e1f0a5b".into(),
                locations: vec![movie_location.trim_end_matches('/').to_string()],
                updated_at: now,
                scanned_at: now,
                scanning_until: None,
            }],
            items: Table::default(),
            disk: Vec::new(),
            disk_due: None,
            auto_scan_delay: None,
            // A real scan runs in the background for seconds to minutes.
            scan_duration: Duration::from_secs(3),
            skip_new_folders: false,
            agent_fills: true,
            journal: None,
            tag_edits_add: tag_edits_add_by_default(),
            legacy_agents: BTreeMap::new(),
            providers: Vec::new(),
            // As a provider author found in practice (the docs say relative).
            provider_full_paths: true,
            agent_log: Vec::new(),
            provider_include_adult: None,
            lan_images_reachable: false,
            cloud_refused: BTreeSet::new(),
            pulls_in_flight: 0,
            next_id: 100,
            tag_ids: HashMap::new(),
        }
    }

    /// A server that has scanned `lib`: every scene Plex has as an item
    /// (multi-file scenes stacked into one item), duplicates as second items,
    /// and the scenes Plex lacks as files on disk waiting for a scan.
    pub fn from_library(lib: &Library) -> Self {
        let mut state = Self::new(&lib.plex_prefix);
        // Built whole, then loaded at once: a million items in seconds.
        let mut items = Vec::with_capacity(lib.scenes.len());
        for scene in &lib.scenes {
            // `as` from a float saturates: a negative or NaN duration is 0.
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "saturating by design")]
            let duration = |secs: f64| (secs * 1000.0) as u64;
            if !scene.in_plex {
                for f in &scene.files {
                    state.add_disk_file(&f.plex_path, f.size, duration(f.duration_secs), None);
                }
                continue;
            }
            let files = scene.files.iter().map(|f| (f.plex_path.as_str(), f.size, duration(f.duration_secs)));
            items.push(state.new_item(1, files));
            if scene.plex_duplicate {
                let first = &scene.files[0];
                let copy = first.plex_path.replacen(&lib.plex_prefix, &format!("{}/Backup", lib.plex_prefix), 1);
                items.push(state.new_item(1, [(copy.as_str(), first.size, duration(first.duration_secs))]));
            }
        }
        date_as_grown(&mut items);
        state.items = items.into_iter().map(|item| (item.rating_key, item)).collect();
        state
    }

    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds an item for `files` (path, size, duration in ms) to `section`,
    /// titled after the first file as Plex does before any agent ran.
    pub fn add_item(&mut self, section: u32, files: &[(String, u64, u64)]) -> u64 {
        let item = self.new_item(section, files.iter().map(|(path, size, duration)| (path.as_str(), *size, *duration)));
        let rating_key = item.rating_key;
        self.items.insert(rating_key, item);
        rating_key
    }

    /// The item [`PlexState::add_item`] adds, with the next ids, as the
    /// section's agent leaves it; not yet in `items`.
    fn new_item<'a>(&mut self, section: u32, files: impl IntoIterator<Item = (&'a str, u64, u64)>) -> Item {
        let rating_key = self.next();
        let parts: Vec<Part> = files
            .into_iter()
            .map(|(path, size, duration)| Part {
                id: self.next(),
                file: path.to_string(),
                size,
                duration_ms: duration,
                container: extension(path),
                deleted_at: None,
            })
            .collect();
        let duration_ms = parts.iter().map(|p| p.duration_ms).sum();
        let container = parts.first().map(|p| p.container.clone()).unwrap_or_default();
        let now = unix_now();
        let mut fields = BTreeMap::new();
        fields.insert("title".to_string(), file_stem(&parts[0].file).to_string());
        let mut item = Item {
            rating_key,
            section,
            guid: format!("local://{rating_key}"),
            fields,
            added_at: now,
            updated_at: now,
            media: vec![Media { id: self.next(), duration_ms, container, parts }],
            tags: BTreeMap::new(),
            locked: BTreeSet::new(),
            // Plex extracts a frame of the video for both at once.
            poster: Some(Image::Frame),
            art: Some(Image::Frame),
            uploads: Vec::new(),
            agent_matched: false,
            refreshes: 0,
            pull: None,
            user_rating: None,
        };
        if self.provider_of(section).is_some() {
            // The section's agent is a custom provider: it is asked.
            item.pull = Some(Pull::Match);
        } else if self.agent_fills && rating_key.is_multiple_of(4) {
            let tags = self.agent_tags();
            fill_as_agent(&mut item, tags);
        }
        item
    }

    /// The section's agent (Plex Movie) matched the file to a movie: it
    /// fills title, summary, date, genres, actors and a poster, none
    /// locked. Other files keep the title made from their name, as with the
    /// Personal Media agent or none.
    pub fn agent_fill(&mut self, rating_key: u64) {
        let tags = self.agent_tags();
        if let Some(mut item) = self.items.get_mut(&rating_key) {
            fill_as_agent(&mut item, tags);
        }
    }

    /// The genres, actors and director the agent gives a matched movie.
    fn agent_tags(&mut self) -> Vec<(TagKind, Vec<Tag>)> {
        [
            (TagKind::Genre, vec!["Drama", "Thriller"]),
            (TagKind::Actor, vec!["Agent Actor One", "Agent Actor Two"]),
            (TagKind::Director, vec!["Agent Director"]),
        ]
        .into_iter()
        .map(|(kind, names)| {
            let tags = names
                .into_iter()
                .map(|n| Tag { id: self.tag_id(kind, n), tag: n.into(), role: None, thumb: None })
                .collect();
            (kind, tags)
        })
        .collect()
    }

    /// A file renamed or moved inside the library and seen by a scan: its
    /// item keeps its ratingKey and `addedAt`, only the part's path (and
    /// `updatedAt`) change (scanner: "Part rename detected"). Returns the item.
    pub fn rename_file(&mut self, from: &str, to: &str) -> Option<u64> {
        let rating_key = self.items.values().find(|i| i.files().any(|p| p.file == from))?.rating_key;
        let mut item = self.items.get_mut(&rating_key)?;
        for part in item.media.iter_mut().flat_map(|m| m.parts.iter_mut()) {
            if part.file == from {
                part.file = to.to_string();
            }
        }
        item.updated_at = unix_now().max(item.updated_at + 1);
        Some(item.rating_key)
    }

    /// The file at `path` vanished and a scan noticed. With `keep_trash`
    /// ("Empty trash automatically after every scan" off) its item stays
    /// listed, the part marked deleted, with its old path; otherwise the
    /// part goes, and the item with its last part.
    pub fn delete_file(&mut self, path: &str, keep_trash: bool) {
        let now = unix_now();
        self.items.retain(|_, item| {
            for media in &mut item.media {
                if keep_trash {
                    media.parts.iter_mut().filter(|p| p.file == path).for_each(|p| p.deleted_at = Some(now));
                } else {
                    media.parts.retain(|p| p.file != path);
                }
            }
            item.media.retain(|m| !m.parts.is_empty());
            !item.media.is_empty()
        });
    }

    /// Plex merged two items it matched to the same title: `from`'s media
    /// join `into`, and `from` is gone.
    pub fn merge_items(&mut self, into: u64, from: u64) {
        let Some(moved) = self.items.remove(&from) else { return };
        if let Some(mut item) = self.items.get_mut(&into) {
            item.media.extend(moved.media);
            item.updated_at = unix_now().max(item.updated_at + 1);
        }
    }

    /// The library emptied and scanned again (a new database, a restored
    /// backup, a migration): every file becomes a new item with Plex's
    /// own metadata only, and the ratingKeys are handed out again from the
    /// lowest one, as SQLite does after deletions, so an old key now names
    /// another video.
    pub fn rebuild_reusing_keys(&mut self) {
        let old: Vec<Item> = std::mem::take(&mut self.items).into_iter().map(|(_, item)| item).collect();
        let mut keys: Vec<u64> = old.iter().map(|i| i.rating_key).collect();
        // The scan meets the files in another order than they were added.
        keys.rotate_left(1);
        for (item, key) in old.into_iter().zip(keys) {
            let files: Vec<(String, u64, u64)> =
                item.files().map(|p| (p.file.clone(), p.size, p.duration_ms)).collect();
            let new = self.add_item(item.section, &files);
            let mut rebuilt = self.items.remove(&new).expect("just added");
            rebuilt.rating_key = key;
            rebuilt.guid = format!("local://{key}");
            self.items.insert(key, rebuilt);
        }
    }

    /// Puts a file on the emulated disk; it becomes an item when a scan of
    /// its folder finishes, or at `due`.
    pub fn add_disk_file(&mut self, path: &str, size: u64, duration_ms: u64, due: Option<Instant>) {
        let due = due.or_else(|| self.auto_scan_delay.map(|d| Instant::now() + d));
        self.disk.push(DiskFile { path: path.to_string(), size, duration_ms, due });
        self.disk_due = [self.disk_due, due].into_iter().flatten().min();
    }

    /// The provider that is `section`'s agent, if it is one.
    pub fn provider_of(&self, section: u32) -> Option<&Provider> {
        let agent = &self.section(section)?.agent;
        self.providers.iter().find(|p| &p.identifier == agent)
    }

    pub fn section(&self, key: u32) -> Option<&Section> {
        self.sections.iter().find(|s| s.key == key)
    }

    fn section_for_path(&self, path: &str) -> Option<u32> {
        self.sections.iter().find(|s| s.locations.iter().any(|l| in_folder(path, l))).map(|s| s.key)
    }

    /// Schedules a scan of `section`, limited to `folder` when given;
    /// returns how many waiting files it will add.
    pub fn request_scan(&mut self, section: u32, folder: Option<&str>) -> usize {
        let due = Instant::now() + self.scan_duration;
        let Some(sec) = self.section(section).cloned() else { return 0 };
        if let Some(s) = self.sections.iter_mut().find(|s| s.key == section) {
            s.scanning_until = Some(s.scanning_until.map_or(due, |d| d.max(due)));
        }
        let known = |f: &str| self.items.values().any(|i| i.files().any(|p| in_folder(&p.file, f)));
        if self.skip_new_folders && folder.is_some_and(|f| !known(f)) {
            return 0;
        }
        let mut count = 0;
        for file in &mut self.disk {
            let in_section = sec.locations.iter().any(|l| in_folder(&file.path, l));
            let in_scope = folder.is_none_or(|f| in_folder(&file.path, f));
            if in_section && in_scope {
                file.due = Some(file.due.map_or(due, |d| d.min(due)));
                count += 1;
            }
        }
        self.disk_due = earliest_due(&self.disk);
        count
    }

    /// Turns disk files whose scan has finished into items.
    pub fn materialize_due(&mut self, now: Instant) {
        // Asked at every request: the earliest due time answers without
        // walking every waiting file.
        if self.disk_due.is_none_or(|d| d > now) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.disk).into_iter().partition(|f| f.due.is_some_and(|d| d <= now));
        self.disk = waiting;
        self.disk_due = earliest_due(&self.disk);
        for file in ready {
            if let Some(section) = self.section_for_path(&file.path) {
                self.add_item(section, &[(file.path, file.size, file.duration_ms)]);
                let now = unix_now();
                if let Some(s) = self.sections.iter_mut().find(|s| s.key == section) {
                    s.scanned_at = now;
                    s.updated_at = now;
                }
            }
        }
    }

    pub fn tag_id(&mut self, kind: TagKind, name: &str) -> u64 {
        let key = (kind, name.to_lowercase());
        if let Some(id) = self.tag_ids.get(&key) {
            return *id;
        }
        let id = self.next();
        self.tag_ids.insert(key, id);
        id
    }

    /// Whether the image at `url` shows: a LAN URL goes through Plex's
    /// cloud, which refuses it (written down), unless this server reaches
    /// LAN images itself ([`PlexState::lan_images_reachable`]).
    pub fn through_cloud(&mut self, url: &str) -> bool {
        if self.lan_images_reachable || !lan_url(url) {
            return true;
        }
        let bare = url.split(['?', '#']).next().unwrap_or(url);
        self.cloud_refused.insert(bare.to_string());
        false
    }

    /// Applies one edit request (the query string of an edit `PUT`) to every
    /// item in `ids`. All or nothing: a bad value refuses the whole edit.
    pub fn apply_edit(&mut self, ids: &[u64], params: &[(String, String)]) -> Result<(), EditError> {
        let edit = Edit::parse(params)?;
        for id in ids {
            if !self.items.contains_key(id) {
                return Err(EditError(format!("no item {id}")));
            }
        }
        let tag_lists: Vec<(TagKind, Vec<Tag>)> = edit
            .tag_sets
            .iter()
            .map(|(kind, entries)| {
                let tags = entries
                    .values()
                    .filter(|e| !e.tag.is_empty())
                    .map(|e| Tag {
                        id: self.tag_id(*kind, &e.tag),
                        tag: e.tag.clone(),
                        role: e.role.clone(),
                        thumb: e.thumb.clone(),
                    })
                    .collect();
                (*kind, tags)
            })
            .collect();
        for (_, tags) in &tag_lists {
            for thumb in tags.iter().filter_map(|t| t.thumb.clone()) {
                self.through_cloud(&thumb);
            }
        }
        let now = unix_now();
        for id in ids {
            let mut item = self.items.get_mut(id).expect("checked above");
            if let Some(journal) = self.journal.as_mut() {
                let title = edit.values.iter().find(|(f, _)| f == "title").map(|(_, v)| v.clone());
                let files = item.files().map(|p| p.file.clone()).collect();
                journal.push(JournalEntry { rating_key: *id, files, title });
            }
            for (field, value) in &edit.values {
                if value.is_empty() {
                    item.fields.remove(field);
                } else {
                    item.fields.insert(field.clone(), value.clone());
                }
            }
            for (kind, tags) in &tag_lists {
                let list = item.tags.entry(*kind).or_default();
                if self.tag_edits_add {
                    for tag in tags {
                        match list.iter_mut().find(|t| t.tag.eq_ignore_ascii_case(&tag.tag)) {
                            Some(old) => *old = tag.clone(),
                            None => list.push(tag.clone()),
                        }
                    }
                } else {
                    *list = tags.clone();
                }
            }
            for (kind, removed) in &edit.tag_removals {
                if let Some(list) = item.tags.get_mut(kind) {
                    list.retain(|t| !removed.iter().any(|r| r.eq_ignore_ascii_case(&t.tag)));
                }
            }
            for (field, locked) in &edit.locks {
                if *locked {
                    item.locked.insert(field.clone());
                } else {
                    item.locked.remove(field);
                }
            }
            item.updated_at = now;
        }
        Ok(())
    }
}

/// A real library grew over time: items were added one after another,
/// not all in this second. Spreads `addedAt`/`updatedAt` back, one item
/// every ten minutes, oldest first (a filter by time then returns what a
/// real one would).
fn date_as_grown(items: &mut [Item]) {
    let now = unix_now();
    for (age, item) in (1..=items.len()).rev().zip(items.iter_mut()) {
        let at = now.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX).saturating_mul(600));
        item.added_at = at;
        item.updated_at = at;
    }
}

/// The section's agent (Plex Movie) matched `item`'s file to a movie (see
/// [`PlexState::agent_fill`]); `tags` from [`PlexState::agent_tags`].
fn fill_as_agent(item: &mut Item, tags: Vec<(TagKind, Vec<Tag>)>) {
    let rating_key = item.rating_key;
    let title = format!("A Movie The Agent Matched ({rating_key})");
    for (field, value) in [
        ("title", title.as_str()),
        ("summary", "What the agent's metadata source says of the movie."),
        ("originallyAvailableAt", "1999-03-31"),
        ("year", "1999"),
    ] {
        item.fields.insert(field.into(), value.into());
    }
    item.tags.extend(tags);
    item.poster = Some(Image::Url(format!("https://metadata-static.plex.tv/p/{rating_key}/poster.jpg")));
    item.art = Some(Image::Url(format!("https://metadata-static.plex.tv/a/{rating_key}/art.jpg")));
    item.agent_matched = true;
}

#[derive(Default, Debug)]
struct TagEntry {
    tag: String,
    role: Option<String>,
    thumb: Option<String>,
}

/// A parsed edit query string.
#[derive(Default, Debug)]
struct Edit {
    values: Vec<(String, String)>,
    locks: Vec<(String, bool)>,
    tag_sets: BTreeMap<TagKind, BTreeMap<usize, TagEntry>>,
    tag_removals: Vec<(TagKind, Vec<String>)>,
}

impl Edit {
    fn parse(params: &[(String, String)]) -> Result<Self, EditError> {
        let mut edit = Edit::default();
        for (key, value) in params {
            if let Some(field) = key.strip_suffix(".value") {
                if SCALAR_FIELDS.contains(&field) {
                    validate_scalar(field, value)?;
                    edit.values.push((field.to_string(), value.clone()));
                }
            } else if let Some(field) = key.strip_suffix(".locked") {
                // Posters and backgrounds lock as `thumb` and `art`.
                let known = SCALAR_FIELDS.contains(&field)
                    || TagKind::from_param(field).is_some()
                    || matches!(field, "thumb" | "art");
                if known {
                    edit.locks.push((field.to_string(), value == "1"));
                }
            } else if let Some((kind, index, rest)) = split_tag_param(key) {
                edit.tag_param(kind, index, rest, value)?;
            }
        }
        Ok(edit)
    }

    fn tag_param(&mut self, kind: TagKind, index: Option<usize>, rest: &str, value: &str) -> Result<(), EditError> {
        match (index, rest) {
            (None, "tag.tag-") => {
                // Each name was percent-encoded before the comma join.
                let names = value.split(',').map(percent_decode).collect::<Result<Vec<_>, _>>()?;
                self.tag_removals.push((kind, names));
            }
            (Some(i), field) => {
                let entry = self.tag_sets.entry(kind).or_default().entry(i).or_default();
                match field {
                    "tag.tag" => entry.tag = value.to_string(),
                    "tagging.text" => entry.role = Some(value.to_string()).filter(|v| !v.is_empty()),
                    "tag.thumb" => entry.thumb = Some(value.to_string()).filter(|v| !v.is_empty()),
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Splits `genre[3].tag.tag` into (Genre, Some(3), "tag.tag") and
/// `genre[].tag.tag-` into (Genre, None, "tag.tag-").
fn split_tag_param(key: &str) -> Option<(TagKind, Option<usize>, &str)> {
    let (kind, rest) = key.split_once('[')?;
    let kind = TagKind::from_param(kind)?;
    let (index, rest) = rest.split_once("].")?;
    let index = if index.is_empty() { None } else { Some(index.parse().ok()?) };
    Some((kind, index, rest))
}

fn percent_decode(s: &str) -> Result<String, EditError> {
    url::form_urlencoded::parse(format!("v={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| EditError(format!("bad tag list entry {s:?}")))
}

fn validate_scalar(field: &str, value: &str) -> Result<(), EditError> {
    if value.is_empty() {
        return Ok(());
    }
    match field {
        "year" if value.parse::<u16>().is_err() => Err(EditError(format!("year must be a number, got {value:?}"))),
        "rating" if !value.parse::<f64>().is_ok_and(|r| (0.0..=10.0).contains(&r)) => {
            Err(EditError(format!("rating must be a number from 0 to 10, got {value:?}")))
        }
        "originallyAvailableAt" if chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_err() => {
            Err(EditError(format!("originallyAvailableAt must be YYYY-MM-DD, got {value:?}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plexs_cloud_refuses_lan_image_urls_unless_the_server_reaches_them() {
        for lan in [
            "http://192.168.1.71:9999/scene/1/screenshot",
            "http://10.0.0.5/x",
            "http://172.20.0.2/x",
            "http://127.0.0.1:9977/provider-image/t/scene/1",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://stash:9999/x",
            "http://nas.local/x",
            "not a url",
        ] {
            assert!(lan_url(lan), "{lan}");
        }
        for public in ["https://image.tmdb.org/t/p/a.jpg", "http://203.0.113.7/x", "https://stash.example.com/x"] {
            assert!(!lan_url(public), "{public}");
        }
        let mut state = PlexState::new("/media");
        assert!(!state.through_cloud("http://192.168.1.71/p.jpg?apikey=secret"));
        assert!(state.cloud_refused.contains("http://192.168.1.71/p.jpg"), "kept without its query");
        state.lan_images_reachable = true;
        assert!(state.through_cloud("http://192.168.1.71/q.jpg"));
        assert_eq!(state.cloud_refused.len(), 1);
        assert_eq!(image_type(b"\x89PNG\r\n"), Some("image/png"));
        assert_eq!(image_type(b"\0\0\0\x20ftypavif"), None, "Plex cannot decode AVIF");
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn edit_sets_values_locks_and_tags() {
        let mut plex = PlexState::new("/m");
        let rk = plex.add_item(1, &[("/m/a.mp4".into(), 10, 1000)]);
        plex.apply_edit(
            &[rk],
            &params(&[
                ("title.value", "New"),
                ("title.locked", "1"),
                ("genre[0].tag.tag", "B"),
                ("genre[1].tag.tag", "A"),
                ("actor[0].tag.tag", "Zoë"),
                ("actor[0].tagging.text", "Lead"),
                ("genre.locked", "1"),
            ]),
        )
        .unwrap();
        let item = &plex.items[&rk];
        assert_eq!(item.field("title"), Some("New"));
        assert_eq!(item.tag_names(TagKind::Genre), ["B", "A"]);
        assert_eq!(item.tags[&TagKind::Actor][0].role.as_deref(), Some("Lead"));
        assert!(item.locked.contains("title") && item.locked.contains("genre"));
        plex.apply_edit(&[rk], &params(&[("genre[].tag.tag-", "B,C%2CD"), ("title.locked", "0")])).unwrap();
        let item = &plex.items[&rk];
        assert_eq!(item.tag_names(TagKind::Genre), ["A"]);
        assert!(!item.locked.contains("title"));
    }

    #[test]
    fn bad_values_refuse_the_whole_edit() {
        let mut plex = PlexState::new("/m");
        let rk = plex.add_item(1, &[("/m/a.mp4".into(), 10, 1000)]);
        let err = plex
            .apply_edit(&[rk], &params(&[("title.value", "X"), ("originallyAvailableAt.value", "0000-00-00")]))
            .unwrap_err();
        assert!(err.0.contains("originallyAvailableAt"));
        assert_eq!(plex.items[&rk].field("title"), Some("a"));
    }

    #[test]
    fn scan_adds_only_files_in_the_scanned_folder() {
        let mut plex = PlexState::new("/m");
        plex.scan_duration = Duration::ZERO;
        plex.add_disk_file("/m/x/1.mp4", 1, 1, None);
        plex.add_disk_file("/m/xy/2.mp4", 1, 1, None);
        assert_eq!(plex.request_scan(1, Some("/m/x")), 1);
        plex.materialize_due(Instant::now());
        assert_eq!(plex.items.len(), 1);
        assert_eq!(plex.disk.len(), 1);
    }
}
