//! Settings: one table of every setting, read from layers in order of
//! precedence (CLI flags, `PLEXSYNC_*` environment, TOML file, Stash's
//! plugin settings). Names are matched case-insensitively and without `_`
//! or `-`, so `plexUrl`, `plex_url` and `PLEXSYNC_PLEX_URL` are one setting.
//! A bad value never stops the program: it is reported with the fix and the
//! default is used.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

use crate::secret::Secret;

/// The plugin id Stash keeps our settings under (the old plugin's id).
pub(crate) const PLUGIN_ID: &str = "PlexSync";

/// Kind of a setting, as Stash's manifest declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Number,
    Boolean,
}

/// One setting: its name, type, what it does. The manifest's `settings`
/// must list exactly the `in_stash` ones (a test checks).
pub struct SettingDef {
    pub key: &'static str,
    pub kind: Kind,
    pub display: &'static str,
    pub description: &'static str,
    /// Shown in Stash's plugin settings (others: CLI, env, TOML only).
    pub in_stash: bool,
}

macro_rules! settings {
    ($( $key:literal, $kind:ident, $stash:literal, $display:literal, $desc:literal; )*) => {
        pub const SETTINGS: &[SettingDef] = &[
            $( SettingDef { key: $key, kind: Kind::$kind, display: $display, description: $desc, in_stash: $stash }, )*
        ];
    };
}

