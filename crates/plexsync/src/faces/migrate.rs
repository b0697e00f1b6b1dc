//! `plexsync migrate` and the task "Migrate settings": the settings of the
//! system being replaced, read where it kept them, shown beside the
//! PlexSync settings that mean the same, and with `apply` written into
//! PlexSync's settings in Stash.
//!
//! - StashPlexAgent's preferences: Plex answers them at
//!   `GET /:/plugins/com.plexapp.agents.stashplexagent/prefs` while the
//!   legacy agent is installed (python-plexapi's `Agent.settings` reads
//!   them there). Once Plex removed it, the file Plex's plug-in framework
//!   wrote stays: `Plug-in Support/Preferences/<identifier>.xml` under
//!   Plex's data folder, a `PluginPreferences` element with one child per
//!   preference (the framework's `prefskit`). An empty child means the
//!   agent's default, as the framework reads it.
//! - Stash2Plex's settings in Stash (`configuration.plugins.Stash2Plex`;
//!   before it was renamed it kept them under `PlexSync`, in snake_case).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::clients::plex::PlexClient;
use crate::config::{self, Kind, PLUGIN_ID};
use crate::error::{Error, ErrorClass};
use crate::faces::context::Context;

/// StashPlexAgent's bundle identifier (its `Info.plist`).
const AGENT_ID: &str = "com.plexapp.agents.stashplexagent";
const STASH2PLEX_ID: &str = "Stash2Plex";

/// The agent's preferences that are PlexSync settings of the same name.
const AGENT_SETTINGS: &[&str] = &[
    "UseFormattedTitle",
    "RemovePerformerFromTitle",
    "TitleFormat",
    "IncludeGalleryImages",
    "SortGalleryImages",
    "AppendPerformerTags",
    "IgnoreTags",
    "CreateTagCollectionTags",
    "CreateAllTagCollectionTags",
    "AddOrganizedCollectionTag",
    "OrganizedCollectionTagName",
    "CreateSiteCollectionTags",
    "CustomSiteCollectionPrefix",
    "PrefixSiteCollectionTags",
    "CreateStudioCollectionTags",
    "UseSiteForStudioCollectionTags",
    "CustomStudioCollectionPrefix",
    "PrefixStudioCollectionTags",
    "CreateMovieCollectionTags",
    "PrefixMovieCollectionTags",
    "CreatePerformerCollectionTags",
    "PrefixPerformerCollectionTags",
    "CreateRatingTags",
    "SaveUserRatings",
    "RequireURL",
    "RequireStashID",
    "AddPlexURL",
];

/// PlexSync fields StashPlexAgent never wrote.
const AGENT_NEVER_WROTE: [&str; 3] = ["directors", "tagline", "background"];

/// The agent's preferences PlexSync has no use for, and why.
const AGENT_LEFT: &[(&str, &str)] = &[
    ("Hostname", "PlexSync reaches Stash the way Stash starts it"),
    ("Port", "PlexSync reaches Stash the way Stash starts it"),
    ("UseHTTPS", "PlexSync reaches Stash the way Stash starts it"),
    ("APIKey", "PlexSync reaches Stash the way Stash starts it, and reads Stash's API key itself"),
    ("UseFullMediaPath", "PlexSync matches by the whole path through pathMappings, and by name and size"),
    ("debug", "PlexSync's log level is PLEXSYNC_LOG"),
];

/// One setting carried over.
#[derive(Clone, Debug, Serialize)]
struct Carried {
    setting: String,
    /// What is written (`***` in place of a token).
    value: Value,
    #[serde(skip)]
    write: Value,
    from: String,
    was: String,
    /// PlexSync's value in Stash now (its default when unset).
    now: Value,
}

/// A setting of the old system that is not carried over, and why.
#[derive(Clone, Debug, Serialize)]
struct Left {
    from: String,
    was: String,
    why: String,
}

#[derive(Default)]
struct Plan {
    sources: Vec<String>,
    carried: Vec<Carried>,
    left: Vec<Left>,
}

impl Plan {
    fn carry(&mut self, setting: &str, value: Value, from: &str, was: String) {
        let shown = if setting == "plexToken" { json!("***") } else { value.clone() };
        self.carried.retain(|c| c.setting != setting);
        self.carried.push(Carried {
            setting: setting.into(),
            value: shown,
            write: value,
            from: from.into(),
            was,
            now: Value::Null,
        });
    }

    fn leave(&mut self, from: &str, was: String, why: &str) {
        self.left.push(Left { from: from.into(), was, why: why.into() });
    }
}

