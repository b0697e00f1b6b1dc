//! Stash's `raw` plugin protocol: the JSON Stash writes to stdin, the log
//! lines it reads from stderr, and the JSON it reads from stdout.

use crate::clients::stash::RelatedKind;
use crate::ids::StashId;
use std::io::Write;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::clients::stash::StashCredentials;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
pub struct Cookie {
    #[serde(rename = "Value", default)]
    pub value: String,
}

/// `server_connection` of the plugin input.
#[derive(Debug, Deserialize)]
pub struct ServerConnection {
    #[serde(rename = "Scheme", default = "default_scheme")]
    pub scheme: String,
    #[serde(rename = "Host", default)]
    pub host: String,
    #[serde(rename = "Port")]
    pub port: u16,
    /// Stash passes only a session cookie, never an API key.
    #[serde(rename = "SessionCookie", default)]
    pub session_cookie: Option<Cookie>,
    #[serde(rename = "Dir", default)]
    pub dir: Option<PathBuf>,
    #[serde(rename = "PluginDir", default)]
    pub plugin_dir: Option<PathBuf>,
}

fn default_scheme() -> String {
    "http".into()
}

impl ServerConnection {
    /// Stash's base URL; `0.0.0.0` (listen on all) means connect to localhost.
    pub(crate) fn url(&self) -> Result<Url, String> {
        let host = match self.host.as_str() {
            "" | "0.0.0.0" | "::" | "[::]" => "localhost",
            h => h,
        };
        let mut url = Url::parse("http://localhost/").expect("static URL parses");
        url.set_scheme(&self.scheme)
            .map_err(|_| format!("server_connection.Scheme {:?} is not http(s)", self.scheme))?;
        url.set_host(Some(host)).map_err(|e| format!("server_connection.Host {:?}: {e}", self.host))?;
        url.set_port(Some(self.port)).map_err(|_| "server_connection.Port is invalid".to_string())?;
        Ok(url)
    }

    pub(crate) fn credentials(&self) -> StashCredentials {
        StashCredentials {
            api_key: None,
            session_cookie: self.session_cookie.as_ref().filter(|c| !c.value.is_empty()).map(|c| Secret::new(&c.value)),
        }
    }
}

/// The hooks PlexSync handles (the manifest's `triggeredBy`), told apart
/// once where Stash's text arrives instead of compared as strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookType {
    SceneCreate,
    SceneUpdate,
    SceneDestroy,
    PerformerUpdate,
    PerformerDestroy,
    StudioUpdate,
    StudioDestroy,
    TagUpdate,
    TagDestroy,
    TagMerge,
}

impl HookType {
    pub(crate) const ALL: [HookType; 10] = [
        Self::SceneCreate,
        Self::SceneUpdate,
        Self::SceneDestroy,
        Self::PerformerUpdate,
        Self::PerformerDestroy,
        Self::StudioUpdate,
        Self::StudioDestroy,
        Self::TagUpdate,
        Self::TagDestroy,
        Self::TagMerge,
    ];

    /// Stash's name of the hook.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::SceneCreate => "Scene.Create.Post",
            Self::SceneUpdate => "Scene.Update.Post",
            Self::SceneDestroy => "Scene.Destroy.Post",
            Self::PerformerUpdate => "Performer.Update.Post",
            Self::PerformerDestroy => "Performer.Destroy.Post",
            Self::StudioUpdate => "Studio.Update.Post",
            Self::StudioDestroy => "Studio.Destroy.Post",
            Self::TagUpdate => "Tag.Update.Post",
            Self::TagDestroy => "Tag.Destroy.Post",
            Self::TagMerge => "Tag.Merge.Post",
        }
    }

    /// The hook named `name`, if PlexSync handles it.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The kind of object whose scenes the hook concerns; none for a
    /// scene's own hook.
    pub(crate) fn related(self) -> Option<RelatedKind> {
        match self {
            Self::SceneCreate | Self::SceneUpdate | Self::SceneDestroy => None,
            Self::PerformerUpdate | Self::PerformerDestroy => Some(RelatedKind::Performer),
            Self::StudioUpdate | Self::StudioDestroy => Some(RelatedKind::Studio),
            Self::TagUpdate | Self::TagDestroy | Self::TagMerge => Some(RelatedKind::Tag),
        }
    }
}

/// A hook event's context.
#[derive(Debug, Deserialize)]
pub struct HookContext {
    pub id: Value,
    #[serde(rename = "type")]
    pub hook_type: String,
    #[serde(default)]
    pub input: Value,
    #[serde(rename = "inputFields", default)]
    pub input_fields: Vec<String>,
}

