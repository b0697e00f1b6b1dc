//! Runs a `raw` interface plugin the way Stash does (pkg/plugin): the
//! manifest is read strictly from a plugin folder, `exec` is resolved as
//! `Config.getExecCommand` resolves it, one JSON object goes to stdin (then
//! closed), log lines come on stderr with Stash's level prefix, one JSON
//! object on stdout. Stash reads stdout to its end, then waits for the
//! process, so a child that keeps stdout open keeps the run going.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Log levels of Stash's stderr protocol (`\x01<level>\x02message`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    /// The manifest's `errLog` (default `error`; `none` and `progress` log
    /// nothing we assert on, so they read as trace).
    fn from_err_log(name: Option<&str>) -> Self {
        match name.unwrap_or("error") {
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warning" => Self::Warning,
            "error" => Self::Error,
            _ => Self::Trace,
        }
    }

    fn from_char(c: char) -> Option<Self> {
        match c {
            't' => Some(Self::Trace),
            'd' => Some(Self::Debug),
            'i' => Some(Self::Info),
            'w' => Some(Self::Warning),
            'e' => Some(Self::Error),
            _ => None,
        }
    }
}

/// One line of the plugin's stderr as Stash would log it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// What Stash saw of one plugin run.
#[derive(Clone, Debug)]
pub struct PluginRun {
    /// `output` of the stdout JSON (the raw text when stdout was not JSON).
    pub output: Option<Value>,
    /// `error` of the stdout JSON; Stash shows the run as failed when set.
    pub error: Option<String>,
    pub logs: Vec<LogLine>,
    /// Progress values (`p` lines), in order.
    pub progress: Vec<f64>,
    pub status: ExitStatus,
    /// From start until the process exited and stdout closed (what Stash waits for).
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl PluginRun {
    /// Log lines at `level` or above, for assertions.
    pub fn messages_at(&self, level: LogLevel) -> Vec<&str> {
        self.logs.iter().filter(|l| l.level >= level).map(|l| l.message.as_str()).collect()
    }

    /// Whether Stash would show this run as failed.
    pub fn failed(&self) -> bool {
        self.error.as_deref().is_some_and(|e| !e.is_empty()) || !self.status.success()
    }
}

/// `bufio.Scanner`'s default limit: a longer stderr line stops Stash's
/// reader, and nothing after it is logged.
pub const MAX_STDERR_LINE: usize = 64 * 1024;

/// Parses stderr by Stash's rules; `default_level` is the manifest's `errLog`.
pub fn parse_stderr(stderr: &str, default_level: LogLevel) -> (Vec<LogLine>, Vec<f64>) {
    let mut logs = Vec::new();
    let mut progress = Vec::new();
    for line in stderr.lines() {
        if line.len() > MAX_STDERR_LINE {
            break;
        }
        let mut chars = line.chars();
        let prefixed = match (chars.next(), chars.next(), chars.next()) {
            (Some('\x01'), Some(level), Some('\x02')) => Some((level, chars.as_str())),
            _ => None,
        };
        match prefixed {
            Some(('p', rest)) => {
                if let Ok(p) = rest.trim().parse::<f64>() {
                    progress.push(p);
                }
            }
            Some((level, rest)) => logs.push(LogLine {
                level: LogLevel::from_char(level).unwrap_or(default_level),
                message: rest.to_string(),
            }),
            None if line.is_empty() => {}
            None => logs.push(LogLine { level: default_level, message: line.to_string() }),
        }
    }
    (logs, progress)
}

/// Parses stdout as Stash's `getOutput` does: `{"output", "error"}`, or
/// the raw text as output. Any non-null `error`, even `""`, is a failure;
/// `error` of another type than text is kept as its JSON text.
pub fn parse_stdout(stdout: &str) -> (Option<Value>, Option<String>) {
    match serde_json::from_str::<Value>(stdout) {
        Ok(Value::Object(map)) => {
            let error = match map.get("error") {
                None | Some(Value::Null) => None,
                Some(Value::String(e)) => Some(e.clone()),
                Some(other) => Some(other.to_string()),
            };
            (map.get("output").cloned().filter(|o| !o.is_null()), error)
        }
        Ok(Value::Null) => (None, None),
        _ if stdout.is_empty() => (Some(Value::String(String::new())), None),
        Ok(_) | Err(_) => (Some(Value::String(stdout.to_string())), None),
    }
}

/// One hook or task of a manifest (pkg/plugin `OperationConfig`,
/// `HookConfig`): unknown keys are refused, as yaml.v2 strict mode does.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub exec_args: Vec<String>,
    #[serde(default)]
    pub default_args: BTreeMap<String, String>,
    #[serde(default)]
    pub triggered_by: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Csp {
    #[serde(default, rename = "script-src")]
    pub script_src: Vec<String>,
    #[serde(default, rename = "style-src")]
    pub style_src: Vec<String>,
    #[serde(default, rename = "connect-src")]
    pub connect_src: Vec<String>,
}

/// A `ui` file given as a URL: Stash links it as it is (and adds it to the
/// page's policy) instead of serving it from the plugin folder.
pub fn is_remote_file(file: &str) -> bool {
    file.starts_with("http://") || file.starts_with("https://")
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ui {
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub csp: Csp,
    #[serde(default)]
    pub javascript: Vec<String>,
    #[serde(default)]
    pub css: Vec<String>,
    #[serde(default)]
    pub assets: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Setting {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub description: String,
}

/// A plugin manifest, read as Stash reads it (pkg/plugin/config.go).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub name: String,
    pub description: Option<String>,
    pub url: Option<String>,
    pub version: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub exec: Vec<String>,
    #[serde(default, rename = "errLog")]
    pub err_log: Option<String>,
    #[serde(default)]
    pub tasks: Vec<Operation>,
    #[serde(default)]
    pub hooks: Vec<Operation>,
    #[serde(default)]
    pub ui: Ui,
    #[serde(default)]
    pub settings: BTreeMap<String, Setting>,
}

/// A plugin as Stash loaded it: id (the file name), its `.yml`, the manifest.
#[derive(Clone, Debug)]
pub struct Plugin {
    pub id: String,
    pub yml: PathBuf,
    pub manifest: Manifest,
}

const SETTING_TYPES: [&str; 3] = ["STRING", "NUMBER", "BOOLEAN"];

impl Plugin {
    /// Loads `<plugin folder>/<id>.yml` strictly: an unknown key, an
    /// unknown interface or setting type, or a hook trigger Stash does not
    /// have is refused (Stash then does not load the plugin).
    pub fn load(yml: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(yml).map_err(|e| format!("{}: {e}", yml.display()))?;
        let manifest: Manifest = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", yml.display()))?;
        if let Some(i) = manifest.interface.as_deref().filter(|i| !["raw", "rpc", "js"].contains(i)) {
            return Err(format!("{}: invalid interface {i:?}", yml.display()));
        }
        for (key, s) in &manifest.settings {
            if let Some(t) = s.kind.as_deref().filter(|t| !SETTING_TYPES.contains(t)) {
                return Err(format!("{}: setting {key} has invalid type {t:?}", yml.display()));
            }
        }
        for hook in &manifest.hooks {
            if let Some(t) = hook.triggered_by.iter().find(|t| !HOOK_TRIGGERS.contains(&t.as_str())) {
                return Err(format!("{}: hook {:?} has invalid trigger {t:?}", yml.display(), hook.name));
            }
        }
        let id = yml.file_stem().and_then(|s| s.to_str()).ok_or("plugin file has no name")?.to_string();
        Ok(Self { id, yml: yml.to_path_buf(), manifest })
    }

    /// The plugin's folder (`filepath.Dir(c.path)`).
    pub fn dir(&self) -> PathBuf {
        self.yml.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// `Config.getExecCommand`: `exec` plus the operation's `execArgs`; the
    /// first element, unless it is `python`/`python3`, is looked up on
    /// `PATH` (Go's `exec.LookPath`) and otherwise joined to the plugin
    /// folder; `{pluginDir}` is replaced only in the later elements.
    pub fn exec_command(&self, operation: Option<&Operation>) -> Vec<String> {
        let mut ret = self.manifest.exec.clone();
        if let Some(op) = operation {
            ret.extend(op.exec_args.iter().cloned());
        }
        if let Some(first) = ret.first_mut() {
            if !is_python(first) && look_path(first).is_none() {
                *first = self.dir().join(&*first).to_string_lossy().into_owned();
            }
        }
        let dir = self.dir().to_string_lossy().into_owned();
        for arg in ret.iter_mut().skip(1) {
            *arg = arg.replace("{pluginDir}", &dir);
        }
        ret
    }

    /// Hooks of this plugin triggered by `hook_type`.
    pub fn hooks_for<'a>(&'a self, hook_type: &'a str) -> impl Iterator<Item = &'a Operation> + 'a {
        self.manifest.hooks.iter().filter(move |h| h.triggered_by.iter().any(|t| t == hook_type))
    }

    pub fn task(&self, name: &str) -> Option<&Operation> {
        self.manifest.tasks.iter().find(|t| t.name == name)
    }

    pub fn err_log(&self) -> LogLevel {
        LogLevel::from_err_log(self.manifest.err_log.as_deref())
    }
}

/// The post hooks Stash knows (pkg/plugin/hook/hooks.go).
pub const HOOK_TRIGGERS: &[&str] = &[
    "SceneMarker.Create.Post",
    "SceneMarker.Update.Post",
    "SceneMarker.Destroy.Post",
    "Scene.Create.Post",
    "Scene.Update.Post",
    "Scene.Destroy.Post",
    "Image.Create.Post",
    "Image.Update.Post",
    "Image.Destroy.Post",
    "Gallery.Create.Post",
    "Gallery.Update.Post",
    "Gallery.Destroy.Post",
    "GalleryChapter.Create.Post",
    "GalleryChapter.Update.Post",
    "GalleryChapter.Destroy.Post",
    "Movie.Create.Post",
    "Movie.Update.Post",
    "Movie.Destroy.Post",
    "Group.Create.Post",
    "Group.Update.Post",
    "Group.Destroy.Post",
    "Performer.Create.Post",
    "Performer.Update.Post",
    "Performer.Destroy.Post",
    "Studio.Create.Post",
    "Studio.Update.Post",
    "Studio.Destroy.Post",
    "Tag.Create.Post",
    "Tag.Update.Post",
    "Tag.Merge.Post",
    "Tag.Destroy.Post",
];

/// pkg/python `IsPythonCommand`.
fn is_python(arg: &str) -> bool {
    arg == "python" || arg == "python3"
}

/// Go's `exec.LookPath` on Unix: a name with a slash is checked as it is
/// (relative to the working directory); otherwise each `PATH` entry is
/// tried. Only an executable regular file counts.
fn look_path(name: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                m.is_file()
            }
        })
    };
    if name.contains('/') || name.contains(std::path::MAIN_SEPARATOR) {
        return executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| executable(p))
}