/// Reads the old settings, compares them with PlexSync's in Stash and,
/// with `apply`, writes the ones that differ (keeping every other setting).
pub(crate) async fn run(ctx: &Context, agent_file: Option<&Path>, apply: bool) -> Result<Value, Error> {
    let mut plan = Plan::default();
    let current = ctx.stash.plugin_settings(PLUGIN_ID).await?;
    match agent_prefs(ctx, agent_file).await? {
        Some((source, prefs)) => {
            plan.sources.push(format!("StashPlexAgent: {source}"));
            from_agent(&prefs, &mut plan);
        }
        None => plan.sources.push(format!(
            "StashPlexAgent: no preferences found (Plex has no legacy agent {AGENT_ID} and no preferences file was \
             found; give one with --agent-prefs)"
        )),
    }
    let stash2plex = ctx.stash.plugin_settings(STASH2PLEX_ID).await?;
    let renamed: Map<String, Value> =
        current.iter().filter(|(k, _)| is_stash2plex_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for (settings, where_) in [(&stash2plex, "Stash2Plex"), (&renamed, "PlexSync (Stash2Plex before its rename)")] {
        if !settings.is_empty() {
            plan.sources.push(format!("Stash2Plex: Stash's settings of the plugin {where_}"));
            from_stash2plex(settings, &mut plan);
        }
    }
    let effective = config::load(std::slice::from_ref(&current)).settings;
    let mut changes = Map::new();
    for c in &mut plan.carried {
        c.now = now_value(&current, &c.setting, &effective);
        if !same(&c.now, &c.write) {
            changes.insert(c.setting.clone(), c.write.clone());
        }
    }
    report(&plan, changes.len(), apply);
    if apply && !changes.is_empty() {
        let mut merged = current;
        // Stash2Plex's keys under our id were never settings of ours.
        merged.retain(|k, _| !is_stash2plex_key(k));
        merged.extend(changes.clone());
        ctx.stash.configure_plugin(PLUGIN_ID, &merged).await?;
        tracing::info!("wrote {} settings into PlexSync's settings in Stash", changes.len());
    }
    Ok(json!({
        "sources": plan.sources,
        "settings": plan.carried,
        "changes": changes.len(),
        "applied": apply && !changes.is_empty(),
        "not_carried": plan.left,
        "next": if apply || changes.is_empty() {
            "run the task Reconcile all (plexsync reconcile) so every item gets the values these settings make"
        } else {
            "nothing written yet: run with --apply (or the task Migrate settings: apply) to write these settings"
        },
    }))
}

/// The agent's preferences, from Plex while it still has the agent, else
/// from its preferences file; with the place they were read from.
async fn agent_prefs(ctx: &Context, file: Option<&Path>) -> Result<Option<(String, BTreeMap<String, String>)>, Error> {
    if let Some(file) = file {
        let prefs = read_prefs_file(file)?;
        return Ok(Some((file.display().to_string(), prefs)));
    }
    if let (Some(url), Some(token)) = (&ctx.settings.plex_url, &ctx.settings.plex_token) {
        let plex = PlexClient::new(url.clone(), token.clone(), &ctx.settings.plex_http)?;
        match plex.legacy_agent_prefs(AGENT_ID).await {
            Ok(Some(prefs)) => return Ok(Some((format!("Plex's preferences of {AGENT_ID}"), prefs))),
            Ok(None) => {}
            Err(e) => tracing::warn!("could not ask Plex for the agent's preferences: {e}"),
        }
    }
    for file in default_prefs_files() {
        if file.is_file() {
            let prefs = read_prefs_file(&file)?;
            return Ok(Some((file.display().to_string(), prefs)));
        }
    }
    Ok(None)
}

/// Where Plex keeps the file on the systems it runs on (its data folder
/// per platform, and the official Docker image's).
fn default_prefs_files() -> Vec<PathBuf> {
    let tail = Path::new("Plug-in Support").join("Preferences").join(format!("{AGENT_ID}.xml"));
    let mut roots = vec![
        PathBuf::from("/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"),
        PathBuf::from("/config/Library/Application Support/Plex Media Server"),
    ];
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(Path::new(&home).join("Library/Application Support/Plex Media Server"));
    }
    if let Some(local) = std::env::var_os("LOCALAPPDATA") {
        roots.push(Path::new(&local).join("Plex Media Server"));
    }
    roots.into_iter().map(|r| r.join(&tail)).collect()
}

