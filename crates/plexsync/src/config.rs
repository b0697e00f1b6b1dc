//! Settings: one table of every setting, read from layers in order of
//! precedence (CLI flags, `PLEXSYNC_*` environment, TOML file, Stash's
//! plugin settings). Names are matched case-insensitively and without `_`
//! or `-`, so `plexUrl`, `plex_url` and `PLEXSYNC_PLEX_URL` are one setting.
//! A bad value never stops the program: it is reported with the fix and the
//! default is used. A setting's default (and a number's range) is written
//! once, in the table; the resolver, `Settings::default()`, the manifest's
//! descriptions and (by a test) docs/settings.md follow it.

use std::collections::BTreeSet;
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

/// One setting: its name, type, default, what it does. The manifest's
/// `settings` must list exactly the `in_stash` ones (a test checks).
pub struct SettingDef {
    pub key: &'static str,
    pub kind: Kind,
    /// What an unset, blank or invalid value resolves to; the only place a
    /// default is written (the description's "Default: …" is made from it).
    pub default: DefaultValue,
    pub display: &'static str,
    pub description: &'static str,
    /// Shown in Stash's plugin settings (others: CLI, env, TOML only).
    pub in_stash: bool,
}

/// A setting's default by its kind; a number also has the range enforced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultValue {
    /// Empty: no default (the setting is unset).
    Text(&'static str),
    Flag(bool),
    Number {
        value: f64,
        min: f64,
        max: f64,
    },
}

/// Rows are `key, Kind = default [in min..=max], in Stash, label, text;`.
/// A number needs its range; the description gets " Default: …" appended
/// so Stash shows the default the resolver uses.
macro_rules! settings {
    (@default String, $d:tt) => { DefaultValue::Text($d) };
    (@default Boolean, $d:tt) => { DefaultValue::Flag($d) };
    (@default Number, $d:tt, $min:tt, $max:tt) => {
        DefaultValue::Number { value: $d as f64, min: $min as f64, max: $max as f64 }
    };
    (@describe $desc:literal, String, "") => { $desc };
    (@describe $desc:literal, String, $d:tt) => { concat!($desc, " Default: '", $d, "'.") };
    (@describe $desc:literal, Boolean, true) => { concat!($desc, " Default: on.") };
    (@describe $desc:literal, Boolean, false) => { concat!($desc, " Default: off.") };
    (@describe $desc:literal, Number, $d:tt, $min:tt, $max:tt) => {
        concat!($desc, " Default: ", stringify!($d), " (", stringify!($min), " to ", stringify!($max), ").")
    };
    ($( $key:literal, $kind:ident = $default:tt $(in $min:tt ..= $max:tt)?, $stash:literal, $display:literal, $desc:literal; )*) => {
        pub const SETTINGS: &[SettingDef] = &[
            $( SettingDef {
                key: $key,
                kind: Kind::$kind,
                default: settings!(@default $kind, $default $(, $min, $max)?),
                display: $display,
                description: settings!(@describe $desc, $kind, $default $(, $min, $max)?),
                in_stash: $stash,
            }, )*
        ];
    };
}