settings! {
    "plexUrl", String, true, "Plex URL", "Plex server URL, e.g. http://192.168.1.10:32400. Overrides plexHost/plexPort.";
    "plexHost", String, true, "Plex host (old)", "Old setting: Plex host name or IP; used as https://<host>:<port> when plexUrl is empty.";
    "plexPort", String, true, "Plex port (old)", "Old setting: Plex port (default 32400).";
    "plexToken", String, true, "Plex token", "X-Plex-Token of a Plex user allowed to edit the library.";
    "plexLibraries", String, true, "Plex libraries", "Comma-separated library names to match in; empty means every movie library.";
    "pathMappings", String, true, "Path mappings", "Stash path prefix => Plex path prefix, separated by ';', e.g. /data => /media; D:\\Videos => /mnt/videos. Longest prefix wins.";
    "syncMode", String, true, "Sync mode", "push (default): write metadata into Plex. refresh: only ask Plex to refresh items named by a Plex URL on the scene (old behaviour).";
    "syncFields", String, true, "Fields to sync", "Comma-separated: title, summary, studio, date, genres, actors, directors, collection, tagline, poster, background, contentRating, rating, userRating; 'all' (default) for every one.";
    "actorImages", Boolean, true, "Actor images", "Send performer photo URLs with actors. Plex's apps fetch them through Plex's cloud, which cannot reach a LAN address: on a LAN they do not show. Stash must let Plex in without a login.";
    "contentRating", String, true, "Content rating", "Plex content rating written to every synced item (default XXX, as StashPlexAgent did; Plex's managed users are restricted by it). Empty leaves Plex's field alone.";
    "taglineSource", String, true, "Tagline source", "What becomes the Plex tagline: none (default), code (studio code), url (first URL), director.";
    "preservePlexEdits", Boolean, true, "Preserve Plex edits", "Never overwrite a field a person edited in Plex (Plex locks what a person edits); values Plex's agent filled in and the frames Plex extracts for posters are still replaced.";
    "skipUnorganized", Boolean, true, "Skip unorganized", "Old setting (default on): scenes not marked organized in Stash are not synced. Set it off to sync every scene.";
    "cleanTitles", Boolean, true, "Clean titles", "Old setting (opt-in): rewrite Stash titles to ASCII without leading punctuation or file-type words, in Stash.";
    "tagStashIDs", Boolean, true, "Tag stash-box ids", "Old setting: add the tagID_* Stash tags to scenes according to their stash-box endpoints.";
    "tagID_emptystashid", String, true, "Tag id: no stash id", "Stash tag id added to scenes without any stash-box id (with tagStashIDs).";
    "tagID_stashdb", String, true, "Tag id: StashDB", "Stash tag id for scenes matched on stashdb.org.";
    "tagID_pmvstash", String, true, "Tag id: PMV Stash", "Stash tag id for scenes matched on pmvstash.org.";
    "tagID_porndb", String, true, "Tag id: ThePornDB", "Stash tag id for scenes matched on theporndb.net.";
    "tagID_fansdb", String, true, "Tag id: FansDB", "Stash tag id for scenes matched on fansdb.cc.";
    "tagID_javstash", String, true, "Tag id: JAVStash", "Stash tag id for scenes matched on javstash.org.";
    "plexCaFile", String, true, "Plex CA file", "PEM file of a CA to trust for Plex's HTTPS certificate (self-signed servers).";
    "plexInsecure", Boolean, true, "Skip TLS verification", "Accept any Plex certificate (what the old plugin did). Logged as a warning at every start.";
    "requestTimeoutSecs", Number, true, "Request timeout", "Seconds before a Plex request counts as failed (default 30).";
    "partialScan", Boolean, true, "Scan new folders", "When a scene is not in Plex yet, ask Plex to scan that scene's folder (default on).";
    "notInPlexHours", Number, true, "Wait for Plex (hours)", "How long a scene Plex has not scanned is retried before it becomes a dead letter (default 24).";
    "outageMaxDays", Number, true, "Outage limit (days)", "How long updates wait through a Plex or Stash outage before they become dead letters (default 7).";
    "plexConcurrency", Number, true, "Deliveries at once", "Most scenes delivered to Plex at the same time (1-32, default 8). PlexSync starts at one and goes higher only while Plex answers as fast; any Plex error drops it back to one.";
    "drainPerSec", Number, true, "Drain rate after outage", "Scenes per second delivered in the first minute after Plex comes back (default 10).";
    "retryScale", Number, false, "Retry scale", "Multiplies every retry and probe delay (default 1); smaller values are for tests.";
    "workerIdleSecs", Number, false, "Worker idle time", "Seconds the worker the plugin starts stays alive with an empty queue, watching Stash for changes, before it exits (default 600).";
    "leaseSecs", Number, false, "Lease", "Seconds a worker owns a claimed scene; a killed worker's scenes return after this (default 300).";
    "stashUrl", String, false, "Stash URL", "CLI/daemon: Stash's URL, e.g. http://localhost:9999 (the plugin gets it from Stash).";
    "stashApiKey", String, false, "Stash API key", "CLI/daemon: Stash API key, when Stash has a login.";
    "stashSession", String, false, "Stash session", "Stash session cookie value (the plugin hands its own to the worker it starts).";
    "dataDir", String, false, "Data folder", "Where the queue database lives (default: <Stash config folder>/plexsync).";
    "daemonListen", String, false, "Daemon address", "Daemon: address of its HTTP endpoints (default 127.0.0.1:9977); anything but loopback needs daemonToken.";
    "daemonToken", String, false, "Daemon token", "Daemon: token a request must carry (Authorization: Bearer …) when daemonListen is not loopback.";
    "reconcileHours", Number, false, "Reconcile every (hours)", "Daemon: hours between scheduled reconciles (default 24; 0 turns them off).";
    "daemonHosts", String, false, "Daemon names", "Daemon: more names it answers to, comma-separated (a reverse proxy's, a LAN name); IP addresses and localhost always work.";
    "provider", Boolean, false, "Metadata provider", "Daemon: also serve a Plex metadata provider, so Plex pulls Stash's metadata at scan and refresh time (default off; see docs/provider.md).";
    "providerSecret", String, false, "Provider secret", "Daemon: the secret path segment of the provider's URL (at least 16 letters, digits, - or _); by default a random one kept in the data folder.";
    "UseFormattedTitle", Boolean, true, "Use a formatted title for Plex using Stash metadata", "StashPlexAgent preference (default off): the Plex title follows TitleFormat.";
    "RemovePerformerFromTitle", Boolean, true, "Remove Performer Names from Stash Title", "StashPlexAgent preference (default on): with a formatted title, a leading performer name and ' - ' are taken off the Stash title.";
    "TitleFormat", String, true, "Title format to use if enabled (available variables: performer, title, date, studio, filename). Use IgnoreTags to ignore a performer from title.", "StashPlexAgent preference (default '{performer} - {title}'). A variable without a value takes its separator with it.";
    "IncludeGalleryImages", Boolean, true, "Include attached Gallery images in addition to default poster?", "StashPlexAgent preference (default off): the images of the scene's galleries are uploaded as extra posters and backgrounds; the scene's cover stays the selected poster.";
    "SortGalleryImages", Boolean, true, "If including gallery images, auto sort into poster/background based on orientation?", "StashPlexAgent preference (default off): portrait gallery images become posters, landscape ones backgrounds (else each is both).";
    "AppendPerformerTags", Boolean, true, "Include Performer Tags with the scraped scene tags?", "StashPlexAgent preference (default off): the performers' tags are added to the genres.";
    "IgnoreTags", String, true, "Stash Tag ID numbers to ignore (comma separated, 0 to disable)", "StashPlexAgent preference: tags with these ids never become genres or collections, and a performer with one is left out of the title. Tags whose name contains 'ambiguous' are always left out.";
    "CreateTagCollectionTags", String, true, "Stash Tag ID numbers create Collections from (comma separated, 0 to disable)", "StashPlexAgent preference: these tags become collections named as the tag (with CreateAllTagCollectionTags: every tag but these).";
    "CreateAllTagCollectionTags", Boolean, true, "Create Collections from ALL Tags (If TRUE then option above will exclude instead of include tags)", "StashPlexAgent preference (default off).";
    "AddOrganizedCollectionTag", Boolean, true, "Auto add media marked as organized into a Plex Collection", "StashPlexAgent preference (default off).";
    "OrganizedCollectionTagName", String, true, "Name for the collection containing all media marked as organized in Stash", "StashPlexAgent preference (default Organized).";
    "CreateSiteCollectionTags", Boolean, true, "Auto create Plex Collection tags for scene Site", "StashPlexAgent preference (default on): a collection '<prefix><studio>'.";
    "CustomSiteCollectionPrefix", Boolean, true, "Use a custom prefix for site collections?  If False the box below is ignored.", "StashPlexAgent preference (default on); off: the site collection is the bare studio name.";
    "PrefixSiteCollectionTags", String, true, "Prefix for Site Collection Names (The Site name will be appended to this value)", "StashPlexAgent preference (default 'Site: ').";
    "CreateStudioCollectionTags", Boolean, true, "Auto create Plex Collection tags for scene Studio", "StashPlexAgent preference (default on): a collection '<prefix><parent studio>' (Stash's parent studio is the agent's studio). collectionParentStudio is its alias.";
    "UseSiteForStudioCollectionTags", Boolean, true, "If Studio is not defined, use Site instead (In Stash, Studio is the parent of the scene Studio)", "StashPlexAgent preference (default off).";
    "CustomStudioCollectionPrefix", Boolean, true, "Use a custom prefix for studio collections?  If False the box below is ignored.", "StashPlexAgent preference (default on); off: the studio collection is the bare parent studio name.";
    "PrefixStudioCollectionTags", String, true, "Prefix for Studio Collection Names (The Studio name (if available) will be appended to this value)", "StashPlexAgent preference (default 'Studio: ').";
    "CreateMovieCollectionTags", Boolean, true, "Auto create Plex Collection tags for associated scene Movie", "StashPlexAgent preference (default off): a collection per Stash group (Stash's movies are now groups).";
    "PrefixMovieCollectionTags", String, true, "Prefix for Movie Collection Names (The Movie title (if available) will be appended to this value)", "StashPlexAgent preference (default 'Movie: ').";
    "CreatePerformerCollectionTags", Boolean, true, "Auto create Plex Collection tags for associated Performers", "StashPlexAgent preference (default off): a collection per performer.";
    "PrefixPerformerCollectionTags", String, true, "Prefix for Performer Collection Names (The performer (if available) will be appended to this value)", "StashPlexAgent preference (default 'Actor: ').";
    "CreateRatingTags", Boolean, true, "Auto create Plex Collection tags for Stash star rating", "StashPlexAgent preference (default off): a collection 'Rating: <n> Stars', n being Stash's rating100 / 10 rounded down.";
    "SaveUserRatings", Boolean, true, "Auto sync Stash ratings to Plex user ratings", "StashPlexAgent preference (default off): Stash's rating also becomes the Plex user rating of the plexToken's user, and is cleared with it.";
    "RequireURL", Boolean, true, "Require scene URL to be set in Stash to pull metadata", "StashPlexAgent preference (default off): scenes without a URL are not synced.";
    "RequireStashID", Boolean, true, "Require a scene StashID to be set in Stash to pull metadata", "StashPlexAgent preference (default off): scenes without a stash-box id are not synced.";
    "AddPlexURL", Boolean, true, "Adds the Plex media ID to the scene in Stash; allows Stash to update Plex metadata.", "StashPlexAgent preference (default off): plex/library/metadata/<ratingKey> is added to the scene's URLs once per Plex item.";
    "healthOutageSecs", Number, false, "Outage before unhealthy", "Daemon: seconds Plex may be unreachable before /healthz answers 503 (default 300).";
}