/// A legacy agent's preferences file: `<PluginPreferences>` with one
/// child per preference, its text the stored value.
fn read_prefs_file(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(ErrorClass::Config, format!("cannot read the agent's preferences file {}: {e}", path.display()))
    })?;
    parse_prefs(&text).map_err(|why| {
        Error::new(
            ErrorClass::Config,
            format!("{} is not a Plex agent preferences file ({why}); give the agent's {AGENT_ID}.xml", path.display()),
        )
    })
}

fn parse_prefs(xml: &str) -> Result<BTreeMap<String, String>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut prefs = BTreeMap::new();
    let (mut depth, mut root_seen, mut open): (usize, bool, Option<String>) = (0, false, None);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = AsRef::<str>::as_ref(&e.name()).to_string();
                depth += 1;
                match depth {
                    1 if name == "PluginPreferences" => root_seen = true,
                    1 => return Err(format!("its root element is <{name}>, not <PluginPreferences>")),
                    2 => {
                        prefs.insert(name.clone(), String::new());
                        open = Some(name);
                    }
                    _ => {}
                }
            }
            Event::Empty(e) if depth == 1 => {
                prefs.insert(AsRef::<str>::as_ref(&e.name()).to_string(), String::new());
            }
            Event::Text(t) => {
                if let Some(name) = open.as_ref().filter(|_| depth == 2) {
                    prefs.entry(name.clone()).or_default().push_str(&t.xml10_content());
                }
            }
            // `&amp;` and `&#38;` arrive on their own.
            Event::GeneralRef(r) => {
                if let Some(name) = open.as_ref().filter(|_| depth == 2) {
                    let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                        Some(c) => c.to_string(),
                        None => {
                            let entity = r.xml10_content();
                            quick_xml::escape::resolve_predefined_entity(&entity)
                                .ok_or_else(|| format!("unknown entity &{entity};"))?
                                .to_string()
                        }
                    };
                    prefs.entry(name.clone()).or_default().push_str(&resolved);
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                open = None;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err("no <PluginPreferences> element".into());
    }
    Ok(prefs)
}

/// The agent's preferences as PlexSync settings of the same name.
fn from_agent(prefs: &BTreeMap<String, String>, plan: &mut Plan) {
    // It wrote no background (its code: the cover as a background looked
    // worse than Plex's own), no directors and no tagline: the switch adds
    // none, so an item it left as PlexSync would write it costs nothing.
    let fields: Vec<&str> =
        config::Field::ALL.iter().map(|f| f.name()).filter(|f| !AGENT_NEVER_WROTE.contains(f)).collect();
    let was = format!("(it wrote no {})", AGENT_NEVER_WROTE.join(", "));
    plan.carry("syncFields", json!(fields.join(", ")), "StashPlexAgent", was);
    for (name, raw) in prefs {
        let was = format!("{name} = {raw:?}");
        if let Some((_, why)) = AGENT_LEFT.iter().find(|(n, _)| n == name) {
            plan.leave("StashPlexAgent", was, why);
        } else if name == "RequireOrganized" {
            // The old plugin's skipUnorganized already says this for a
            // switching user; the agent's only adds the gate when on.
            if raw.trim() == "true" {
                plan.carry("skipUnorganized", json!(true), "StashPlexAgent", was);
            }
        } else if AGENT_SETTINGS.contains(&name.as_str()) {
            // The framework reads an empty preference as its default.
            if let Some(value) = typed(name, raw).filter(|_| !raw.is_empty()) {
                plan.carry(name, value, "StashPlexAgent", was);
            }
        } else {
            plan.leave("StashPlexAgent", was, "not a preference PlexSync knows");
        }
    }
}

/// `raw` as the setting's kind in Stash's manifest.
fn typed(setting: &str, raw: &str) -> Option<Value> {
    let def = config::SETTINGS.iter().find(|d| d.key == setting)?;
    Some(match def.kind {
        Kind::Boolean => json!(matches!(raw.trim(), "true" | "1")),
        Kind::Number => json!(raw.trim().parse::<f64>().ok()?),
        Kind::String => json!(raw),
    })
}

/// Stash2Plex's own keys (snake_case), as found under our plugin id.
fn is_stash2plex_key(key: &str) -> bool {
    key.starts_with("plex_") || key.starts_with("sync_") || STASH2PLEX_OTHER.iter().any(|(k, _)| *k == key)
}