settings! {
    "plexUrl", String = "", true, "Plex URL", "Plex server URL, e.g. http://192.168.1.10:32400. Overrides plexHost/plexPort.";
    "plexHost", String = "", true, "Plex host (old)", "Old setting: Plex host name or IP; used as https://<host>:<port> when plexUrl is empty.";
    "plexPort", String = "32400", true, "Plex port (old)", "Old setting: Plex port.";
    "plexToken", String = "", true, "Plex token", "X-Plex-Token of a Plex user allowed to edit the library.";
    "plexLibraries", String = "", true, "Plex libraries", "Comma-separated library names to match in; empty means every movie library.";
    "pathMappings", String = "", true, "Path mappings", "Stash path prefix => Plex path prefix, separated by ';', e.g. /data => /media; D:\\Videos => /mnt/videos. Longest prefix wins.";
    "syncMode", String = "push", true, "Sync mode", "push: write metadata into Plex. refresh: only ask Plex to refresh items named by a Plex URL on the scene (old behaviour).";
    "syncFields", String = "all", true, "Fields to sync", "Comma-separated: title, summary, studio, date, genres, actors, directors, collection, tagline, poster, background, contentRating, rating, userRating; 'all' for every one.";
    "actorImages", Boolean = false, true, "Actor images", "Send performer photo URLs with actors. Plex's apps fetch them through Plex's cloud, which cannot reach a LAN address: on a LAN they do not show. Stash must let Plex in without a login.";
    "contentRating", String = "XXX", true, "Content rating", "Plex content rating written to every synced item, as StashPlexAgent did (Plex's managed users are restricted by it). Empty leaves Plex's field alone.";
    "taglineSource", String = "none", true, "Tagline source", "What becomes the Plex tagline: none, code (studio code), url (first URL), director.";
    "preservePlexEdits", Boolean = false, true, "Preserve Plex edits", "Never overwrite a field a person edited in Plex (Plex locks what a person edits); values Plex's agent filled in and the frames Plex extracts for posters are still replaced.";
    "skipUnorganized", Boolean = true, true, "Skip unorganized", "Old setting: scenes not marked organized in Stash are not synced. Set it off to sync every scene.";
    "cleanTitles", Boolean = false, true, "Clean titles", "Old setting: rewrite Stash titles to ASCII without leading punctuation or file-type words, in Stash.";
    "tagStashIDs", Boolean = false, true, "Tag stash-box ids", "Old setting: add the tagID_* Stash tags to scenes according to their stash-box endpoints.";
    "tagID_emptystashid", String = "", true, "Tag id: no stash id", "Stash tag id added to scenes without any stash-box id (with tagStashIDs).";
    "tagID_stashdb", String = "", true, "Tag id: StashDB", "Stash tag id for scenes matched on stashdb.org.";
    "tagID_pmvstash", String = "", true, "Tag id: PMV Stash", "Stash tag id for scenes matched on pmvstash.org.";
    "tagID_porndb", String = "", true, "Tag id: ThePornDB", "Stash tag id for scenes matched on theporndb.net.";
    "tagID_fansdb", String = "", true, "Tag id: FansDB", "Stash tag id for scenes matched on fansdb.cc.";
    "tagID_javstash", String = "", true, "Tag id: JAVStash", "Stash tag id for scenes matched on javstash.org.";
    "plexCaFile", String = "", true, "Plex CA file", "PEM file of a CA to trust for Plex's HTTPS certificate (self-signed servers).";
    "plexInsecure", Boolean = false, true, "Skip TLS verification", "Accept any Plex certificate (what the old plugin did). Logged as a warning at every start.";
    "requestTimeoutSecs", Number = 30 in 1..=600, true, "Request timeout", "Seconds before a Plex request counts as failed.";
    "partialScan", Boolean = true, true, "Scan new folders", "When a scene is not in Plex yet, ask Plex to scan that scene's folder.";
    "notInPlexHours", Number = 24 in 0..=8760, true, "Wait for Plex (hours)", "How long a scene Plex has not scanned is retried before it becomes a dead letter.";
    "outageMaxDays", Number = 7 in 0..=365, true, "Outage limit (days)", "How long updates wait through a Plex or Stash outage before they become dead letters.";
    "plexConcurrency", Number = 8 in 1..=32, true, "Deliveries at once", "Most scenes delivered to Plex at the same time. PlexSync starts at one and goes higher only while Plex answers as fast; any Plex error drops it back to one.";
    "drainPerSec", Number = 10 in 0.1..=10000, true, "Drain rate after outage", "Scenes per second delivered in the first minute after Plex comes back.";
    "retryScale", Number = 1 in 0.0001..=100, false, "Retry scale", "Multiplies every retry and probe delay; smaller values are for tests.";
    "workerIdleSecs", Number = 600 in 0..=86400, false, "Worker idle time", "Seconds the worker the plugin starts stays alive with an empty queue, watching Stash for changes, before it exits.";
    "leaseSecs", Number = 300 in 0.1..=86400, false, "Lease", "Seconds a worker owns a claimed scene; a killed worker's scenes return after this.";
    "stashUrl", String = "", false, "Stash URL", "CLI/daemon: Stash's URL, e.g. http://localhost:9999 (the plugin gets it from Stash).";
    "stashApiKey", String = "", false, "Stash API key", "CLI/daemon: Stash API key, when Stash has a login.";
    "stashSession", String = "", false, "Stash session", "Stash session cookie value (the plugin hands its own to the worker it starts).";
    "dataDir", String = "", false, "Data folder", "Where the queue database lives; unset: <Stash config folder>/plexsync.";
    "daemonListen", String = "127.0.0.1:9977", false, "Daemon address", "Daemon: address of its HTTP endpoints; anything but loopback needs daemonToken.";
    "daemonToken", String = "", false, "Daemon token", "Daemon: token a request must carry (Authorization: Bearer …) when daemonListen is not loopback.";
    "reconcileHours", Number = 24 in 0..=8760, false, "Reconcile every (hours)", "Daemon: hours between scheduled reconciles; 0 turns them off.";
    "daemonHosts", String = "", false, "Daemon names", "Daemon: more names it answers to, comma-separated (a reverse proxy's, a LAN name); IP addresses and localhost always work.";
    "provider", Boolean = false, false, "Metadata provider", "Daemon: also serve a Plex metadata provider, so Plex pulls Stash's metadata at scan and refresh time (see docs/provider.md).";
    "providerSecret", String = "", false, "Provider secret", "Daemon: the secret path segment of the provider's URL (at least 16 letters, digits, - or _); unset: a random one kept in the data folder.";
    "UseFormattedTitle", Boolean = false, true, "Use a formatted title for Plex using Stash metadata", "StashPlexAgent preference: the Plex title follows TitleFormat.";
    "RemovePerformerFromTitle", Boolean = true, true, "Remove Performer Names from Stash Title", "StashPlexAgent preference: with a formatted title, a leading performer name and ' - ' are taken off the Stash title.";
    "TitleFormat", String = "{performer} - {title}", true, "Title format to use if enabled (available variables: performer, title, date, studio, filename). Use IgnoreTags to ignore a performer from title.", "StashPlexAgent preference. A variable without a value takes its separator with it.";
    "IncludeGalleryImages", Boolean = false, true, "Include attached Gallery images in addition to default poster?", "StashPlexAgent preference: the images of the scene's galleries are uploaded as extra posters and backgrounds; the scene's cover stays the selected poster.";
    "SortGalleryImages", Boolean = false, true, "If including gallery images, auto sort into poster/background based on orientation?", "StashPlexAgent preference: portrait gallery images become posters, landscape ones backgrounds (else each is both).";
    "AppendPerformerTags", Boolean = false, true, "Include Performer Tags with the scraped scene tags?", "StashPlexAgent preference: the performers' tags are added to the genres.";
    "IgnoreTags", String = "0", true, "Stash Tag ID numbers to ignore (comma separated, 0 to disable)", "StashPlexAgent preference: tags with these ids never become genres or collections, and a performer with one is left out of the title. Tags whose name contains 'ambiguous' are always left out.";
    "CreateTagCollectionTags", String = "0", true, "Stash Tag ID numbers create Collections from (comma separated, 0 to disable)", "StashPlexAgent preference: these tags become collections named as the tag (with CreateAllTagCollectionTags: every tag but these).";
    "CreateAllTagCollectionTags", Boolean = false, true, "Create Collections from ALL Tags (If TRUE then option above will exclude instead of include tags)", "StashPlexAgent preference.";
    "AddOrganizedCollectionTag", Boolean = false, true, "Auto add media marked as organized into a Plex Collection", "StashPlexAgent preference.";
    "OrganizedCollectionTagName", String = "Organized", true, "Name for the collection containing all media marked as organized in Stash", "StashPlexAgent preference.";
    "CreateSiteCollectionTags", Boolean = true, true, "Auto create Plex Collection tags for scene Site", "StashPlexAgent preference: a collection '<prefix><studio>'.";
    "CustomSiteCollectionPrefix", Boolean = true, true, "Use a custom prefix for site collections?  If False the box below is ignored.", "StashPlexAgent preference; off: the site collection is the bare studio name.";
    "PrefixSiteCollectionTags", String = "Site: ", true, "Prefix for Site Collection Names (The Site name will be appended to this value)", "StashPlexAgent preference.";
    "CreateStudioCollectionTags", Boolean = true, true, "Auto create Plex Collection tags for scene Studio", "StashPlexAgent preference: a collection '<prefix><parent studio>' (Stash's parent studio is the agent's studio). collectionParentStudio is its alias.";
    "UseSiteForStudioCollectionTags", Boolean = false, true, "If Studio is not defined, use Site instead (In Stash, Studio is the parent of the scene Studio)", "StashPlexAgent preference.";
    "CustomStudioCollectionPrefix", Boolean = true, true, "Use a custom prefix for studio collections?  If False the box below is ignored.", "StashPlexAgent preference; off: the studio collection is the bare parent studio name.";
    "PrefixStudioCollectionTags", String = "Studio: ", true, "Prefix for Studio Collection Names (The Studio name (if available) will be appended to this value)", "StashPlexAgent preference.";
    "CreateMovieCollectionTags", Boolean = false, true, "Auto create Plex Collection tags for associated scene Movie", "StashPlexAgent preference: a collection per Stash group (Stash's movies are now groups).";
    "PrefixMovieCollectionTags", String = "Movie: ", true, "Prefix for Movie Collection Names (The Movie title (if available) will be appended to this value)", "StashPlexAgent preference.";
    "CreatePerformerCollectionTags", Boolean = false, true, "Auto create Plex Collection tags for associated Performers", "StashPlexAgent preference: a collection per performer.";
    "PrefixPerformerCollectionTags", String = "Actor: ", true, "Prefix for Performer Collection Names (The performer (if available) will be appended to this value)", "StashPlexAgent preference.";
    "CreateRatingTags", Boolean = false, true, "Auto create Plex Collection tags for Stash star rating", "StashPlexAgent preference: a collection 'Rating: <n> Stars', n being Stash's rating100 / 10 rounded down.";
    "SaveUserRatings", Boolean = false, true, "Auto sync Stash ratings to Plex user ratings", "StashPlexAgent preference: Stash's rating also becomes the Plex user rating of the plexToken's user, and is cleared with it.";
    "RequireURL", Boolean = false, true, "Require scene URL to be set in Stash to pull metadata", "StashPlexAgent preference: scenes without a URL are not synced.";
    "RequireStashID", Boolean = false, true, "Require a scene StashID to be set in Stash to pull metadata", "StashPlexAgent preference: scenes without a stash-box id are not synced.";
    "AddPlexURL", Boolean = false, true, "Adds the Plex media ID to the scene in Stash; allows Stash to update Plex metadata.", "StashPlexAgent preference: plex/library/metadata/<ratingKey> is added to the scene's URLs once per Plex item.";
    "healthOutageSecs", Number = 300 in 0..=2592000, false, "Outage before unhealthy", "Daemon: seconds Plex may be unreachable before /healthz answers 503.";
}

