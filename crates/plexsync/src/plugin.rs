//! The plugin face: what `plexsync plugin` does when Stash runs it.
//!
//! Hooks only record the scene in the queue and make sure a worker runs;
//! they never call Plex or Stash, so they return in milliseconds. Tasks
//! read PlexSync's settings from Stash and act.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};

use crate::app::{open_queue, Context, Sources};
use crate::protocol::{self, HookContext, PluginInput, ServerConnection};
use crate::queue::Reason;
use crate::worker;

/// Task modes (the manifest's `defaultArgs.mode`).
pub const MODES: &[(&str, &str)] = &[
    ("sync_all", "Queue every scene for a sync"),
    ("sync_recent", "Queue scenes changed in the last 24 hours"),
    ("process_queue", "Deliver what is due now, in the foreground with progress"),
    ("queue_status", "Show the queue: waiting, failed, dead letters"),
    ("clear_queue", "Empty the queue"),
    ("health_check", "Check settings, Stash, Plex and libraries"),
];

/// Runs the plugin on Stash's stdin; returns the process exit code.
pub async fn run(stdin: &str) -> i32 {
    let input = match protocol::parse_input(stdin) {
        Ok(input) => input,
        Err(e) => {
            protocol::log(protocol::Level::Error, &format!("PlexSync: {e}"));
            protocol::output(Err(e));
            return 1;
        }
    };
    let result = match &input.args.hook {
        Some(hook) => handle_hook(&input, hook),
        None => handle_task(&input).await,
    };
    match result {
        Ok(output) => {
            protocol::output(Ok(output));
            0
        }
        Err(e) => {
            protocol::log(protocol::Level::Error, &e);
            protocol::output(Err(e));
            1
        }
    }
}

/// `<Stash config folder>/plexsync`, unless `dataDir` is set locally.
fn data_dir(conn: &ServerConnection) -> PathBuf {
    let local = Sources::default().local().settings;
    local.data_dir.unwrap_or_else(|| match (&conn.dir, &conn.plugin_dir) {
        (Some(dir), _) => dir.join("plexsync"),
        (None, Some(dir)) => dir.join("data"),
        (None, None) => crate::app::default_data_dir(),
    })
}

fn handle_hook(input: &PluginInput, hook: &HookContext) -> Result<Value, String> {
    let id =
        hook.scene_id().ok_or_else(|| format!("hook {} came without a scene id (got {})", hook.hook_type, hook.id))?;
    let dir = data_dir(&input.server_connection);
    let queue = open_queue(&dir).map_err(|e| e.to_string())?;
    match hook.hook_type.as_str() {
        "Scene.Create.Post" | "Scene.Update.Post" => {
            queue.enqueue(&id, Reason::Hook).map_err(|e| format!("cannot queue scene {id}: {e}"))?;
            ensure_worker(&dir, &input.server_connection)?;
            Ok(json!(format!("scene {id} queued for Plex")))
        }
        "Scene.Destroy.Post" => {
            queue.forget(&id).map_err(|e| e.to_string())?;
            // A waiting row delivers as "gone" and ends there.
            Ok(json!(format!("scene {id} forgotten")))
        }
        other => Err(format!(
            "PlexSync does not handle the hook {other}; the manifest should only route Scene.Create.Post, Scene.Update.Post and Scene.Destroy.Post to it"
        )),
    }
}

/// Starts a detached worker unless one runs.
pub fn ensure_worker(data_dir: &Path, conn: &ServerConnection) -> Result<(), String> {
    if worker::is_running(data_dir) {
        return Ok(());
    }
    spawn_worker(data_dir, conn).map_err(|e| format!("cannot start the PlexSync worker: {e}"))
}

/// The worker must not hold Stash's pipes (Stash would wait for it) nor die
/// with the plugin's process group: null stdin/stdout, stderr to a log file,
/// its own session. Credentials travel in its environment, not its argv.
fn spawn_worker(data_dir: &Path, conn: &ServerConnection) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(data_dir)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("worker.log"))?;
    let url = conn.url().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("worker").arg("--data-dir").arg(data_dir).env("PLEXSYNC_STASH_URL", url.as_str());
    let creds = conn.credentials();
    if let Some(key) = &creds.api_key {
        cmd.env("PLEXSYNC_STASH_API_KEY", key.expose());
    }
    if let Some(cookie) = &creds.session_cookie {
        cmd.env("PLEXSYNC_STASH_SESSION", cookie.expose());
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()?;
    Ok(())
}

async fn handle_task(input: &PluginInput) -> Result<Value, String> {
    let conn = &input.server_connection;
    let mode = input.args.mode.clone().ok_or_else(|| {
        "the task has no mode; PlexSync's tasks pass one of: ".to_string()
            + &MODES.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
    })?;
    if !MODES.iter().any(|(m, _)| *m == mode) {
        return Err(format!(
            "unknown task mode '{mode}'; known: {}",
            MODES.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
        ));
    }
    let url = conn.url()?;
    let ctx =
        Context::new(&url, conn.credentials(), data_dir(conn), &Sources::default()).await.map_err(|e| e.to_string())?;
    for w in &ctx.warnings {
        tracing::warn!("setting: {w}");
    }
    let result = crate::tasks::run(&ctx, &mode, &mut |done, total| {
        if total > 0 {
            protocol::progress(done as f64 / total as f64)
        }
    })
    .await;
    match result {
        Ok(value) => {
            if matches!(mode.as_str(), "sync_all" | "sync_recent") {
                ensure_worker(&ctx.data_dir, conn)?;
            }
            Ok(value)
        }
        Err(e) => Err(e.to_string()),
    }
}
