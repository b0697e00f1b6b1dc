//! Runs a `raw` interface plugin the way Stash does: one JSON object on
//! stdin (then closed), log lines on stderr with Stash's level prefix, one
//! JSON object on stdout; Stash waits until the process exits *and* both
//! pipes are closed, so a child that keeps them open keeps the run going.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
    /// From start until the process exited and both pipes closed.
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

/// Parses stderr by Stash's rules; `default_level` is the manifest's `errLog`.
pub fn parse_stderr(stderr: &str, default_level: LogLevel) -> (Vec<LogLine>, Vec<f64>) {
    let mut logs = Vec::new();
    let mut progress = Vec::new();
    for line in stderr.lines() {
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

/// Parses stdout: the output JSON, or the raw text as output.
pub fn parse_stdout(stdout: &str) -> (Option<Value>, Option<String>) {
    if stdout.trim().is_empty() {
        return (None, None);
    }
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(Value::Object(map)) => {
            let error = map.get("error").and_then(Value::as_str).map(str::to_string);
            (map.get("output").cloned(), error)
        }
        Ok(other) => (Some(other), None),
        Err(_) => (Some(Value::String(stdout.to_string())), None),
    }
}

/// Starts `exec` (argv), writes `input` to stdin, closes it, and waits for
/// the exit and for both pipes to close, at most 120 s.
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
    let mut stderr = child.stderr.take().expect("stderr piped");
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
    let read_err = async {
        let mut s = String::new();
        stderr.read_to_string(&mut s).await.map(|_| s)
    };
    let all = async { tokio::join!(writer, read_out, read_err, child.wait()) };
    let (_, out, err, status) = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "plugin did not finish within 120 s"))?;
    let (out, err, status) = (out?, err?, status?);
    let elapsed = started.elapsed();
    let (logs, progress) = parse_stderr(&err, default_level);
    let (output, error) = parse_stdout(&out);
    Ok(PluginRun { output, error, logs, progress, status, elapsed, stdout: out, stderr: err })
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
        assert_eq!(parse_stdout(""), (None, None));
    }
}