/// The table's row for `key`. A key missing from the table (a test
/// forbids it) reads as text without a default rather than panicking.
fn def(key: &str) -> &'static SettingDef {
    static UNLISTED: SettingDef = SettingDef {
        key: "",
        kind: Kind::String,
        default: DefaultValue::Text(""),
        display: "",
        description: "",
        in_stash: false,
    };
    SETTINGS.iter().find(|d| d.key == key).unwrap_or(&UNLISTED)
}

impl SettingDef {
    /// The text default, when there is one.
    fn text(&self) -> Option<String> {
        match self.default {
            DefaultValue::Text(t) if !t.is_empty() => Some(t.to_string()),
            _ => None,
        }
    }

    /// The default as Stash stores a value of its kind (whole numbers as
    /// integers; an empty text as no value), to show beside a set one.
    pub(crate) fn default_json(&self) -> serde_json::Value {
        match self.default {
            DefaultValue::Text("") => serde_json::Value::Null,
            DefaultValue::Text(t) => t.into(),
            DefaultValue::Flag(b) => b.into(),
            DefaultValue::Number { value, .. } if value.fract() == 0.0 => crate::units::round(value).into(),
            DefaultValue::Number { value, .. } => value.into(),
        }
    }

    /// A number's (default, min, max); zeros for a setting that is no number.
    fn range(&self) -> (f64, f64, f64) {
        match self.default {
            DefaultValue::Number { value, min, max } => (value, min, max),
            _ => (0.0, 0.0, 0.0),
        }
    }
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
    /// The agent's `DefaultPrefs.json`, and `XXX` as it always wrote: the
    /// settings table's defaults.
    fn default() -> Self {
        Settings::default().agent
    }
}

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
    /// The settings table's defaults.
    fn default() -> Self {
        Settings::default().retry
    }
}