/// Stash2Plex settings PlexSync has no use for, and why.
const STASH2PLEX_OTHER: &[(&str, &str)] = &[
    ("enabled", "turn PlexSync off by disabling the plugin in Stash"),
    ("max_retries", "PlexSync retries by failure class and says when it gives up (docs/failures.md)"),
    ("poll_interval", "PlexSync's worker runs beside Stash and needs no polling interval"),
    ("strict_matching", "PlexSync never writes an ambiguous match"),
    ("max_tags", "PlexSync keeps up to 100 names per list"),
    ("skip_not_found", "PlexSync retries a scene Plex lacks for notInPlexHours, then keeps it as a dead letter"),
    ("connect_timeout", "Stash2Plex never read it; PlexSync's is requestTimeoutSecs"),
    ("read_timeout", "Stash2Plex never read it; PlexSync's is requestTimeoutSecs"),
    ("debug_logging", "PlexSync's log level is PLEXSYNC_LOG"),
    ("obfuscate_paths", "PlexSync logs no more than the paths a delivery needs"),
    ("reconcile_scope", "PlexSync's reconcile compares every scene, or the recent ones (Reconcile recent)"),
    ("reconcile_missing", "PlexSync's reconcile always counts scenes missing from Plex"),
    ("trigger_plex_scan", "PlexSync asks Plex to scan a new scene's folder by itself (partialScan, on by default)"),
    ("plex_unmatched_path_map", "Stash2Plex never read it; set pathMappings"),
];

/// Stash2Plex's `sync_*` switches and the PlexSync fields they turned off.
const STASH2PLEX_FIELDS: &[(&str, &[&str])] = &[
    ("sync_summary", &["summary"]),
    ("sync_studio", &["studio"]),
    ("sync_date", &["date"]),
    ("sync_performers", &["actors"]),
    ("sync_tags", &["genres"]),
    ("sync_poster", &["poster"]),
    ("sync_background", &["background"]),
    ("sync_collection", &["collection"]),
];

/// Stash2Plex's settings as PlexSync settings.
fn from_stash2plex(s: &Map<String, Value>, plan: &mut Plan) {
    const FROM: &str = "Stash2Plex";
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let on = |v: &Value| match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        _ => false,
    };
    let was = |k: &str, v: &Value| if k == "plex_token" { format!("{k} = ***") } else { format!("{k} = {v}") };
    let mut off: Vec<&str> = Vec::new();
    for (key, value) in s {
        let w = was(key, value);
        match key.as_str() {
            "plex_url" => plan.carry("plexUrl", json!(text(value).trim_end_matches('/')), FROM, w),
            "plex_token" => plan.carry("plexToken", json!(text(value)), FROM, w),
            "plex_library" => plan.carry("plexLibraries", json!(text(value)), FROM, w),
            "preserve_plex_edits" => plan.carry("preservePlexEdits", json!(on(value)), FROM, w),
            "sync_master" if !on(value) => {
                plan.leave(FROM, w, "PlexSync has no switch for syncing nothing: disable the plugin instead")
            }
            "sync_tagline" | "sync_master" => plan.leave(FROM, w, "Stash2Plex's default; nothing to carry"),
            "reconcile_interval" => {
                let hours = match text(value).as_str() {
                    "hourly" => 1,
                    "daily" => 24,
                    "weekly" => 168,
                    _ => 0,
                };
                plan.carry("reconcileHours", json!(hours), FROM, w);
            }
            k if STASH2PLEX_FIELDS.iter().any(|(f, _)| *f == k) => {
                if !on(value) {
                    off.extend(STASH2PLEX_FIELDS.iter().find(|(f, _)| *f == k).map_or(&[][..], |(_, x)| *x));
                }
            }
            k => match STASH2PLEX_OTHER.iter().find(|(o, _)| *o == k) {
                Some((_, why)) => plan.leave(FROM, w, why),
                None => plan.leave(FROM, w, "not a Stash2Plex setting PlexSync knows"),
            },
        }
    }
    if !off.is_empty() {
        let fields: Vec<&str> = config::Field::ALL.iter().map(|f| f.name()).filter(|f| !off.contains(f)).collect();
        plan.carry("syncFields", json!(fields.join(", ")), FROM, format!("off: {}", off.join(", ")));
    }
    // Stash2Plex's collection was the bare studio name, and no parent's.
    if !off.contains(&"collection") {
        let why = "Stash2Plex's collection is the bare studio name".to_string();
        plan.carry("CustomSiteCollectionPrefix", json!(false), FROM, why.clone());
        plan.carry("CreateStudioCollectionTags", json!(false), FROM, why);
    }
}

