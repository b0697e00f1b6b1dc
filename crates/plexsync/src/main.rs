//! `plexsync`: one binary, several faces (see ARCHITECTURE.md).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use plexsync::error::ErrorClass;
use plexsync::faces::context::{Context, Sources};
use plexsync::faces::operations::{self, Operation, StoreOp};
use plexsync::faces::plugin;
use plexsync::ids::SceneId;
use plexsync::logging;
use plexsync::pipeline::worker::{self, WorkerOptions};

#[derive(Parser)]
#[command(version = plexsync::BUILD, about = "Keeps Plex's metadata in step with Stash")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML file with settings (same names as the plugin settings).
    #[arg(long, global = true, env = "PLEXSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Folder of the queue database (default: ~/.local/share/plexsync).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Stash's URL, e.g. http://localhost:9999.
    #[arg(long, global = true)]
    stash_url: Option<String>,
    /// Plex's URL, e.g. http://192.168.1.10:32400.
    #[arg(long, global = true)]
    plex_url: Option<String>,
    /// More detail in the log.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run as Stash's plugin (Stash starts this with JSON on stdin).
    Plugin,
    /// Deliver the queue, waiting out retries and outages; exits when empty.
    Worker {
        /// Exit as soon as nothing is due instead of waiting for retries.
        #[arg(long)]
        exit_when_idle: bool,
        /// Started by the plugin: stay alive a while after the queue empties.
        #[arg(long, hide = true)]
        plugin: bool,
    },
    /// Queue scenes and deliver them now, with progress.
    Sync {
        /// Every scene.
        #[arg(long, conflicts_with_all = ["recent", "scene"])]
        all: bool,
        /// Scenes changed in the last 24 hours.
        #[arg(long, conflicts_with = "scene")]
        recent: bool,
        /// These scene ids.
        #[arg(long, num_args = 1.., value_parser = scene_id)]
        scene: Vec<SceneId>,
    },
    /// Run for good: the worker, change capture, a daily reconcile, and
    /// HTTP health (/healthz), metrics (/metrics) and a status page (/).
    Daemon {
        /// Address of the HTTP endpoints (default 127.0.0.1:9977).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Queue and sync state.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Queue maintenance.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Compare Stash with Plex and queue every scene whose Plex item differs or is missing.
    Reconcile {
        /// Only scenes changed in the last 24 hours.
        #[arg(long, conflicts_with = "since")]
        recent: bool,
        /// Only scenes changed after this date (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Show how a scene is matched to a Plex item.
    Explain {
        /// Stash scene id.
        scene: String,
    },
    /// Path mappings.
    Paths {
        #[command(subcommand)]
        action: PathsAction,
    },
    /// Check settings, Stash, Plex and libraries.
    Health,
    /// Print the metadata provider's URL to paste into Plex (the daemon
    /// serves it with the setting provider on).
    ProviderUrl,
    /// Show StashPlexAgent's and Stash2Plex's settings beside the PlexSync
    /// settings that mean the same; with --apply, write them into
    /// PlexSync's settings in Stash.
    Migrate {
        /// StashPlexAgent's preferences file (Plex's `Plug-in
        /// Support/Preferences/com.plexapp.agents.stashplexagent.xml`); by
        /// default Plex is asked, then Plex's usual data folders are looked in.
        #[arg(long)]
        agent_prefs: Option<std::path::PathBuf>,
        /// Write the settings that differ.
        #[arg(long)]
        apply: bool,
    },
    /// Print the Stash plugin manifest (PlexSync.yml).
    Manifest,
    /// Sync a sample library between the bundled emulators, through a Plex outage.
    #[cfg(feature = "demo")]
    Demo {
        #[arg(long, default_value_t = 200)]
        scenes: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds Plex stays down during the demo (0 to 3600).
        #[arg(long, default_value = "3", value_parser = outage_secs)]
        outage_secs: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum PathsAction {
    /// Propose `stash => plex` prefix rules from files present in both.
    Suggest,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Remove every waiting scene.
    Clear,
    /// Queue dead letters again (all, or of one failure class).
    Retry {
        #[arg(long)]
        class: Option<String>,
    },
    /// Delete dead letters (all, or of one failure class).
    Purge {
        #[arg(long)]
        class: Option<String>,
    },
}

impl Command {
    fn is_demo(&self) -> bool {
        #[cfg(feature = "demo")]
        if matches!(self, Command::Demo { .. }) {
            return true;
        }
        false
    }
}

impl Cli {
    fn sources(&self) -> Sources {
        let mut cli = Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                cli.insert(k.into(), Value::String(v));
            }
        };
        put("dataDir", self.data_dir.as_ref().map(|p| p.display().to_string()));
        put("stashUrl", self.stash_url.clone());
        if let Command::Daemon { listen } = &self.command {
            put("daemonListen", listen.clone());
        }
        put("plexUrl", self.plex_url.clone());
        Sources { config_file: self.config.clone(), cli }
    }
}

/// `--outage-secs`: a number of seconds from 0 to an hour.
#[cfg(feature = "demo")]
fn outage_secs(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=3600.0).contains(&secs) {
        return Err("from 0 to 3600 seconds".into());
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Plugin) {
        logging::init_stash();
    } else {
        let quiet_by_default = cfg!(feature = "demo") && cli.command.is_demo();
        let level = match (cli.verbose, quiet_by_default) {
            (true, _) => "debug",
            (false, true) => "warn",
            (false, false) => "info",
        };
        // Progress is for a person at the CLI; the worker and the daemon
        // write logs nobody watches live.
        let watched = !matches!(cli.command, Command::Worker { .. } | Command::Daemon { .. });
        let bars = (watched && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        match &bars {
            Some(bars) => plexsync::progress::show_bars(bars.clone()),
            None if watched => plexsync::progress::show_lines(),
            None => {}
        }
        logging::init_plain(level, matches!(cli.command, Command::Worker { .. }), bars);
    }
    // The daemon answers Plex and monitors while its worker waits on SQLite
    // or on a slow Stash: several threads, so one blocked call stalls no
    // answer. Every other command is one task at a time.
    let mut builder = match cli.command {
        Command::Daemon { .. } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(DAEMON_THREADS);
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "plexsync: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon's runtime threads: more than a small NAS's cores on purpose,
/// as they wait (on SQLite's lock, on Stash) more than they compute.
const DAEMON_THREADS: usize = 4;

/// A `--scene` value: a Stash scene id, in its one spelling (`007` is `7`).
fn scene_id(s: &str) -> Result<SceneId, String> {
    SceneId::parse(s.trim()).ok_or_else(|| format!("'{s}' is not a Stash scene id (digits, not 0)"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = cli.sources();
    match &cli.command {
        Command::Plugin => {
            let mut stdin = String::new();
            let _ = std::io::stdin().read_to_string(&mut stdin);
            Ok(ExitCode::from(u8::try_from(plugin::run(&stdin).await).unwrap_or(1)))
        }
        Command::Worker { exit_when_idle, plugin } => {
            let ctx = Context::from_local(&sources).await?;
            for w in &ctx.warnings {
                tracing::warn!("setting: {w}");
            }
            let Some(_lock) = worker::try_lock(&ctx.data_dir)? else {
                tracing::debug!("another worker is delivering; nothing to do");
                return Ok(ExitCode::SUCCESS);
            };
            // For people and tools that need to find the worker (status, kill).
            let _ = std::fs::write(ctx.data_dir.join("worker.pid"), std::process::id().to_string());
            let queue = ctx.checked_store()?;
            let mut pipeline = ctx.pipeline()?;
            let options = match (exit_when_idle, plugin) {
                (true, _) => WorkerOptions::foreground(),
                (false, true) => WorkerOptions::detached(ctx.settings.retry.worker_idle),
                (false, false) => WorkerOptions::default(),
            };
            tracing::info!("worker started ({} waiting)", queue.stats()?.pending);
            let result = worker::run(&mut pipeline, &queue, &options, |_, _| {}).await;
            let s = &pipeline.stats();
            tracing::info!(
                "worker done: {} synced, {} unchanged, {} skipped, {} failed tries",
                s.synced,
                s.unchanged,
                s.skipped,
                s.failed
            );
            if let Err(e) = result {
                tracing::error!("delivery stopped, nothing is lost (the queue waits): {e}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { all, recent, scene } => {
            let queue = match (all, recent) {
                (true, _) => Operation::QueueAll { since: None },
                (false, true) => Operation::QueueAll { since: Some(operations::day_ago()) },
                _ if !scene.is_empty() => Operation::Store(StoreOp::QueueScenes(scene.clone())),
                _ => anyhow::bail!("say what to sync: --all, --recent or --scene ID"),
            };
            let ctx = Context::from_local(&sources).await?;
            operations::run(&ctx, &queue, &mut plexsync::progress::reporter("scenes queued")).await?;
            let delivered =
                operations::run(&ctx, &Operation::Deliver, &mut plexsync::progress::reporter("scenes delivered"))
                    .await?;
            out(&serde_json::to_string_pretty(&delivered)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon { .. } => {
            plexsync::faces::daemon::run(sources).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let ctx = Context::from_local(&sources).await?;
            let status = operations::run(&ctx, &Operation::Status, &mut |_, _| {}).await?;
            if *json {
                out(&serde_json::to_string_pretty(&status)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { action } => {
            let class = |class: &Option<String>| -> anyhow::Result<Option<ErrorClass>> {
                class
                    .as_deref()
                    .map(|c| {
                        ErrorClass::parse(c)
                            .ok_or_else(|| anyhow::anyhow!("unknown failure class '{c}' (see docs/failures.md)"))
                    })
                    .transpose()
            };
            let op = match action {
                QueueAction::Clear => Operation::Store(StoreOp::ClearQueue),
                QueueAction::Retry { class: c } => Operation::Store(StoreOp::RetryDead { class: class(c)? }),
                QueueAction::Purge { class: c } => Operation::Store(StoreOp::PurgeDead { class: class(c)? }),
            };
            let ctx = Context::from_local(&sources).await?;
            let result = operations::run(&ctx, &op, &mut |_, _| {}).await?;
            out(&result.to_string());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile { recent, since } => {
            let since = match (recent, since) {
                (true, _) => Some(operations::day_ago()),
                (false, Some(s)) => Some(parse_since(s)?),
                (false, None) => None,
            };
            let ctx = Context::from_local(&sources).await?;
            let found = operations::run(
                &ctx,
                &Operation::Reconcile { since },
                &mut plexsync::progress::reporter("scenes compared"),
            )
            .await?;
            let delivered =
                operations::run(&ctx, &Operation::Deliver, &mut plexsync::progress::reporter("scenes delivered"))
                    .await?;
            out(&serde_json::to_string_pretty(&json!({"reconcile": found, "delivery": delivered}))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { scene } => {
            print_operation(&sources, Operation::Explain { scene: Some(scene.clone()) }).await
        }
        Command::Paths { action: PathsAction::Suggest } => print_operation(&sources, Operation::SuggestPaths).await,
        Command::Health => print_operation(&sources, Operation::Health).await,
        Command::ProviderUrl => print_operation(&sources, Operation::ProviderUrl).await,
        Command::Migrate { agent_prefs, apply } => {
            print_operation(&sources, Operation::Migrate { agent_prefs: agent_prefs.clone(), apply: *apply }).await
        }
        Command::Manifest => {
            // Exactly as generated (plugin/PlexSync.yml is this output).
            let _ = std::io::Write::write_all(&mut std::io::stdout(), plugin::manifest().as_bytes());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::Demo { scenes, seed, outage_secs } => {
            plexsync::faces::demo::run(*scenes, *seed, *outage_secs).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `op` and prints its result as JSON.
async fn print_operation(sources: &Sources, op: Operation) -> anyhow::Result<ExitCode> {
    let ctx = Context::from_local(sources).await?;
    let answer = operations::run(&ctx, &op, &mut |_, _| {}).await?;
    out(&serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}

/// Prints a command's answer. A reader that went away (`plexsync status |
/// head`) is not an error of ours; `println!` would panic on it.
fn out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// `--since`: a date (midnight UTC) or an RFC 3339 time.
fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let t = chrono::DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&chrono::Utc)).or_else(|_| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(Default::default()).and_utc())
    });
    t.map_err(|_| anyhow::anyhow!("--since must be a date (2026-01-31) or an RFC 3339 time, got '{s}'"))
}
