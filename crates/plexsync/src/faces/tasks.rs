//! Operations shared by the plugin's tasks and the CLI.

use std::time::Instant;

use chrono::{DateTime, Utc};

use serde_json::{json, Value};

use crate::app::Context;
use crate::error::{Error, ErrorClass};
use crate::matching::LibraryIndex;
use crate::queue::{Queue, Reason};
use crate::sync::db;
use crate::worker::{self, WorkerOptions};

/// Runs task `mode`; `progress(done, total)` as work advances.
pub async fn run(ctx: &Context, mode: &str, progress: &mut (dyn FnMut(usize, usize) + Send)) -> Result<Value, Error> {
    run_with(ctx, mode, None, progress).await
}

/// Like [`run`], with a scene id for `explain`.
pub async fn run_with(
    ctx: &Context,
    mode: &str,
    scene_arg: Option<String>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    match mode {
        "sync_all" => enqueue_changed(ctx, None, progress).await,
        "sync_recent" => enqueue_changed(ctx, Some(day_ago()), progress).await,
        "process_queue" => process_queue(ctx, WorkerOptions::foreground(), progress).await,
        "queue_status" => status(ctx),
        "clear_queue" => {
            let removed = ctx.queue()?.clear().map_err(db)?;
            tracing::info!("removed {removed} scenes from the queue");
            Ok(json!({"removed": removed}))
        }
        "health_check" => health(ctx).await,
        "reconcile" => reconcile(&ctx.pipeline()?, &ctx.queue()?, None, progress).await,
        "reconcile_recent" => reconcile(&ctx.pipeline()?, &ctx.queue()?, Some(day_ago()), progress).await,
        "paths_suggest" => suggest_paths(ctx).await,
        "explain" => {
            let Some(id) = scene_arg else {
                return explain_failing(ctx).await;
            };
            explain(ctx, &id).await
        }
        "retry_dead" => {
            let n = ctx.queue()?.retry_dead(None).map_err(db)?;
            tracing::info!("{n} dead letters queued again");
            Ok(json!({"retried": n}))
        }
        "purge_dead" => {
            let n = ctx.queue()?.purge_dead(None).map_err(db)?;
            tracing::info!("{n} dead letters removed");
            Ok(json!({"purged": n}))
        }
        other => Err(Error::new(ErrorClass::Config, format!("unknown task mode '{other}'"))),
    }
}

/// 24 hours ago, for the "recent" tasks.
pub fn day_ago() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(24)
}

/// Scenes per Stash page in reconcile: Stash pages by offset, so every
/// page costs a walk to its start; few large pages keep a 100 000-scene
/// library linear enough.
const RECONCILE_PAGE: usize = 500;

/// Compares Stash's desired state with Plex's current values for every
/// scene (changed after `since`, when given) and queues each scene whose
/// Plex item differs or is missing; its stored hashes are reset so the
/// delivery rewrites every field.
pub async fn reconcile(
    pipeline: &crate::sync::Pipeline,
    queue: &Queue,
    since: Option<DateTime<Utc>>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    if pipeline.settings.mode == crate::config::Mode::Refresh {
        return Ok(json!({"message": "reconcile compares pushed values; refresh mode pushes none"}));
    }
    let settings = pipeline.settings.clone();
    let stash = pipeline.stash.clone();
    let (mut checked, mut differ, mut missing) = (0usize, 0usize, 0usize);
    for page in 1.. {
        let batch = stash.scenes_page(page, RECONCILE_PAGE, since).await?;
        let got = batch.scenes.len();
        for scene in batch.scenes {
            checked += 1;
            if since.is_some_and(|t| !crate::stash::updated_after(&scene.updated_at, t)) {
                continue;
            }
            if settings.skip_unorganized && !scene.organized {
                continue;
            }
            let recorded = queue.rating_keys(&scene.id).map_err(db)?;
            let items = pipeline.find(&scene, &recorded).await?.items();
            if items.is_empty() {
                missing += 1;
                queue.enqueue(&scene.id, Reason::Reconcile).map_err(db)?;
                continue;
            }
            let wanted = crate::desired::desired(&scene, &settings, &mut Default::default());
            let preserve = settings.preserve_plex_edits;
            let ours = queue.records(&scene.id).map_err(db)?;
            for (rk, _) in items {
                let Some(item) = pipeline.plex.as_ref().expect("find needs Plex").item(&rk).await? else {
                    missing += 1;
                    queue.enqueue(&scene.id, Reason::Reconcile).map_err(db)?;
                    break;
                };
                // Reconcile writes again only what PlexSync owns: with
                // preservePlexEdits, a person's locked edit is not a difference.
                let wrote = |d: &crate::desired::Desired| {
                    ours.iter().any(|r| r.rating_key == rk && r.field_hashes.contains_key(d.field.name()))
                };
                if wanted.iter().any(|d| {
                    crate::desired::differs(d, &item)
                        && (!preserve || !crate::desired::person_edited(d, &item, wrote(d)))
                }) {
                    differ += 1;
                    queue.reset_hashes(&scene.id).map_err(db)?;
                    queue.enqueue(&scene.id, Reason::Reconcile).map_err(db)?;
                    break;
                }
            }
        }
        progress(checked, batch.count);
        if got == 0 || checked >= batch.count {
            break;
        }
    }
    tracing::info!("reconcile: {checked} scenes checked, {differ} differ in Plex, {missing} not found in Plex; queued");
    Ok(json!({"checked": checked, "differ": differ, "missing": missing, "queued": differ + missing}))
}