/// Starts `exec` (argv), writes `input` to stdin, closes it, and waits as
/// pkg/plugin's raw task does: for stdout's end (`io.ReadAll`) and the exit
/// (`cmd.Wait`), at most 120 s (Stash has no limit; a test must end).
/// stderr is read meanwhile; Go's `Wait` closes it once the process has
/// exited, so a descendant still holding it does not keep Stash waiting —
/// what is there a moment after the exit is kept. The working directory is
/// ours, as Stash's is its own.
pub async fn run(exec: &[String], input: &Value, default_level: LogLevel) -> std::io::Result<PluginRun> {
    let (program, args) =
        exec.split_first().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty exec"))?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin piped");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let body = serde_json::to_vec(input)?;
    let writer = async move {
        // A plugin that exits without reading stdin closes the pipe: not an error.
        let _ = stdin.write_all(&body).await;
        drop(stdin);
    };
    let read_out = async {
        let mut s = String::new();
        stdout.read_to_string(&mut s).await.map(|_| s)
    };
    let (err_buf, mut err_task) = read_in_background(stderr);
    let all = async { tokio::join!(writer, read_out, child.wait()) };
    let (_, out, status) = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "plugin did not finish within 120 s"))?;
    let (out, status) = (out?, status?);
    let elapsed = started.elapsed();
    if tokio::time::timeout(Duration::from_millis(100), &mut err_task).await.is_err() {
        err_task.abort();
    }
    let err = String::from_utf8_lossy(&err_buf.lock()).into_owned();
    let (logs, progress) = parse_stderr(&err, default_level);
    let (output, error) = parse_stdout(&out);
    Ok(PluginRun { output, error, logs, progress, status, elapsed, stdout: out, stderr: err })
}