/// Push (write metadata) or refresh (old behaviour: ask the agent to pull).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Push,
    Refresh,
}

/// A Plex field PlexSync can own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Title,
    Summary,
    Studio,
    Date,
    Genres,
    Actors,
    Directors,
    Collection,
    Tagline,
    Poster,
    Background,
    ContentRating,
    Rating,
    UserRating,
}

impl Field {
    pub(crate) const ALL: [Field; 14] = [
        Self::Title,
        Self::Summary,
        Self::Studio,
        Self::Date,
        Self::Genres,
        Self::Actors,
        Self::Directors,
        Self::Collection,
        Self::Tagline,
        Self::Poster,
        Self::Background,
        Self::ContentRating,
        Self::Rating,
        Self::UserRating,
    ];

    /// Name in `syncFields` and in the stored hashes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::Summary => "summary",
            Self::Studio => "studio",
            Self::Date => "date",
            Self::Genres => "genres",
            Self::Actors => "actors",
            Self::Directors => "directors",
            Self::Collection => "collection",
            Self::Tagline => "tagline",
            Self::Poster => "poster",
            Self::Background => "background",
            Self::ContentRating => "contentRating",
            Self::Rating => "rating",
            Self::UserRating => "userRating",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// Where the Plex tagline comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaglineSource {
    None,
    Code,
    Url,
    Director,
}

/// One `stash prefix => plex prefix` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathMap {
    pub stash: String,
    pub plex: String,
}

/// Stash tag ids the old `tagStashIDs` behaviour adds, by endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StashIdTags {
    pub empty: Option<String>,
    /// (endpoint host fragment, tag id)
    pub by_endpoint: Vec<(&'static str, String)>,
}

/// Connection options for one server.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra CA certificate (PEM) to trust, e.g. a self-signed Plex certificate.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only by explicit setting; logged at each start.
    pub insecure: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            ca_file: None,
            insecure: false,
        }
    }
}