/// Proposes path mappings from files present in both Stash and Plex.
pub async fn suggest_paths(ctx: &Context) -> Result<Value, Error> {
    let pipeline = ctx.pipeline()?;
    let plex = pipeline
        .plex
        .as_ref()
        .ok_or_else(|| Error::new(ErrorClass::Config, ctx.settings.delivery_problem().unwrap_or_default()))?;
    let index = LibraryIndex::build(plex, &ctx.settings).await?;
    let files = ctx.stash.all_files().await?;
    let rules = crate::matching::suggest_mappings(&files, &index);
    for r in rules.iter().take(5) {
        tracing::info!("suggested mapping: {} => {}  ({} of {} Stash files)", r.stash, r.plex, r.files, files.len());
    }
    if rules.is_empty() {
        tracing::info!("no mapping needed or none found: no Stash file has a single same-named, same-sized file in Plex under another folder");
    }
    let setting = rules.iter().take(3).map(|r| format!("{} => {}", r.stash, r.plex)).collect::<Vec<_>>().join("; ");
    Ok(
        json!({"suggestions": rules.iter().take(10).collect::<Vec<_>>(), "stash_files": files.len(), "pathMappings": setting}),
    )
}

/// How scene `id` is matched: files, mapped paths, candidates, decision.
pub async fn explain(ctx: &Context, id: &str) -> Result<Value, Error> {
    let scene = ctx
        .stash
        .find_scene(id)
        .await?
        .ok_or_else(|| Error::new(ErrorClass::BadData, format!("scene {id} does not exist in Stash")))?;
    let pipeline = ctx.pipeline()?;
    let recorded = ctx.queue()?.rating_keys(id).map_err(db)?;
    let (decision, trace) = pipeline.explain(&scene, &recorded).await?;
    tracing::info!("scene {id}: {}", scene.title.as_deref().unwrap_or("(no title)"));
    for line in &trace {
        tracing::info!("{line}");
    }
    let mut notes = crate::desired::Report::default();
    crate::desired::desired(&scene, &ctx.settings, &mut notes);
    for n in notes.dropped.iter().chain(&notes.changed) {
        tracing::info!("sanitizer: {n}");
    }
    Ok(
        json!({"scene": id, "files": scene.files.iter().map(|f| &f.path).collect::<Vec<_>>(), "trace": trace, "decision": decision, "sanitizer": notes}),
    )
}

/// Explains up to ten scenes that wait as not in Plex or ambiguous.
async fn explain_failing(ctx: &Context) -> Result<Value, Error> {
    let rows = ctx.queue()?.rows("pending", 500).map_err(db)?;
    let failing: Vec<String> = rows
        .into_iter()
        .filter(|r| matches!(r.error_class.as_deref(), Some("not_in_plex" | "ambiguous")))
        .map(|r| r.scene_id)
        .take(10)
        .collect();
    if failing.is_empty() {
        tracing::info!("no scene waits as not in Plex or ambiguous; pass scene_id to explain one");
    }
    let mut out = Vec::new();
    for id in failing {
        out.push(explain(ctx, &id).await?);
    }
    Ok(json!(out))
}

/// Queues every scene (updated after `since`, when given).
pub async fn enqueue_changed(
    ctx: &Context,
    since: Option<DateTime<Utc>>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    enqueue_ids(&ctx.stash, &ctx.queue()?, since, progress).await
}

/// Queues every scene of `stash` (updated after `since`, when given).
pub async fn enqueue_ids(
    stash: &crate::stash::StashClient,
    queue: &Queue,
    since: Option<DateTime<Utc>>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    let ids = stash.scene_ids(since, &mut *progress).await?;
    let n = queue.enqueue_many(ids.iter().map(String::as_str), Reason::Manual).map_err(db)?;
    tracing::info!("queued {n} scenes for Plex");
    Ok(json!({"queued": n}))
}

/// Queues every scene that shows `object`; scenes already waiting stay one
/// row each (the queue coalesces).
pub async fn enqueue_showing(
    stash: &crate::stash::StashClient,
    queue: &Queue,
    object: &crate::stash::Related,
) -> Result<usize, Error> {
    // Stash knows who shows it now; our records know who showed it when
    // delivered (the only answer once it is deleted or merged away).
    let mut ids = stash.scenes_showing(object).await?;
    ids.extend(queue.scenes_recorded_showing(object.kind.name(), &object.id).map_err(db)?);
    ids.sort();
    ids.dedup();
    let n = queue.enqueue_many(ids.iter().map(String::as_str), Reason::Hook).map_err(db)?;
    tracing::info!("{} {} changed: queued {n} scenes that show it", object.kind.name(), object.id);
    Ok(n)
}

/// Delivers in the foreground (when no other worker holds the queue).
pub async fn process_queue(
    ctx: &Context,
    options: WorkerOptions,
    progress: &mut (dyn FnMut(usize, usize) + Send),
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
    let stats = &pipeline.stats();
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
    let worker_running = worker::is_running(&ctx.data_dir);
    tracing::info!(
        "queue: {} waiting ({} due now), {} dead letters, {} scenes synced; worker {}",
        stats.pending,
        stats.due_now,
        stats.dead,
        stats.synced,
        if worker_running { "running" } else { "not running" }
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
        "worker_running": worker_running,
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
    let mut report = json!({"stash": "ok", "plexsync": crate::BUILD});
    tracing::info!("health: PlexSync {}", crate::BUILD);
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