/// Reads `pipe` to its end in a task, into a buffer readable at any time.
fn read_in_background(
    mut pipe: tokio::process::ChildStderr,
) -> (std::sync::Arc<parking_lot::Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let buf = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&buf);
    let task = tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            sink.lock().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_levels_progress_and_unprefixed_lines() {
        let (logs, progress) =
            parse_stderr("\x01i\x02hello\n\x01p\x020.5\nplain line\n\x01e\x02bad\n", LogLevel::Warning);
        assert_eq!(progress, [0.5]);
        assert_eq!(
            logs,
            [
                LogLine { level: LogLevel::Info, message: "hello".into() },
                LogLine { level: LogLevel::Warning, message: "plain line".into() },
                LogLine { level: LogLevel::Error, message: "bad".into() },
            ]
        );
    }

    #[test]
    fn stdout_json_or_raw_text() {
        assert_eq!(parse_stdout("{\"output\":\"ok\"}"), (Some(Value::from("ok")), None));
        assert_eq!(parse_stdout("{\"error\":\"boom\"}"), (None, Some("boom".into())));
        assert_eq!(parse_stdout("not json"), (Some(Value::from("not json")), None));
        assert_eq!(parse_stdout(""), (Some(Value::from("")), None), "Stash: unparseable text is the output");
        assert_eq!(parse_stdout("{\"error\": \"\"}"), (None, Some(String::new())), "an empty error is an error");
    }
}
