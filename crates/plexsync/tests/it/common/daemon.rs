//! `plexsync daemon` run as a person runs it, on a bed's queue, and its
//! `/metrics` read as Prometheus reads them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Bed;

pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `plexsync daemon` on the bed's queue and returns once Stash
    /// answered it (it listens before that, answering 503); an error with
    /// its log when it exited first.
    pub fn start(bed: &Bed, listen: &str, env: &[(&str, &str)]) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_plexsync"));
        command
            .args(["--data-dir", bed.data_dir().to_str().unwrap(), "daemon", "--listen", listen])
            .env("PLEXSYNC_STASH_URL", bed.stash.url().as_str())
            .env("PLEXSYNC_STASH_SESSION", bed.session())
            .envs(env.iter().copied());
        Self::spawn(command)
    }

    /// Starts a daemon however `command` runs it (in a container, say),
    /// reading its log from stderr, as [`Daemon::start`].
    pub fn spawn(mut command: Command) -> Result<Self, String> {
        let mut child = command.stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut url = String::new();
            for line in lines.lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    url = addr.split_whitespace().next().unwrap_or("").to_string();
                }
                if line.contains("Stash answers") {
                    let _ = tx.send(url.clone());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => Ok(Self { child, url, log }),
            Err(_) => {
                let _ = child.wait();
                Err(log.lock().unwrap().clone())
            }
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The status page (with `token` when the daemon needs one).
    pub async fn page(&self, token: Option<&str>) -> String {
        let (status, page) = self.get("/", token).await;
        assert_eq!(status, 200, "{page}");
        page
    }

    /// The key every form of the page carries.
    pub async fn form_key(&self, token: Option<&str>) -> String {
        let page = self.page(token).await;
        let key = page.split("name=\"key\" value=\"").nth(1).and_then(|r| r.split('"').next());
        key.expect("a form key").to_string()
    }

    /// The metadata provider's URL, as the page shows it.
    pub async fn provider_url(&self, token: Option<&str>) -> String {
        let page = self.page(token).await;
        let url = page.split("Metadata provider").nth(1).and_then(|r| r.split("<pre class=\"trace\">").nth(1));
        url.and_then(|r| r.split("</pre>").next()).expect("the page shows the provider's URL").to_string()
    }

    pub async fn health(&self) -> (u16, Value) {
        let (status, body) = self.get("/healthz", None).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// SIGTERM; returns how long the process took to exit.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        unsafe { libc::kill(libc::pid_t::try_from(self.child.id()).unwrap(), libc::SIGTERM) };
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of `metric`'s samples carrying all of `labels`, from
/// `/metrics` parsed as Prometheus parses it.
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .sum()
}

pub fn deliveries(text: &str, outcome: &str) -> f64 {
    sample(text, "plexsync_deliveries_total", &[("outcome", outcome)])
}