/// Resolved settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub plex_url: Option<Url>,
    pub plex_token: Option<Secret>,
    pub libraries: Vec<String>,
    pub path_maps: Vec<PathMap>,
    pub mode: Mode,
    pub fields: Vec<Field>,
    pub actor_images: bool,
    /// What StashPlexAgent's preferences shaped, and the content rating.
    pub agent: AgentPrefs,
    pub tagline: TaglineSource,
    pub preserve_plex_edits: bool,
    pub skip_unorganized: bool,
    pub clean_titles: bool,
    pub tag_stash_ids: bool,
    pub stash_id_tags: StashIdTags,
    pub plex_http: HttpOptions,
    pub stash_url: Option<Url>,
    pub stash_api_key: Option<Secret>,
    pub stash_session: Option<Secret>,
    pub data_dir: Option<PathBuf>,
    pub retry: RetrySettings,
    pub daemon: DaemonSettings,
}

/// The library StashPlexAgent wrote, by its preferences (same names, same
/// meaning; `docs/migration.md` lists where PlexSync differs on purpose).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentPrefs {
    /// Empty: Plex's content rating is left alone.
    pub content_rating: String,
    pub formatted_title: bool,
    pub remove_performer_from_title: bool,
    pub title_format: String,
    pub gallery_images: bool,
    pub sort_gallery_images: bool,
    pub append_performer_tags: bool,
    /// Stash tag ids never sent as genres or collections.
    pub ignore_tags: Vec<String>,
    /// Stash tag ids that become collections (or, with
    /// `all_tag_collections`, the ones that do not).
    pub tag_collections: Vec<String>,
    pub all_tag_collections: bool,
    /// The collection organized scenes join, when on.
    pub organized_collection: Option<String>,
    /// Each collection kind's prefix, when the kind is on.
    pub site_collection: Option<String>,
    pub studio_collection: Option<String>,
    pub site_for_studio: bool,
    pub movie_collection: Option<String>,
    pub performer_collection: Option<String>,
    pub rating_collection: bool,
    pub user_ratings: bool,
    pub require_url: bool,
    pub require_stash_id: bool,
    pub add_plex_url: bool,
}

impl Default for AgentPrefs {
    /// The agent's `DefaultPrefs.json`, and `XXX` as it always wrote.
    fn default() -> Self {
        Self {
            content_rating: "XXX".into(),
            formatted_title: false,
            remove_performer_from_title: true,
            title_format: DEFAULT_TITLE_FORMAT.into(),
            gallery_images: false,
            sort_gallery_images: false,
            append_performer_tags: false,
            ignore_tags: Vec::new(),
            tag_collections: Vec::new(),
            all_tag_collections: false,
            organized_collection: None,
            site_collection: Some(SITE_PREFIX.into()),
            studio_collection: Some(STUDIO_PREFIX.into()),
            site_for_studio: false,
            movie_collection: None,
            performer_collection: None,
            rating_collection: false,
            user_ratings: false,
            require_url: false,
            require_stash_id: false,
            add_plex_url: false,
        }
    }
}

pub(crate) const DEFAULT_TITLE_FORMAT: &str = "{performer} - {title}";
const SITE_PREFIX: &str = "Site: ";
const STUDIO_PREFIX: &str = "Studio: ";
const MOVIE_PREFIX: &str = "Movie: ";
const PERFORMER_PREFIX: &str = "Actor: ";
const ORGANIZED_COLLECTION: &str = "Organized";

/// Old names read as another setting: (alias, setting). Within one layer
/// the setting's own name wins over its alias.
pub const ALIASES: &[(&str, &str)] =
    &[("RequireOrganized", "skipUnorganized"), ("collectionParentStudio", "CreateStudioCollectionTags")];

/// The daemon's HTTP endpoints and schedule.
#[derive(Clone, Debug)]
pub struct DaemonSettings {
    pub listen: String,
    pub token: Option<Secret>,
    /// Zero: no scheduled reconcile.
    pub reconcile_every: Duration,
    pub outage_unhealthy_after: Duration,
    /// Names beyond IP addresses and `localhost` the daemon answers to.
    pub hosts: Vec<String>,
    /// Serve the metadata provider.
    pub provider: bool,
    /// The provider's secret path segment, when set (else one is made).
    pub provider_secret: Option<Secret>,
}

/// Retry knobs (see `retry.rs` for the policy table they scale).
#[derive(Clone, Debug, PartialEq)]
pub struct RetrySettings {
    pub partial_scan: bool,
    pub not_in_plex_window: Duration,
    pub outage_max_age: Duration,
    pub drain_per_sec: f64,
    /// Cap of the adaptive delivery concurrency.
    pub concurrency: usize,
    pub scale: f64,
    pub lease: Duration,
    /// How long the plugin's worker idles before it exits.
    pub worker_idle: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            partial_scan: true,
            not_in_plex_window: Duration::from_secs(24 * 3600),
            outage_max_age: Duration::from_secs(7 * 86_400),
            drain_per_sec: 10.0,
            concurrency: 8,
            scale: 1.0,
            lease: Duration::from_secs(300),
            worker_idle: Duration::from_secs(600),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            plex_url: None,
            plex_token: None,
            libraries: Vec::new(),
            path_maps: Vec::new(),
            mode: Mode::Push,
            fields: Field::ALL.to_vec(),
            actor_images: false,
            agent: AgentPrefs::default(),
            tagline: TaglineSource::None,
            preserve_plex_edits: false,
            skip_unorganized: true,
            clean_titles: false,
            tag_stash_ids: false,
            stash_id_tags: StashIdTags::default(),
            plex_http: HttpOptions::default(),
            stash_url: None,
            stash_api_key: None,
            stash_session: None,
            data_dir: None,
            retry: RetrySettings::default(),
            daemon: DaemonSettings {
                listen: "127.0.0.1:9977".into(),
                token: None,
                reconcile_every: Duration::from_secs(24 * 3600),
                outage_unhealthy_after: Duration::from_secs(300),
                hosts: Vec::new(),
                provider: false,
                provider_secret: None,
            },
        }
    }
}