impl HookContext {
    /// The scene's (or performer's, studio's, tag's) id, whether Stash
    /// sent it as a number or a string.
    pub(crate) fn scene_id(&self) -> Option<StashId> {
        StashId::from_json(&self.id)
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct Args {
    #[serde(rename = "hookContext", default)]
    pub hook: Option<HookContext>,
    #[serde(default)]
    pub mode: Option<String>,
    /// Other task arguments (e.g. a scene id for `explain`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// What Stash writes to the plugin's stdin.
#[derive(Debug, Deserialize)]
pub struct PluginInput {
    pub server_connection: ServerConnection,
    #[serde(default)]
    pub args: Args,
}

/// Parses stdin, with an error that says what was wrong with it.
pub fn parse_input(raw: &str) -> Result<PluginInput, String> {
    if raw.trim().is_empty() {
        return Err("no input on stdin: PlexSync must be started by Stash (or given Stash's plugin JSON)".into());
    }
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("stdin is not JSON: {e}"))?;
    if value.get("server_connection").is_none() {
        return Err("the input has no server_connection: PlexSync must be started by Stash".into());
    }
    serde_json::from_value(value).map_err(|e| format!("the input from Stash has an unexpected shape: {e}"))
}

/// Longest stderr line we write: Stash reads stderr with Go's
/// `bufio.Scanner`, whose 64 KiB limit stops its reader for good.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Writes an error in Stash's log format (level `e`), for the failures
/// that happen before logging is set up. Newlines inside the message are
/// split into several lines, each with the prefix, so none loses its level;
/// a longer line is cut at a character boundary and marked.
pub(crate) fn log_error(message: &str) {
    let mut err = std::io::stderr().lock();
    for line in message.lines() {
        let _ = writeln!(err, "\x01e\x02{}", cut(line, MAX_LINE));
    }
}

/// `line` cut to at most `max` bytes at a character boundary, marked `…`.
fn cut(line: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if line.len() <= max {
        return line.into();
    }
    let mut end = max - '…'.len_utf8();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end]).into()
}

/// Reports task progress (0..=1) to Stash.
pub(crate) fn progress(fraction: f64) {
    let _ = writeln!(std::io::stderr().lock(), "\x01p\x02{:.3}", fraction.clamp(0.0, 1.0));
}

/// Writes the single output JSON Stash reads from stdout.
pub(crate) fn output(result: Result<Value, String>) {
    let body = match result {
        Ok(output) => json!({ "output": output }),
        Err(error) => json!({ "error": error }),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{body}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_input_parses_and_host_zero_means_localhost() {
        let raw = r#"{"server_connection": {"Scheme": "http", "Host": "0.0.0.0", "Port": 9999,
            "SessionCookie": {"Name": "session", "Value": "abc"}, "Dir": "/root/.stash"},
            "args": {"hookContext": {"id": 42, "type": "Scene.Update.Post", "input": {"id": "42"}, "inputFields": ["id", "title"]}}}"#;
        let input = parse_input(raw).unwrap();
        assert_eq!(input.server_connection.url().unwrap().as_str(), "http://localhost:9999/");
        assert_eq!(input.server_connection.credentials().session_cookie.unwrap().expose(), "abc");
        let hook = input.args.hook.unwrap();
        assert_eq!(hook.scene_id().unwrap().as_str(), "42");
        assert_eq!(hook.input_fields, ["id", "title"]);
    }

    #[test]
    fn long_lines_are_cut_below_stashs_limit_at_a_char_boundary() {
        let long = "é".repeat(MAX_LINE);
        let c = cut(&long, MAX_LINE);
        assert!(c.len() <= MAX_LINE && c.ends_with('…'));
        assert_eq!(cut("short", MAX_LINE), "short");
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert!(parse_input("").unwrap_err().contains("no input"));
        assert!(parse_input("{not json").unwrap_err().contains("not JSON"));
        assert!(parse_input("{}").unwrap_err().contains("server_connection"));
        assert!(parse_input(r#"{"server_connection": {"Port": "x"}}"#).unwrap_err().contains("unexpected shape"));
        let task = parse_input(r#"{"server_connection": {"Port": 1}, "args": {"mode": "sync_all"}}"#).unwrap();
        assert_eq!(task.args.mode.as_deref(), Some("sync_all"));
        assert!(task.args.hook.is_none());
    }

    #[test]
    fn each_hook_is_told_by_its_name_and_others_are_not_hooks_we_handle() {
        for hook in HookType::ALL {
            assert_eq!(HookType::parse(hook.name()), Some(hook));
        }
        assert_eq!(HookType::parse("Scene.Update.Pre"), None);
        assert_eq!(HookType::parse("scene.update.post"), None, "Stash's names are exact");
        assert_eq!(HookType::TagMerge.related(), Some(RelatedKind::Tag));
        assert_eq!(HookType::SceneDestroy.related(), None);
    }
}
