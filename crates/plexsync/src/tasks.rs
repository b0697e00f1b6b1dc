//! Operations shared by the plugin's tasks and the CLI.

use std::time::Instant;

use serde_json::{json, Value};

use crate::app::Context;
use crate::error::{Error, ErrorClass};
use crate::matching::LibraryIndex;
use crate::queue::{Queue, Reason};
use crate::sync::db;
use crate::worker::{self, WorkerOptions};

/// Runs task `mode`; `progress(done, total)` as work advances.
pub async fn run(ctx: &Context, mode: &str, progress: &mut dyn FnMut(usize, usize)) -> Result<Value, Error> {
    match mode {
        "sync_all" => enqueue_changed(ctx, None, progress).await,
        "sync_recent" => {
            let since = (chrono::Utc::now() - chrono::Duration::hours(24)).to_rfc3339();
            enqueue_changed(ctx, Some(&since), progress).await
        }
        "process_queue" => {
            process_queue(
                ctx,
                WorkerOptions { max_wait: std::time::Duration::ZERO, ..WorkerOptions::default() },
                progress,
            )
            .await
        }
        "queue_status" => status(ctx),
        "clear_queue" => {
            let removed = ctx.queue()?.clear().map_err(db)?;
            tracing::info!("removed {removed} scenes from the queue");
            Ok(json!({"removed": removed}))
        }
        "health_check" => health(ctx).await,
        other => Err(Error::new(ErrorClass::Config, format!("unknown task mode '{other}'"))),
    }
}

/// Queues every scene (updated after `since`, when given).
pub async fn enqueue_changed(
    ctx: &Context,
    since: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value, Error> {
    let ids = ctx.stash.scene_ids(since, &mut *progress).await?;
    let mut queue = ctx.queue()?;
    let n = queue.enqueue_many(ids.iter().map(String::as_str), Reason::Manual).map_err(db)?;
    tracing::info!("queued {n} scenes for Plex");
    Ok(json!({"queued": n}))
}

/// Delivers in the foreground (when no other worker holds the queue).
pub async fn process_queue(
    ctx: &Context,
    options: WorkerOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value, Error> {
    let Some(_lock) = worker::try_lock(&ctx.data_dir)
        .map_err(|e| Error::new(ErrorClass::Bug, format!("worker lock in {}: {e}", ctx.data_dir.display())))?
    else {
        let msg = "a background worker is delivering the queue already; see queue_status or its worker.log";
        tracing::info!("{msg}");
        return Ok(json!({"message": msg}));
    };
    let queue = ctx.queue()?;
    let mut pipeline = ctx.pipeline()?;
    let started = Instant::now();
    let result = worker::run(&mut pipeline, &queue, &options, &mut *progress).await;
    let stats = &pipeline.stats;
    tracing::info!(
        "delivered in {:.1?}: {} synced, {} unchanged, {} skipped, {} failed; {} fields written",
        started.elapsed(),
        stats.synced,
        stats.unchanged,
        stats.skipped,
        stats.failed,
        stats.fields_written
    );
    result?;
    Ok(json!({"stats": stats, "seconds": started.elapsed().as_secs_f64(), "queue": queue.stats().map_err(db)?}))
}

/// Queue counts, failures by class, dead letters, and setting warnings.
pub fn status(ctx: &Context) -> Result<Value, Error> {
    let queue: Queue = ctx.queue()?;
    let stats = queue.stats().map_err(db)?;
    let dead = queue.rows("dead", 50).map_err(db)?;
    let waiting: Vec<_> =
        queue.rows("pending", 200).map_err(db)?.into_iter().filter(|r| r.error_class.is_some()).take(50).collect();
    tracing::info!(
        "queue: {} waiting ({} due now), {} dead letters, {} scenes synced; worker {}",
        stats.pending,
        stats.due_now,
        stats.dead,
        stats.synced,
        if worker::is_running(&ctx.data_dir) { "running" } else { "not running" }
    );
    for row in waiting.iter().chain(dead.iter()) {
        tracing::info!(
            "scene {} ({}, {} attempts): {}",
            row.scene_id,
            row.error_class.as_deref().unwrap_or("-"),
            row.attempts,
            row.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(json!({
        "queue": stats,
        "worker_running": worker::is_running(&ctx.data_dir),
        "failing": waiting,
        "dead": dead,
        "setting_warnings": ctx.warnings,
        "data_dir": ctx.data_dir,
    }))
}

/// Checks everything a delivery needs, naming what to fix.
pub async fn health(ctx: &Context) -> Result<Value, Error> {
    let mut problems: Vec<String> = ctx.warnings.clone();
    if let Some(p) = ctx.settings.delivery_problem() {
        problems.push(p);
    }
    let mut report = json!({"stash": "ok"});
    let pipeline = ctx.pipeline()?;
    if let Some(plex) = &pipeline.plex {
        match plex.identity().await {
            Ok(id) => report["plex"] = json!({"version": id.version, "machine": id.machine_identifier}),
            Err(e) => problems.push(e.to_string()),
        }
        match LibraryIndex::build(plex, &ctx.settings).await {
            Ok(index) => {
                report["libraries"] = json!(index.sections.iter().map(|s| &s.title).collect::<Vec<_>>());
                report["plex_items"] = json!(index.len());
                if index.sections.is_empty() {
                    problems.push("Plex has no movie library; create one or set plexLibraries".into());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    for p in &problems {
        tracing::warn!("health: {p}");
    }
    if problems.is_empty() {
        tracing::info!("health: Stash and Plex reachable, settings complete");
    }
    report["problems"] = json!(problems);
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(Error::new(
            ErrorClass::Config,
            format!("health check found {} problem(s): {}", problems.len(), problems.join("; ")),
        ))
    }
}