/// Settings plus what was wrong with the input, each naming setting and fix.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<String>,
}

fn canonical(key: &str) -> String {
    key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

/// Settings from the environment: `PLEXSYNC_<NAME>` for every setting.
pub(crate) fn env_layer() -> Map<String, Value> {
    std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("PLEXSYNC_").map(|name| (name.to_string(), Value::String(v))))
        // The log filter, not a setting (see logging.rs).
        .filter(|(name, _)| name != "LOG")
        .collect()
}

/// Settings from a TOML file (same names as the plugin settings).
pub(crate) fn toml_layer(path: &std::path::Path) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let value = serde_json::to_value(table).map_err(|e| format!("config file {}: {e}", path.display()))?;
    Ok(value.as_object().cloned().unwrap_or_default())
}

/// PlexSync's settings in Stash with the local layers (file,
/// environment, flags) over them.
pub(crate) fn load_over(from_stash: Map<String, Value>, local: &[Map<String, Value>]) -> Loaded {
    let mut layers = vec![from_stash];
    layers.extend(local.iter().cloned());
    load(&layers)
}

/// Reads `layers`, lowest precedence first.
pub fn load(layers: &[Map<String, Value>]) -> Loaded {
    let mut merged: Map<String, Value> = Map::new();
    let mut warnings = Vec::new();
    for layer in layers {
        // Aliases first, so a setting's own name in the same layer wins.
        let mut entries: Vec<(&String, &Value, Option<&'static str>)> =
            layer.iter().map(|(key, value)| (key, value, setting_key(key))).collect();
        entries.sort_by_key(|(key, _, _)| !is_alias(key));
        for (key, value, found) in entries {
            match found {
                Some(def) if !value.is_null() => {
                    merged.insert(def.to_string(), value.clone());
                }
                Some(_) => {}
                None => warnings.push(format!("unknown setting '{key}' is ignored; see docs/settings.md for the list")),
            }
        }
    }
    let mut r = Reader { values: merged, warnings };
    let settings = r.settings();
    Loaded { settings, warnings: r.warnings }
}

/// The setting `key` names, itself or through an alias.
fn setting_key(key: &str) -> Option<&'static str> {
    let canon = canonical(key);
    SETTINGS
        .iter()
        .map(|d| d.key)
        .find(|k| canonical(k) == canon)
        .or_else(|| ALIASES.iter().find(|(alias, _)| canonical(alias) == canon).map(|(_, k)| *k))
}

fn is_alias(key: &str) -> bool {
    let canon = canonical(key);
    ALIASES.iter().any(|(alias, _)| canonical(alias) == canon)
}

struct Reader {
    values: Map<String, Value>,
    warnings: Vec<String>,
}

impl Reader {
    fn string(&mut self, key: &str) -> Option<String> {
        match self.values.get(key)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.warnings.push(format!("setting '{key}' must be text, got {other}; it is ignored"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.values.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                "" => default,
                other => {
                    self.warnings
                        .push(format!("setting '{key}' must be true or false, got '{other}'; using {default}"));
                    default
                }
            },
            Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
            Some(other) => {
                self.warnings.push(format!("setting '{key}' must be true or false, got {other}; using {default}"));
                default
            }
        }
    }