impl Default for Settings {
    /// What no settings at all resolve to, so that a default is written in
    /// one place: the settings table.
    fn default() -> Self {
        load(&[]).settings
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
    resolve(layers).0
}

/// `load`, plus the keys the resolver looked up (tests hold them to the
/// table).
fn resolve(layers: &[Map<String, Value>]) -> (Loaded, BTreeSet<&'static str>) {
    let (values, warnings) = merge(layers);
    let mut r = Reader { values, warnings, read: BTreeSet::new() };
    let settings = r.settings();
    (Loaded { settings, warnings: r.warnings }, r.read)
}

/// The layers as one map by setting name, later layers winning, and a
/// warning for each name that is no setting.
fn merge(layers: &[Map<String, Value>]) -> (Map<String, Value>, Vec<String>) {
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
    (merged, warnings)
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

/// The merged values, read setting by setting, defaults from the table.
struct Reader {
    values: Map<String, Value>,
    warnings: Vec<String>,
    /// Every key looked up, so a test can hold the resolver to the table.
    read: BTreeSet<&'static str>,
}

impl Reader {
    /// The value set for `key`; `None` when unset or blank (Stash keeps an
    /// emptied field as ""), which is when the table's default applies.
    fn set(&mut self, key: &'static str) -> Option<Value> {
        self.read.insert(key);
        match self.values.get(key)? {
            Value::String(s) if s.trim().is_empty() => None,
            v => Some(v.clone()),
        }
    }

    /// Text, trimmed; the table's default when unset or not text.
    fn string(&mut self, key: &'static str) -> Option<String> {
        let default = def(key).text();
        match self.set(key) {
            None => default,
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                self.warnings.push(format!("setting '{key}' must be text, got {other}; it is ignored"));
                default
            }
        }
    }

    /// On or off; the table's default when unset or not a switch.
    fn boolean(&mut self, key: &'static str) -> bool {
        let default = def(key).default == DefaultValue::Flag(true);
        match self.set(key) {
            None => default,
            Some(Value::Bool(b)) => b,
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
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

    /// A number in the table's range; its default when unset or outside.
    fn number(&mut self, key: &'static str) -> f64 {
        let (default, min, max) = def(key).range();
        let value = match self.set(key) {
            None => return default,
            Some(Value::Number(n)) => n.as_f64(),
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

    /// A number setting counted in `unit` seconds (3600 for hours).
    fn duration(&mut self, key: &'static str, unit: f64) -> Duration {
        Duration::from_secs_f64(self.number(key) * unit)
    }

    fn url(&mut self, key: &'static str) -> Option<Url> {
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
        let port = self.string("plexPort").unwrap_or_default();
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

    /// Text kept as written (a prefix's trailing space is part of it); the
    /// table's default when unset or blank.
    fn verbatim(&mut self, key: &'static str) -> Option<String> {
        match self.set(key) {
            Some(Value::String(s)) => Some(s),
            _ => self.string(key),
        }
    }

    /// A collection kind's prefix when the kind is on: the agent used the
    /// prefix setting when its `Custom…Prefix` switch was on (its default
    /// when the box was empty), and no prefix when it was off.
    fn prefix(&mut self, on: &'static str, custom: Option<&'static str>, key: &'static str) -> Option<String> {
        if !self.boolean(on) {
            return None;
        }
        if let Some(custom) = custom {
            if !self.boolean(custom) {
                return Some(String::new());
            }
        }
        Some(self.verbatim(key).unwrap_or_default())
    }

    /// A comma list of Stash ids, where the agent's `0` means none.
    fn id_list(&mut self, key: &'static str) -> Vec<String> {
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

    /// The content rating written; set but empty leaves Plex's field
    /// alone, so here (only) blank is not the default.
    fn content_rating(&mut self) -> String {
        let blank = matches!(self.values.get("contentRating"), Some(Value::String(s)) if s.trim().is_empty());
        let rating = self.string("contentRating").unwrap_or_default();
        if blank {
            String::new()
        } else {
            rating
        }
    }

    fn agent(&mut self) -> AgentPrefs {
        let organized = self.boolean("AddOrganizedCollectionTag");
        AgentPrefs {
            content_rating: self.content_rating(),
            formatted_title: self.boolean("UseFormattedTitle"),
            remove_performer_from_title: self.boolean("RemovePerformerFromTitle"),
            title_format: self.verbatim("TitleFormat").unwrap_or_default(),
            gallery_images: self.boolean("IncludeGalleryImages"),
            sort_gallery_images: self.boolean("SortGalleryImages"),
            append_performer_tags: self.boolean("AppendPerformerTags"),
            ignore_tags: self.id_list("IgnoreTags"),
            tag_collections: self.id_list("CreateTagCollectionTags"),
            all_tag_collections: self.boolean("CreateAllTagCollectionTags"),
            organized_collection: organized.then(|| self.verbatim("OrganizedCollectionTagName").unwrap_or_default()),
            site_collection: self.prefix(
                "CreateSiteCollectionTags",
                Some("CustomSiteCollectionPrefix"),
                "PrefixSiteCollectionTags",
            ),
            studio_collection: self.prefix(
                "CreateStudioCollectionTags",
                Some("CustomStudioCollectionPrefix"),
                "PrefixStudioCollectionTags",
            ),
            site_for_studio: self.boolean("UseSiteForStudioCollectionTags"),
            movie_collection: self.prefix("CreateMovieCollectionTags", None, "PrefixMovieCollectionTags"),
            performer_collection: self.prefix("CreatePerformerCollectionTags", None, "PrefixPerformerCollectionTags"),
            rating_collection: self.boolean("CreateRatingTags"),
            user_ratings: self.boolean("SaveUserRatings"),
            require_url: self.boolean("RequireURL"),
            require_stash_id: self.boolean("RequireStashID"),
            add_plex_url: self.boolean("AddPlexURL"),
        }
    }

    fn list(&mut self, key: &'static str) -> Vec<String> {
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

    /// One of `options` by name; the table's default when unset or unknown.
    fn choice<T: Copy>(&mut self, key: &'static str, options: &[(&str, T)]) -> T {
        let find = |name: &str| options.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        let default = def(key).text().and_then(|d| find(&d)).unwrap_or(options[0].1);
        let Some(raw) = self.string(key) else { return default };
        find(&raw).unwrap_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.warnings.push(format!("setting '{key}' must be one of {}, got '{raw}'", names.join(", ")));
            default
        })
    }

    fn tag_id(&mut self, key: &'static str) -> Option<String> {
        let id = self.string(key)?;
        if id.chars().all(|c| c.is_ascii_digit()) {
            Some(id)
        } else {
            self.warnings.push(format!("setting '{key}' must be a Stash tag id (a number), got '{id}'"));
            None
        }
    }

    fn stash_id_tags(&mut self) -> StashIdTags {
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
        StashIdTags { empty: self.tag_id("tagID_emptystashid"), by_endpoint }
    }

    fn plex_http(&mut self) -> HttpOptions {
        HttpOptions {
            request_timeout: self.duration("requestTimeoutSecs", 1.0),
            ca_file: self.string("plexCaFile").map(PathBuf::from),
            insecure: self.boolean("plexInsecure"),
            ..HttpOptions::default()
        }
    }

    fn retry(&mut self) -> RetrySettings {
        RetrySettings {
            partial_scan: self.boolean("partialScan"),
            not_in_plex_window: self.duration("notInPlexHours", 3600.0),
            outage_max_age: self.duration("outageMaxDays", 86_400.0),
            drain_per_sec: self.number("drainPerSec"),
            concurrency: crate::units::to_usize(crate::units::round(self.number("plexConcurrency"))),
            scale: self.number("retryScale"),
            lease: self.duration("leaseSecs", 1.0),
            worker_idle: self.duration("workerIdleSecs", 1.0),
        }
    }

    fn daemon(&mut self) -> DaemonSettings {
        DaemonSettings {
            listen: self.string("daemonListen").unwrap_or_default(),
            token: self.string("daemonToken").map(Secret::new),
            hosts: self.list("daemonHosts"),
            provider: self.boolean("provider"),
            provider_secret: self.string("providerSecret").map(Secret::new),
            reconcile_every: self.duration("reconcileHours", 3600.0),
            outage_unhealthy_after: self.duration("healthOutageSecs", 1.0),
        }
    }

    fn settings(&mut self) -> Settings {
        Settings {
            plex_url: self.plex_url(),
            plex_token: self.string("plexToken").map(Secret::new),
            libraries: self.list("plexLibraries"),
            path_maps: self.path_maps(),
            mode: self.choice("syncMode", &[("push", Mode::Push), ("refresh", Mode::Refresh)]),
            fields: self.fields(),
            actor_images: self.boolean("actorImages"),
            agent: self.agent(),
            tagline: self.choice(
                "taglineSource",
                &[
                    ("none", TaglineSource::None),
                    ("code", TaglineSource::Code),
                    ("url", TaglineSource::Url),
                    ("director", TaglineSource::Director),
                ],
            ),
            preserve_plex_edits: self.boolean("preservePlexEdits"),
            skip_unorganized: self.boolean("skipUnorganized"),
            clean_titles: self.boolean("cleanTitles"),
            tag_stash_ids: self.boolean("tagStashIDs"),
            stash_id_tags: self.stash_id_tags(),
            plex_http: self.plex_http(),
            stash_url: self.url("stashUrl"),
            stash_api_key: self.string("stashApiKey").map(Secret::new),
            stash_session: self.string("stashSession").map(Secret::new),
            data_dir: self.string("dataDir").map(PathBuf::from),
            retry: self.retry(),
            daemon: self.daemon(),
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

    /// Settings read only when another one is on, turned on.
    fn everything_on() -> Map<String, Value> {
        layer(json!({"plexHost": "plex.lan", "AddOrganizedCollectionTag": true,
            "CreateMovieCollectionTags": true, "CreatePerformerCollectionTags": true}))
    }

    /// A setting's table default as a value a user could set.
    fn as_set(def: &SettingDef) -> Value {
        match def.default {
            DefaultValue::Text(t) => json!(t),
            DefaultValue::Flag(b) => json!(b),
            DefaultValue::Number { value, .. } => json!(value),
        }
    }

    #[test]
    fn each_table_default_is_what_the_setting_resolves_to_when_unset() {
        let shown = |l: &Loaded| format!("{:?}", l.settings);
        let defaults = format!("{:?}", Settings::default());
        let on = load(&[everything_on()]);
        for def in SETTINGS {
            let explicit = layer(json!({def.key: as_set(def)}));
            let l = load(std::slice::from_ref(&explicit));
            assert!(l.warnings.is_empty(), "{}'s default is not a valid value: {:?}", def.key, l.warnings);
            assert_eq!(shown(&l), defaults, "{} set to the table's default differs from unset", def.key);
            if !everything_on().contains_key(def.key) {
                let l = load(&[everything_on(), explicit]);
                assert_eq!(shown(&l), shown(&on), "{} set to the table's default differs from unset", def.key);
            }
        }
        assert_eq!(Settings::default().retry.concurrency, 8, "a default reaches Settings::default()");
        assert_eq!(Settings::default().daemon.listen, "127.0.0.1:9977");
    }

    #[test]
    fn the_resolver_reads_every_setting_in_the_table_and_no_other() {
        let (_, read) = resolve(&[everything_on()]);
        let table: BTreeSet<&str> = SETTINGS.iter().map(|d| d.key).collect();
        let unread: Vec<_> = table.difference(&read).collect();
        let strays: Vec<_> = read.difference(&table).collect();
        assert!(unread.is_empty(), "settings in the table the resolver never reads: {unread:?}");
        assert!(strays.is_empty(), "keys the resolver reads that are not in the table: {strays:?}");
    }

    #[test]
    fn each_description_ends_with_the_table_default() {
        for def in SETTINGS {
            let shown = match def.default {
                DefaultValue::Text("") => continue,
                DefaultValue::Text(t) => format!("'{t}'"),
                DefaultValue::Flag(b) => on_off(b).to_string(),
                DefaultValue::Number { value, min, max } => format!("{value} ({min} to {max})"),
            };
            let tail = format!(" Default: {shown}.");
            assert!(def.description.ends_with(&tail), "{}: {:?} should end with {tail:?}", def.key, def.description);
        }
    }

    #[test]
    fn out_of_range_numbers_name_the_setting_and_its_range() {
        let l = load(&[layer(json!({"plexConcurrency": 33, "leaseSecs": "soon"}))]);
        let all = l.warnings.join("\n");
        assert!(all.contains("setting 'plexConcurrency' must be a number from 1 to 32; using 8"), "{all}");
        assert!(all.contains("setting 'leaseSecs' must be a number from 0.1 to 86400; using 300"), "{all}");
        assert_eq!(l.settings.retry, RetrySettings::default());
    }

    fn on_off(b: bool) -> &'static str {
        if b {
            "on"
        } else {
            "off"
        }
    }

    /// `cell` without a trailing ` (note)`.
    fn without_note(cell: &str) -> &str {
        cell.strip_suffix(')').and_then(|c| c.rsplit_once(" (")).map_or(cell, |(value, _)| value.trim())
    }

    /// Whether a docs cell shows `def`'s default: a number with its range,
    /// a switch as on/off, a text as code; a setting without a default is
    /// described in words (what unset means), never as a value.
    fn documents(cell: &str, def: &SettingDef) -> bool {
        let cell = cell.replace("**", "");
        let cell = cell.trim();
        let is_code = |c: &str| c.len() > 1 && c.starts_with('`') && c.ends_with('`') && c.matches('`').count() == 2;
        match def.default {
            DefaultValue::Number { value, min, max } => cell == format!("{value} ({min} to {max})"),
            DefaultValue::Flag(b) => without_note(cell) == on_off(b),
            DefaultValue::Text("") => !is_code(without_note(cell)) && !["on", "off"].contains(&without_note(cell)),
            DefaultValue::Text(t) => without_note(cell) == format!("`{t}`"),
        }
    }

    /// `cell` split at the commas outside code and brackets.
    fn split_top(cell: &str) -> Vec<&str> {
        let (mut parts, mut start, mut depth, mut code) = (Vec::new(), 0, 0, false);
        for (i, c) in cell.char_indices() {
            match c {
                '`' => code = !code,
                '(' if !code => depth += 1,
                ')' if !code => depth -= 1,
                ',' if !code && depth == 0 => {
                    parts.push(cell[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(cell[start..].trim());
        parts
    }

    /// The rows of the docs' settings tables: (setting names, default cell).
    fn docs_rows(docs: &str) -> Vec<(Vec<&str>, &str)> {
        docs.lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').collect();
                let names = cells[1].split('`').skip(1).step_by(2).collect();
                (names, cells[2].trim())
            })
            .collect()
    }

    #[test]
    fn the_settings_docs_show_each_default_and_range_as_the_table() {
        let docs = include_str!("../../../docs/settings.md");
        let mut documented = BTreeSet::new();
        for (names, cell) in docs_rows(docs) {
            let cells = if names.len() == 1 { vec![cell] } else { split_top(cell) };
            assert!(cells.len() == 1 || cells.len() == names.len(), "{names:?}: one default, or one per setting");
            for (i, name) in names.iter().enumerate() {
                let cell = cells[i.min(cells.len() - 1)];
                let defs: Vec<&SettingDef> = match name.strip_suffix('*') {
                    Some(prefix) => SETTINGS.iter().filter(|d| d.key.starts_with(prefix)).collect(),
                    None => SETTINGS.iter().filter(|d| d.key == *name).collect(),
                };
                assert!(!defs.is_empty(), "docs/settings.md lists `{name}`, which is no setting");
                for def in defs {
                    assert!(
                        documents(cell, def),
                        "docs/settings.md: `{}` shows {cell:?}, the table {:?}",
                        def.key,
                        def.default
                    );
                    documented.insert(def.key);
                }
            }
        }
        let missing: Vec<&str> = SETTINGS.iter().map(|d| d.key).filter(|k| !documented.contains(k)).collect();
        assert!(missing.is_empty(), "docs/settings.md's tables lack {missing:?}");
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