/// PlexSync's value of `setting` in Stash now, or its default.
fn now_value(current: &Map<String, Value>, setting: &str, effective: &config::Settings) -> Value {
    if let Some(v) = current.get(setting) {
        return if setting == "plexToken" { json!("***") } else { v.clone() };
    }
    let prefs = &effective.agent;
    match setting {
        "skipUnorganized" => json!(effective.skip_unorganized),
        "CreateStudioCollectionTags" => json!(prefs.studio_collection.is_some()),
        "CreateSiteCollectionTags" => json!(prefs.site_collection.is_some()),
        _ => config::SETTINGS.iter().find(|d| d.key == setting).map_or(Value::Null, config::SettingDef::default_json),
    }
}

/// Whether two setting values mean the same (`"true"` and `true` do).
fn same(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    norm(a) == norm(b)
}

/// The side-by-side view, one line a setting, for the task's log and the
/// terminal.
fn report(plan: &Plan, changes: usize, apply: bool) {
    for source in &plan.sources {
        tracing::info!("read {source}");
    }
    for c in &plan.carried {
        let mark = if same(&c.now, &c.write) { "same" } else { "change" };
        tracing::info!("{mark}: {} = {} (now {}) ← {} {}", c.setting, c.value, c.now, c.from, c.was);
    }
    for l in &plan.left {
        tracing::info!("not carried: {} {}: {}", l.from, l.was, l.why);
    }
    let verb = if apply { "written" } else { "to write (with apply)" };
    tracing::info!("{changes} settings {verb}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frameworks_preferences_file_is_read_by_element_name() {
        let xml = "<?xml version='1.0' encoding='utf-8'?>\n<PluginPreferences>\n  <Hostname>127.0.0.1</Hostname>\n  \
                   <APIKey/>\n  <TitleFormat>{performer} &amp; {title}</TitleFormat>\n  \
                   <PrefixSiteCollectionTags>Site: </PrefixSiteCollectionTags>\n  <UseFormattedTitle>true</UseFormattedTitle>\n</PluginPreferences>\n";
        let prefs = parse_prefs(xml).unwrap();
        assert_eq!(prefs["TitleFormat"], "{performer} & {title}");
        assert_eq!(prefs["APIKey"], "");
        assert_eq!(prefs["PrefixSiteCollectionTags"], "Site: ", "a prefix keeps its space");
        assert!(parse_prefs("<Other/>").is_err());
        assert!(parse_prefs("not xml <").is_err() || parse_prefs("not xml <").unwrap().is_empty());
    }

    #[test]
    fn agent_preferences_become_settings_of_the_same_name() {
        let prefs: BTreeMap<String, String> = [
            ("UseFormattedTitle", "true"),
            ("PrefixSiteCollectionTags", ""),
            ("RequireOrganized", "false"),
            ("APIKey", "secret"),
            ("CreateRatingTags", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut plan = Plan::default();
        from_agent(&prefs, &mut plan);
        let carried: Vec<(&str, &Value)> = plan.carried.iter().map(|c| (c.setting.as_str(), &c.write)).collect();
        assert_eq!(carried[1..], [("CreateRatingTags", &json!(true)), ("UseFormattedTitle", &json!(true))]);
        assert_eq!(carried[0].0, "syncFields");
        assert!(!carried[0].1.as_str().unwrap().contains("background"));
        assert!(plan.left.iter().any(|l| l.was.starts_with("APIKey")));
    }

    #[test]
    fn stash2plex_settings_become_plexsyncs_and_the_token_is_never_shown() {
        let s = json!({"plex_url": "http://plex:32400/", "plex_token": "tok-123456", "sync_background": false,
                       "sync_collection": true, "max_tags": 50});
        let mut plan = Plan::default();
        from_stash2plex(s.as_object().unwrap(), &mut plan);
        let get = |k: &str| plan.carried.iter().find(|c| c.setting == k).unwrap().clone();
        assert_eq!(get("plexUrl").write, json!("http://plex:32400"));
        assert_eq!(get("plexToken").value, json!("***"));
        assert!(!serde_json::to_string(&plan.carried).unwrap().contains("tok-123456"));
        assert!(!get("syncFields").write.as_str().unwrap().contains("background"));
        assert_eq!(get("CustomSiteCollectionPrefix").write, json!(false));
        assert!(plan.left.iter().any(|l| l.was.starts_with("max_tags")));
    }
}