    fn number(&mut self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let value = match self.values.get(key) {
            None => return default,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) if s.trim().is_empty() => return default,
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if (min..=max).contains(&v) => v,
            _ => {
                self.warnings.push(format!("setting '{key}' must be a number from {min} to {max}; using {default}"));
                default
            }
        }
    }

    fn url(&mut self, key: &str) -> Option<Url> {
        let raw = self.string(key)?;
        match Url::parse(&raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                // Only the part before any query or credentials is echoed: a
                // token pasted into the URL must not reach the log.
                let shown = raw.split(['?', '#']).next().unwrap_or("");
                let shown = shown.rsplit_once('@').map_or(shown, |(_, host)| host);
                self.warnings.push(format!(
                    "setting '{key}' must be a URL like http://192.168.1.10:32400, got '{shown}'; it is ignored"
                ));
                None
            }
        }
    }

    fn plex_url(&mut self) -> Option<Url> {
        if let Some(url) = self.url("plexUrl") {
            return Some(url);
        }
        let host = self.string("plexHost")?;
        let port = self.string("plexPort").unwrap_or_else(|| "32400".into());
        // The old plugin's form; built with the URL library, not by concatenation.
        let mut url = Url::parse("https://localhost/").expect("static URL parses");
        let port_ok = port.parse::<u16>().ok();
        if url.set_host(Some(host.trim_start_matches("https://").trim_start_matches("http://"))).is_err()
            || port_ok.is_none()
        {
            self.warnings.push(format!(
                "settings 'plexHost'/'plexPort' do not make a valid address ('{host}', '{port}'); set plexUrl instead"
            ));
            return None;
        }
        url.set_port(port_ok).ok()?;
        Some(url)
    }

    /// Text kept as written (a prefix's trailing space is part of it);
    /// `None` when empty or blank.
    fn verbatim(&mut self, key: &str) -> Option<String> {
        match self.values.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => self.string(key),
        }
    }

    /// A collection kind's prefix when the kind is on: the agent used the
    /// prefix setting when its `Custom…Prefix` switch was on (its default
    /// when the box was empty), and no prefix when it was off.
    fn prefix(&mut self, on: (&str, bool), custom: Option<&str>, key: &str, default: &str) -> Option<String> {
        if !self.boolean(on.0, on.1) {
            return None;
        }
        if let Some(custom) = custom {
            if !self.boolean(custom, true) {
                return Some(String::new());
            }
        }
        Some(self.verbatim(key).unwrap_or_else(|| default.to_string()))
    }

    /// A comma list of Stash ids, where the agent's `0` means none.
    fn id_list(&mut self, key: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for id in self.list(key) {
            if !id.chars().all(|c| c.is_ascii_digit()) {
                self.warnings
                    .push(format!("setting '{key}' must list Stash tag ids (numbers), got '{id}'; it is ignored"));
            } else if id.trim_start_matches('0').is_empty() {
                continue;
            } else {
                ids.push(id.trim_start_matches('0').to_string());
            }
        }
        ids
    }

    fn agent(&mut self) -> AgentPrefs {
        let organized = self.boolean("AddOrganizedCollectionTag", false);
        AgentPrefs {
            content_rating: match self.values.get("contentRating") {
                // Set but empty: leave Plex's field alone.
                Some(Value::String(s)) if s.trim().is_empty() => String::new(),
                _ => self.string("contentRating").unwrap_or_else(|| "XXX".into()),
            },
            formatted_title: self.boolean("UseFormattedTitle", false),
            remove_performer_from_title: self.boolean("RemovePerformerFromTitle", true),
            title_format: self.verbatim("TitleFormat").unwrap_or_else(|| DEFAULT_TITLE_FORMAT.into()),
            gallery_images: self.boolean("IncludeGalleryImages", false),
            sort_gallery_images: self.boolean("SortGalleryImages", false),
            append_performer_tags: self.boolean("AppendPerformerTags", false),
            ignore_tags: self.id_list("IgnoreTags"),
            tag_collections: self.id_list("CreateTagCollectionTags"),
            all_tag_collections: self.boolean("CreateAllTagCollectionTags", false),
            organized_collection: organized
                .then(|| self.verbatim("OrganizedCollectionTagName").unwrap_or_else(|| ORGANIZED_COLLECTION.into())),
            site_collection: self.prefix(
                ("CreateSiteCollectionTags", true),
                Some("CustomSiteCollectionPrefix"),
                "PrefixSiteCollectionTags",
                SITE_PREFIX,
            ),
            studio_collection: self.prefix(
                ("CreateStudioCollectionTags", true),
                Some("CustomStudioCollectionPrefix"),
                "PrefixStudioCollectionTags",
                STUDIO_PREFIX,
            ),
            site_for_studio: self.boolean("UseSiteForStudioCollectionTags", false),
            movie_collection: self.prefix(
                ("CreateMovieCollectionTags", false),
                None,
                "PrefixMovieCollectionTags",
                MOVIE_PREFIX,
            ),
            performer_collection: self.prefix(
                ("CreatePerformerCollectionTags", false),
                None,
                "PrefixPerformerCollectionTags",
                PERFORMER_PREFIX,
            ),
            rating_collection: self.boolean("CreateRatingTags", false),
            user_ratings: self.boolean("SaveUserRatings", false),
            require_url: self.boolean("RequireURL", false),
            require_stash_id: self.boolean("RequireStashID", false),
            add_plex_url: self.boolean("AddPlexURL", false),
        }
    }

    fn list(&mut self, key: &str) -> Vec<String> {
        self.string(key)
            .map(|s| s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
            .unwrap_or_default()
    }

    fn fields(&mut self) -> Vec<Field> {
        let names = self.list("syncFields");
        if names.is_empty() || names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
            return Field::ALL.to_vec();
        }
        let mut fields = Vec::new();
        for name in names {
            match Field::parse(&name) {
                Some(f) if !fields.contains(&f) => fields.push(f),
                Some(_) => {}
                None => self.warnings.push(format!(
                    "setting 'syncFields' names an unknown field '{name}'; known: {}",
                    Field::ALL.map(Field::name).join(", ")
                )),
            }
        }
        fields
    }

    fn path_maps(&mut self) -> Vec<PathMap> {
        let Some(raw) = self.string("pathMappings") else { return Vec::new() };
        let mut maps = Vec::new();
        for rule in raw.split([';', '\n']).map(str::trim).filter(|r| !r.is_empty()) {
            match rule.split_once("=>") {
                Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
                    maps.push(PathMap { stash: a.trim().to_string(), plex: b.trim().to_string() })
                }
                _ => self.warnings.push(format!(
                    "setting 'pathMappings' has a rule '{rule}' without 'stash prefix => plex prefix'; it is ignored"
                )),
            }
        }
        // Longest Stash prefix first, so the most specific rule wins.
        maps.sort_by_key(|m| std::cmp::Reverse(m.stash.len()));
        maps
    }

    fn choice<T: Copy>(&mut self, key: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(raw) = self.string(key) else { return default };
        match options.iter().find(|(name, _)| name.eq_ignore_ascii_case(&raw)) {
            Some((_, v)) => *v,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.warnings.push(format!("setting '{key}' must be one of {}, got '{raw}'", names.join(", ")));
                default
            }
        }
    }

    fn tag_id(&mut self, key: &str) -> Option<String> {
        let id = self.string(key)?;
        if id.chars().all(|c| c.is_ascii_digit()) {
            Some(id)
        } else {
            self.warnings.push(format!("setting '{key}' must be a Stash tag id (a number), got '{id}'"));
            None
        }
    }

    fn settings(&mut self) -> Settings {
        let plex_http = HttpOptions {
            request_timeout: Duration::from_secs_f64(self.number("requestTimeoutSecs", 30.0, 1.0, 600.0)),
            ca_file: self.string("plexCaFile").map(PathBuf::from),
            insecure: self.boolean("plexInsecure", false),
            ..HttpOptions::default()
        };
        let mut by_endpoint = Vec::new();
        for (key, host) in [
            ("tagID_stashdb", "stashdb.org"),
            ("tagID_pmvstash", "pmvstash.org"),
            ("tagID_porndb", "theporndb.net"),
            ("tagID_fansdb", "fansdb.cc"),
            ("tagID_javstash", "javstash.org"),
        ] {
            if let Some(id) = self.tag_id(key) {
                by_endpoint.push((host, id));
            }
        }
        Settings {
            plex_url: self.plex_url(),
            plex_token: self.string("plexToken").map(Secret::new),
            libraries: self.list("plexLibraries"),
            path_maps: self.path_maps(),
            mode: self.choice("syncMode", Mode::Push, &[("push", Mode::Push), ("refresh", Mode::Refresh)]),
            fields: self.fields(),
            actor_images: self.boolean("actorImages", false),
            agent: self.agent(),
            tagline: self.choice(
                "taglineSource",
                TaglineSource::None,
                &[
                    ("none", TaglineSource::None),
                    ("code", TaglineSource::Code),
                    ("url", TaglineSource::Url),
                    ("director", TaglineSource::Director),
                ],
            ),
            preserve_plex_edits: self.boolean("preservePlexEdits", false),
            skip_unorganized: self.boolean("skipUnorganized", true),
            clean_titles: self.boolean("cleanTitles", false),
            tag_stash_ids: self.boolean("tagStashIDs", false),
            stash_id_tags: StashIdTags { empty: self.tag_id("tagID_emptystashid"), by_endpoint },
            plex_http,
            stash_url: self.url("stashUrl"),
            stash_api_key: self.string("stashApiKey").map(Secret::new),
            stash_session: self.string("stashSession").map(Secret::new),
            data_dir: self.string("dataDir").map(PathBuf::from),
            retry: RetrySettings {
                partial_scan: self.boolean("partialScan", true),
                not_in_plex_window: Duration::from_secs_f64(
                    self.number("notInPlexHours", 24.0, 0.0, 24.0 * 365.0) * 3600.0,
                ),
                outage_max_age: Duration::from_secs_f64(self.number("outageMaxDays", 7.0, 0.0, 365.0) * 86_400.0),
                drain_per_sec: self.number("drainPerSec", 10.0, 0.1, 10_000.0),
                concurrency: crate::units::to_usize(crate::units::round(self.number("plexConcurrency", 8.0, 1.0, 32.0))),
                scale: self.number("retryScale", 1.0, 0.0001, 100.0),
                lease: Duration::from_secs_f64(self.number("leaseSecs", 300.0, 0.1, 86_400.0)),
                worker_idle: Duration::from_secs_f64(self.number("workerIdleSecs", 600.0, 0.0, 86_400.0)),
            },
            daemon: DaemonSettings {
                listen: self.string("daemonListen").unwrap_or_else(|| "127.0.0.1:9977".into()),
                token: self.string("daemonToken").map(Secret::new),
                hosts: self.list("daemonHosts"),
                provider: self.boolean("provider", false),
                provider_secret: self.string("providerSecret").map(Secret::new),
                reconcile_every: Duration::from_secs_f64(
                    self.number("reconcileHours", 24.0, 0.0, 24.0 * 365.0) * 3600.0,
                ),
                outage_unhealthy_after: Duration::from_secs_f64(self.number(
                    "healthOutageSecs",
                    300.0,
                    0.0,
                    86_400.0 * 30.0,
                )),
            },
        }
    }
}

