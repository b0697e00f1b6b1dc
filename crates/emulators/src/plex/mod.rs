//! A Plex Media Server emulator: real HTTP on loopback, Plex's XML and JSON,
//! its query-string edit API, partial scans, a request log and fault
//! injection. The real Plex answers in `third_party/plex-json` fix its JSON shape.

mod agent;
pub mod render;
mod server;
pub mod state;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use state::{DiskFile, Image, Item, PlexState, Provider, Pull, Section, TagKind};

/// How a request presented its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenUse {
    None,
    Header,
    Query,
}

/// One request as the emulator saw it. The token itself is never recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// Decoded query parameters, the token removed.
    pub query: Vec<(String, String)>,
    pub status: u16,
    pub json: bool,
    pub token: TokenUse,
    /// The injected fault that answered, if any.
    pub fault: Option<String>,
}

impl RequestRecord {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether this request changed an item (an edit, image or refresh).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "PUT" | "POST")
    }
}

/// Faults to inject; every field can be changed while the server runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Added to every response.
    pub latency_ms: u64,
    /// Requests answered at once (0: no limit); the others wait their turn,
    /// as on a real server whose request threads and single SQLite writer
    /// are busy. With `latency_ms`, answer times grow once more than this
    /// many requests are in flight: the knee adaptive concurrency looks for.
    pub capacity: usize,
    /// Requests stall (no answer) while set, for client timeouts.
    pub hang: bool,
    /// Share of requests answered with a random 500/502/503.
    pub error_rate: f64,
    /// Share of responses cut off halfway through the body.
    pub drop_rate: f64,
    /// The next N responses are cut off halfway.
    pub drop_next: u32,
    /// The next N requests get `429` with `Retry-After`.
    pub throttle_next: u32,
    pub retry_after_secs: u64,
    /// Every token is refused with `401`.
    pub token_revoked: bool,
    /// A reverse proxy or single sign-on gateway in front of Plex answers
    /// every request `200` with its HTML login page.
    pub login_page: bool,
    /// JSON answers carry invalid UTF-8: a multi-byte character cut in the
    /// first title, as real servers have sent.
    pub broken_utf8: bool,
    /// JSON `Field.locked` as `1` instead of `true`.
    pub locked_as_number: bool,
    /// A proxy refuses request lines longer than this many bytes with
    /// `414` (nginx: 8192 by default); 0 for none.
    pub max_request_line: usize,
    /// The token may list but not change anything (a shared user's):
    /// edits, uploads, refreshes and scans are refused with `403`.
    pub read_only_token: bool,
}

/// Fault state: the configuration plus timed windows and the seeded RNG.
#[derive(Debug)]
pub struct Faults {
    pub config: FaultConfig,
    pub maintenance_until: Option<Instant>,
    rng: ChaCha8Rng,
}

impl Faults {
    fn new(seed: u64) -> Self {
        Self { config: FaultConfig::default(), maintenance_until: None, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Reseeds the random faults, so a test's fault sequence is repeatable.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
    }
}

/// What the handlers share.
pub(crate) struct Shared {
    pub state: Mutex<PlexState>,
    pub faults: Mutex<Faults>,
    pub log: Mutex<Vec<RequestRecord>>,
    pub token: String,
    pub up: watch::Sender<bool>,
    /// Whether the listener is open, as the accept loop last set it.
    pub listening: watch::Sender<bool>,
    /// See [`PlexEmulator::record_queries`].
    pub record_queries: std::sync::atomic::AtomicBool,
    /// Slots for `FaultConfig::capacity`, rebuilt when it changes.
    pub slots: Mutex<(usize, Arc<tokio::sync::Semaphore>)>,
    /// Requests being answered now, and the most at once since the last
    /// [`PlexEmulator::reset_peak_in_flight`]: how parallel a client is.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub peak_in_flight: std::sync::atomic::AtomicUsize,
    /// Managed users' tokens and the content ratings each may see.
    pub managed: Mutex<std::collections::HashMap<String, Restriction>>,
}

/// What a managed user (a child's account, Plex Home) may see: items
/// whose content rating is one of `allowed`, and unrated ones. Such a user
/// changes nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restriction {
    pub allowed: Vec<String>,
}

impl Restriction {
    pub fn shows(&self, item: &Item) -> bool {
        item.field("contentRating").is_none_or(|r| self.allowed.iter().any(|a| a.eq_ignore_ascii_case(r)))
    }
}

/// Counts a request in flight while it lives.
pub(crate) struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(shared: &'a Shared) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Shared {
    /// Waits for one of `capacity` answering slots.
    pub(crate) async fn slot(&self, capacity: usize) -> tokio::sync::OwnedSemaphorePermit {
        let slots = {
            let mut slots = self.slots.lock();
            if slots.0 != capacity {
                *slots = (capacity, Arc::new(tokio::sync::Semaphore::new(capacity)));
            }
            Arc::clone(&slots.1)
        };
        slots.acquire_owned().await.expect("the semaphore is never closed")
    }

    /// Closes the port for `duration` (connections refused), then reopens it.
    pub(crate) fn down_for(self: &Arc<Self>, duration: Duration) {
        self.up.send_replace(false);
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            shared.up.send_replace(true);
        });
    }
}