impl Settings {
    /// What is missing for delivery, as an instruction to the user.
    pub(crate) fn delivery_problem(&self) -> Option<String> {
        if self.plex_url.is_none() {
            return Some(
                "Plex is not configured: set plexUrl (e.g. http://192.168.1.10:32400) in PlexSync's settings".into(),
            );
        }
        if self.plex_token.as_ref().is_none_or(Secret::is_empty) {
            return Some("plexToken is empty: set it to your X-Plex-Token in PlexSync's settings".into());
        }
        None
    }

    pub(crate) fn owns(&self, field: Field) -> bool {
        self.fields.contains(&field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layer(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn old_settings_still_work() {
        let l = load(&[layer(
            json!({"plexHost": "plex.lan", "plexPort": "32401", "plexToken": "t", "skipUnorganized": false, "tagStashIDs": true, "tagID_stashdb": 12}),
        )]);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let s = l.settings;
        assert_eq!(s.plex_url.unwrap().as_str(), "https://plex.lan:32401/");
        assert!(!s.skip_unorganized && s.tag_stash_ids);
        assert_eq!(s.stash_id_tags.by_endpoint, [("stashdb.org", "12".to_string())]);
    }

    #[test]
    fn later_layers_win_and_names_are_loose() {
        let l = load(&[
            layer(json!({"plexUrl": "http://a:1", "syncFields": "title, genres"})),
            layer(json!({"PLEX_URL": "http://b:2"})),
        ]);
        assert_eq!(l.settings.plex_url.unwrap().as_str(), "http://b:2/");
        assert_eq!(l.settings.fields, [Field::Title, Field::Genres]);
    }

    #[test]
    fn the_agents_preferences_by_their_names_with_its_defaults() {
        let defaults = load(&[]).settings.agent;
        assert_eq!(defaults, AgentPrefs::default());
        assert_eq!(defaults.site_collection.as_deref(), Some("Site: "));
        assert_eq!(defaults.content_rating, "XXX");
        let l = load(&[
            layer(json!({"RequireOrganized": true, "skipUnorganized": false, "PrefixSiteCollectionTags": "Site - ",
                "CustomStudioCollectionPrefix": "false", "IgnoreTags": "0, 12,x", "CreatePerformerCollectionTags": true,
                "PrefixPerformerCollectionTags": "", "contentRating": ""})),
            layer(json!({"CREATE_MOVIE_COLLECTION_TAGS": "true", "collectionParentStudio": false})),
        ]);
        let a = &l.settings.agent;
        assert!(!l.settings.skip_unorganized, "the setting's own name wins over its alias in one layer");
        assert_eq!(a.site_collection.as_deref(), Some("Site - "), "a prefix keeps its spaces");
        assert_eq!(a.studio_collection, None, "the later layer's alias turned it off");
        assert_eq!(a.ignore_tags, ["12"]);
        assert!(l.warnings.iter().any(|w| w.contains("'IgnoreTags'") && w.contains("'x'")), "{:?}", l.warnings);
        assert_eq!(a.performer_collection.as_deref(), Some("Actor: "), "an empty prefix is the default one");
        assert_eq!(a.movie_collection.as_deref(), Some("Movie: "));
        assert_eq!(a.content_rating, "", "set but empty leaves Plex's field alone");
        assert!(!load(&[layer(json!({"RequireOrganized": false}))]).settings.skip_unorganized, "the alias alone");
        assert!(load(&[layer(json!({"REQUIRE_ORGANIZED": "true"}))]).settings.skip_unorganized);
        let custom_off = load(&[layer(json!({"CustomSiteCollectionPrefix": false}))]).settings.agent;
        assert_eq!(custom_off.site_collection.as_deref(), Some(""));
    }

    #[test]
    fn every_setting_and_alias_is_in_the_settings_docs() {
        let docs = include_str!("../../../docs/settings.md");
        for key in SETTINGS.iter().map(|d| d.key).chain(ALIASES.iter().map(|(alias, _)| *alias)) {
            let shown = key.starts_with("tagID_") || docs.contains(&format!("`{key}`"));
            assert!(shown, "docs/settings.md does not name `{key}`");
        }
    }

    #[test]
    fn bad_values_name_the_setting_and_fall_back() {
        let l = load(&[layer(json!({"plexUrl": "plex:32400", "skipUnorganized": "maybe", "syncMode": "pull",
            "pathMappings": "/a => /b; nonsense", "syncFields": "title,colour", "bogus": 1, "requestTimeoutSecs": -3}))]);
        let all = l.warnings.join("\n");
        for needle in [
            "'plexUrl'",
            "'skipUnorganized'",
            "'syncMode'",
            "'pathMappings'",
            "'colour'",
            "'bogus'",
            "'requestTimeoutSecs'",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert!(l.settings.skip_unorganized);
        assert_eq!(l.settings.mode, Mode::Push);
        assert_eq!(l.settings.path_maps, [PathMap { stash: "/a".into(), plex: "/b".into() }]);
        assert!(l.settings.delivery_problem().unwrap().contains("plexUrl"));
    }
}