/// Registers the provider at `root` (replacing one of the same identifier).
pub(crate) async fn add_provider(shared: &Shared, root: &str) -> Result<String, String> {
    let provider = match agent::register(root).await {
        Ok(p) => p,
        Err(e) => {
            shared.state.lock().agent_log.push(format!("adding provider {root}: {e}"));
            return Err(e);
        }
    };
    let mut state = shared.state.lock();
    state.providers.retain(|p| p.identifier != provider.identifier);
    let id = provider.identifier.clone();
    state.providers.push(provider);
    Ok(id)
}

/// A running Plex emulator. Dropping it stops the server.
pub struct PlexEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// Finishes scans and calls metadata providers (`agent.rs`).
    agent: tokio::task::JoinHandle<()>,
}

impl PlexEmulator {
    /// Starts on a free loopback port.
    pub async fn start(state: PlexState, token: &str) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), state, token).await
    }

    /// Starts on `addr` (port 0 picks a free one).
    pub async fn start_on(addr: SocketAddr, state: PlexState, token: &str) -> std::io::Result<Self> {
        let (up, _) = watch::channel(true);
        let (listening, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            faults: Mutex::new(Faults::new(0)),
            slots: Mutex::new((0, Arc::new(tokio::sync::Semaphore::new(0)))),
            in_flight: Default::default(),
            peak_in_flight: Default::default(),
            record_queries: std::sync::atomic::AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
            token: token.to_string(),
            managed: Mutex::default(),
            up,
            listening,
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        let agent = tokio::spawn(agent::run(Arc::clone(&shared)));
        Ok(Self { addr, shared, task, agent })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:32400`.
    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}", self.addr)).expect("socket address makes a valid URL")
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Reads or changes the server's data.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut PlexState) -> R) -> R {
        f(&mut self.shared.state.lock())
    }

    pub fn item(&self, rating_key: u64) -> Option<Item> {
        self.shared.state.lock().items.get(&rating_key).cloned()
    }

    /// The item whose part is `file`, if Plex has scanned it.
    pub fn item_by_file(&self, file: &str) -> Option<Item> {
        let state = self.shared.state.lock();
        state.items.values().find(|i| i.files().any(|p| p.file == file)).cloned()
    }

    /// Adds a custom metadata provider by its root URL, as the owner does
    /// in Settings → Metadata Agents: its manifest is fetched and checked.
    /// Returns its identifier.
    pub async fn add_provider(&self, root: &str) -> Result<String, String> {
        add_provider(&self.shared, root).await
    }

    /// Makes `agent` (a provider's identifier, or Plex's own agent) the
    /// agent of `section` (Library → Edit → Advanced).
    pub fn set_agent(&self, section: u32, agent: &str) {
        let mut state = self.shared.state.lock();
        if let Some(s) = state.sections.iter_mut().find(|s| s.key == section) {
            s.agent = agent.to_string();
        }
    }

    /// Whether every scanned item has had its provider's answer: nothing
    /// waits on disk, for a call, or for an answer.
    pub fn agent_idle(&self) -> bool {
        let state = self.shared.state.lock();
        state.disk.is_empty() && state.pulls_in_flight == 0 && state.items.values().all(|i| i.pull.is_none())
    }

    /// What went wrong talking to providers.
    pub fn agent_log(&self) -> Vec<String> {
        self.shared.state.lock().agent_log.clone()
    }

    /// Adds a managed user (Plex Home) whose `token` sees only items rated
    /// one of `allowed`, and unrated ones.
    pub fn add_managed_user(&self, token: &str, allowed: &[&str]) {
        let restriction = Restriction { allowed: allowed.iter().map(|a| a.to_string()).collect() };
        self.shared.managed.lock().insert(token.to_string(), restriction);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().clear();
    }

    /// Whether request records keep their query parameters (on by
    /// default). A benchmark that only counts requests turns it off: a
    /// 100 000-scene run would keep millions of small strings.
    pub fn record_queries(&self, on: bool) {
        self.shared.record_queries.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes fault injection.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.shared.faults.lock());
    }

    /// Clears every fault, including a maintenance window.
    pub fn heal(&self) {
        let mut faults = self.shared.faults.lock();
        faults.config = FaultConfig::default();
        faults.maintenance_until = None;
        self.shared.up.send_replace(true);
    }

    /// Answers `503 Maintenance` to everything for `duration`.
    pub fn maintenance_for(&self, duration: Duration) {
        self.shared.faults.lock().maintenance_until = Some(Instant::now() + duration);
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests answered at once since the last reset.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn reset_peak_in_flight(&self) {
        self.shared.peak_in_flight.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the port: new connections are refused and open ones are cut.
    pub fn go_down(&self) {
        self.shared.up.send_replace(false);
    }

    /// Reopens the port after [`Self::go_down`].
    pub fn come_up(&self) {
        self.shared.up.send_replace(true);
    }

    /// Closes the port for `duration`, then reopens it by itself.
    pub fn down_for(&self, duration: Duration) {
        self.shared.down_for(duration);
    }

    /// Whether the port is open right now.
    pub fn is_up(&self) -> bool {
        *self.shared.listening.borrow()
    }

    /// Waits until the port is as last asked (closed after [`Self::go_down`],
    /// open after [`Self::come_up`]).
    pub async fn settled(&self) {
        let mut listening = self.shared.listening.subscribe();
        let want = *self.shared.up.borrow();
        let _ = listening.wait_for(|l| *l == want).await;
    }
}

impl Drop for PlexEmulator {
    fn drop(&mut self) {
        self.agent.abort();
        self.task.abort();
    }
}
