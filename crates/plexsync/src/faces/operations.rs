//! The operations, once: what each one is ([`Operation`]), the plugin
//! tasks that name them ([`TASKS`]), and how each runs ([`run`]). The CLI,
//! the plugin's tasks, the Stash UI's buttons and the daemon's page all
//! dispatch here.

use std::time::Instant;

use chrono::{DateTime, Utc};

use serde_json::{json, Value};

use crate::error::{Error, ErrorClass};
use crate::faces::context::Context;
use crate::ids::SceneId;
use crate::pipeline::matching::LibraryIndex;
use crate::pipeline::requests::Work;
use crate::pipeline::worker::{self, WorkerOptions};
use crate::store::{Reason, Store};

/// Everything a person can ask of PlexSync, whichever face they ask
/// through: a CLI command, one of Stash's plugin tasks, a button of the
/// Stash UI or of the daemon's page. Each face builds one and hands it to
/// [`run`] (or, for what must not block, [`hand_to_worker`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    /// Queue every scene (changed after `since`).
    QueueAll {
        since: Option<DateTime<Utc>>,
    },
    /// Deliver what is due now, here, with progress.
    Deliver,
    Status,
    Health,
    /// Compare scenes (changed after `since`) with Plex; queue what differs.
    Reconcile {
        since: Option<DateTime<Utc>>,
    },
    SuggestPaths,
    /// One scene, or up to ten that wait as not in Plex or ambiguous.
    Explain {
        scene: Option<String>,
    },
    /// What the store alone answers.
    Store(StoreOp),
    /// The metadata provider's URL, to paste into Plex.
    ProviderUrl,
    /// The settings of StashPlexAgent and Stash2Plex beside PlexSync's;
    /// with `apply`, written into PlexSync's settings in Stash.
    Migrate {
        agent_prefs: Option<std::path::PathBuf>,
        apply: bool,
    },
}

/// What the store alone answers, no Stash or Plex request: the Stash UI
/// and the daemon's page ask while a person waits.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Queue these scenes.
    QueueScenes(Vec<SceneId>),
    ClearQueue,
    /// Dead letters (all, or of one class) back into the queue.
    RetryDead {
        class: Option<ErrorClass>,
    },
    /// Dead letters (all, or of one class) deleted.
    PurgeDead {
        class: Option<ErrorClass>,
    },
}

/// Task modes (the manifest's `defaultArgs.mode`), with their names and
/// descriptions in Stash's task list.
pub(crate) const TASKS: &[(&str, &str, &str)] = &[
    ("sync_all", "Sync all scenes", "Queue every scene for Plex; a background worker delivers them."),
    ("sync_recent", "Sync recent scenes", "Queue scenes changed in Stash in the last 24 hours."),
    ("process_queue", "Process queue", "Deliver what is due now, here, with progress."),
    ("queue_status", "Queue status", "Show waiting scenes, failures by class, and dead letters."),
    ("clear_queue", "Clear queue", "Remove every waiting scene from the queue."),
    ("health_check", "Health check", "Check settings, Stash, Plex and the libraries, naming what to fix."),
    (
        "reconcile",
        "Reconcile all",
        "Compare every scene with Plex and queue those whose Plex values differ or are missing.",
    ),
    ("reconcile_recent", "Reconcile recent", "Compare scenes changed in the last 24 hours with Plex."),
    ("paths_suggest", "Suggest path mappings", "Compare file names and sizes in Stash and Plex and propose pathMappings rules."),
    ("explain", "Explain matches", "Show how scenes are matched: the scene in args.scene_id, or up to ten scenes waiting as not in Plex or ambiguous."),
    ("retry_dead", "Retry dead letters", "Queue every scene that was given up on again, with fresh attempts."),
    ("purge_dead", "Purge dead letters", "Remove every scene that was given up on from the queue."),
    ("migrate", "Migrate settings: show", "Show StashPlexAgent's and Stash2Plex's settings beside the PlexSync settings that mean the same; writes nothing."),
    ("migrate_apply", "Migrate settings: apply", "Write StashPlexAgent's and Stash2Plex's settings into PlexSync's settings (only those that differ), then run Reconcile all."),
];

impl Operation {
    /// The operation of a plugin task's `mode` ([`TASKS`]); `scene` is the
    /// task's `scene_id` argument.
    pub(crate) fn from_task(mode: &str, scene: Option<String>) -> Result<Self, Error> {
        Ok(match mode {
            "sync_all" => Self::QueueAll { since: None },
            "sync_recent" => Self::QueueAll { since: Some(day_ago()) },
            "process_queue" => Self::Deliver,
            "queue_status" => Self::Status,
            "clear_queue" => Self::Store(StoreOp::ClearQueue),
            "health_check" => Self::Health,
            "reconcile" => Self::Reconcile { since: None },
            "reconcile_recent" => Self::Reconcile { since: Some(day_ago()) },
            "paths_suggest" => Self::SuggestPaths,
            "explain" => Self::Explain { scene },
            "retry_dead" => Self::Store(StoreOp::RetryDead { class: None }),
            "purge_dead" => Self::Store(StoreOp::PurgeDead { class: None }),
            "migrate" => Self::Migrate { agent_prefs: None, apply: false },
            "migrate_apply" => Self::Migrate { agent_prefs: None, apply: true },
            other => {
                let known = TASKS.iter().map(|(m, _, _)| *m).collect::<Vec<_>>().join(", ");
                return Err(Error::new(ErrorClass::Config, format!("unknown task mode '{other}'; known: {known}")));
            }
        })
    }

    /// What a face that must answer at once hands to the worker instead of
    /// running it: the operations that read the whole library.
    fn request(&self) -> Option<Work> {
        match self {
            Self::QueueAll { since } => Some(Work::Sync { since: *since }),
            Self::Reconcile { since } => Some(Work::Reconcile { since: *since }),
            _ => None,
        }
    }
}

/// Runs `op` here and now; `progress(done, total)` as work advances.
pub async fn run(
    ctx: &Context,
    op: &Operation,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    match op {
        Operation::Store(op) => run_on_store(&ctx.store()?, op),
        Operation::QueueAll { since } => {
            crate::pipeline::related::enqueue_ids(&ctx.stash, &ctx.store()?, *since, progress).await
        }
        Operation::Deliver => process_queue(ctx, WorkerOptions::foreground(), progress).await,
        Operation::Status => status(ctx),
        Operation::Health => health(ctx).await,
        Operation::Reconcile { since } => {
            crate::pipeline::reconcile::reconcile(&ctx.pipeline()?, &ctx.store()?, *since, progress).await
        }
        Operation::SuggestPaths => suggest_paths(ctx).await,
        Operation::ProviderUrl => provider_url(ctx),
        Operation::Migrate { agent_prefs, apply } => {
            crate::faces::migrate::run(ctx, agent_prefs.as_deref(), *apply).await
        }
        Operation::Explain { scene: Some(id) } => explain(ctx, id).await,
        Operation::Explain { scene: None } => explain_failing(ctx).await,
    }
}

/// Runs what the store alone answers.
pub(crate) fn run_on_store(store: &Store, op: &StoreOp) -> Result<Value, Error> {
    match op {
        StoreOp::QueueScenes(ids) => store.enqueue_many(ids, Reason::Manual).map(|n| {
            tracing::info!("queued {n} scenes for Plex");
            json!({"queued": n})
        }),
        StoreOp::ClearQueue => store.clear().map(|n| {
            tracing::info!("removed {n} scenes from the queue");
            json!({"removed": n})
        }),
        StoreOp::RetryDead { class } => store.retry_dead(class.map(ErrorClass::as_str)).map(|n| {
            tracing::info!("{n} dead letters queued again");
            json!({"retried": n})
        }),
        StoreOp::PurgeDead { class } => store.purge_dead(class.map(ErrorClass::as_str)).map(|n| {
            tracing::info!("{n} dead letters removed");
            json!({"purged": n})
        }),
    }
}

/// Hands `op` to the worker when it is one that reads the whole library
/// (a plugin task must return at once: Stash runs one task at a time).
pub(crate) fn hand_to_worker(store: &Store, op: &Operation) -> Option<Result<String, Error>> {
    op.request().map(|work| hand_work(store, &work))
}

/// Hands `work` to the worker; says so.
pub(crate) fn hand_work(store: &Store, work: &Work) -> Result<String, Error> {
    crate::pipeline::requests::request(store, work).map(|()| {
        let message = format!("{} handed to the background worker; run Queue status to follow it", work.describe());
        tracing::info!("{message}");
        message
    })
}

/// The provider's URL, made of the address the daemon last listened on
/// (else `daemonListen`) and its secret (made now when the daemon has not
/// run yet).
fn provider_url(ctx: &Context) -> Result<Value, Error> {
    let settings = &ctx.settings;
    let store = ctx.store()?;
    let listened = store.get_kv(crate::store::kv::DAEMON_LISTEN)?;
    let listen = listened.as_deref().unwrap_or(&settings.daemon.listen);
    let url = crate::faces::provider::url(&store, settings, listen)?;
    let mut notes = vec!["Plex: Settings → Metadata Agents → Add Provider, then paste the URL".to_string()];
    if listened.is_none() {
        notes.push(format!(
            "the daemon has not served the provider from this data folder yet: the address is daemonListen ({})",
            settings.daemon.listen
        ));
    }
    if !settings.daemon.provider {
        notes.push("the daemon serves it once the setting provider is on (PLEXSYNC_PROVIDER=true)".into());
    }
    if url.host_str() == Some("this-machine") {
        notes.push("replace this-machine by this machine's address as Plex reaches it".into());
    }
    Ok(json!({"provider_url": url.as_str(), "identifier": crate::faces::provider::IDENTIFIER, "notes": notes}))
}

/// 24 hours ago, for the "recent" tasks.
pub fn day_ago() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(24)
}

/// Proposes path mappings from files present in both Stash and Plex.
pub(crate) async fn suggest_paths(ctx: &Context) -> Result<Value, Error> {
    let pipeline = ctx.pipeline()?;
    let plex = pipeline
        .plex
        .as_ref()
        .ok_or_else(|| Error::new(ErrorClass::Config, ctx.settings.delivery_problem().unwrap_or_default()))?;
    let index = LibraryIndex::build(plex, &ctx.settings).await?;
    let mut tally = crate::pipeline::matching::MappingTally::default();
    ctx.stash.each_file(&mut |path, size| tally.add(&index, path, size)).await?;
    let files = tally.files;
    let rules = tally.rules();
    for r in rules.iter().take(5) {
        tracing::info!("suggested mapping: {} => {}  ({} of {files} Stash files)", r.stash, r.plex, r.files);
    }
    if rules.is_empty() {
        tracing::info!("no mapping needed or none found: no Stash file has a single same-named, same-sized file in Plex under another folder");
    }
    let setting = rules.iter().take(3).map(|r| format!("{} => {}", r.stash, r.plex)).collect::<Vec<_>>().join("; ");
    Ok(json!({"suggestions": rules.iter().take(10).collect::<Vec<_>>(), "stash_files": files, "pathMappings": setting}))
}

/// How scene `id` is matched: files, mapped paths, candidates, decision.
pub async fn explain(ctx: &Context, id: &str) -> Result<Value, Error> {
    let scene = ctx
        .stash
        .find_scene(id)
        .await?
        .ok_or_else(|| Error::new(ErrorClass::BadData, format!("scene {id} does not exist in Stash")))?;
    let pipeline = ctx.pipeline()?;
    let recorded = ctx.store()?.rating_keys(id)?;
    let (decision, trace) = pipeline.explain(&scene, &recorded).await?;
    tracing::info!("scene {id}: {}", scene.title.as_deref().unwrap_or("(no title)"));
    for line in &trace {
        tracing::info!("{line}");
    }
    let mut notes = crate::pipeline::desired::Report::default();
    crate::pipeline::desired::desired(&scene, &ctx.settings, &mut notes);
    for n in notes.dropped.iter().chain(&notes.changed) {
        tracing::info!("sanitizer: {n}");
    }
    Ok(
        json!({"scene": id, "files": scene.files.iter().map(|f| &f.path).collect::<Vec<_>>(), "trace": trace, "decision": decision, "sanitizer": notes}),
    )
}

/// Explains up to ten scenes that wait as not in Plex or ambiguous.
async fn explain_failing(ctx: &Context) -> Result<Value, Error> {
    let rows = ctx.store()?.rows("pending", 500)?;
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

/// Delivers in the foreground (when no other worker holds the queue).
pub(crate) async fn process_queue(
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
    let queue = ctx.checked_store()?;
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
    Ok(json!({"stats": stats, "seconds": started.elapsed().as_secs_f64(), "queue": queue.stats()?}))
}

/// Queue counts, failures by class, dead letters, and setting warnings.
pub(crate) fn status(ctx: &Context) -> Result<Value, Error> {
    let queue: Store = ctx.store()?;
    let stats = queue.stats()?;
    let dead = queue.rows("dead", 50)?;
    let waiting: Vec<_> =
        queue.rows("pending", 200)?.into_iter().filter(|r| r.error_class.is_some()).take(50).collect();
    let worker_running = worker::is_running(&ctx.data_dir);
    let recovered = queue.recovered()?;
    if let Some(r) = &recovered {
        tracing::warn!("{}", recovered_text(r));
    }
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
        "queue_recovered": recovered,
    }))
}

/// What a person reads about a damaged queue file PlexSync replaced.
pub(crate) fn recovered_text(r: &crate::store::Recovered) -> String {
    let at = chrono::DateTime::from_timestamp_millis(r.at).map(|t| t.to_rfc3339()).unwrap_or_default();
    format!(
        "the queue file was damaged ({}); at {at} it was moved to {} and a fresh queue started, with a reconcile so no edit is lost",
        r.error,
        r.moved_to.display()
    )
}

/// Checks everything a delivery needs, naming what to fix.
pub(crate) async fn health(ctx: &Context) -> Result<Value, Error> {
    let mut problems: Vec<String> = ctx.warnings.clone();
    if let Some(p) = ctx.settings.delivery_problem() {
        problems.push(p);
    }
    let mut report = json!({"stash": "ok", "plexsync": crate::BUILD});
    tracing::info!("health: PlexSync {}", crate::BUILD);
    if let Some(r) = ctx.store()?.recovered()? {
        tracing::warn!("health: {}", recovered_text(&r));
        report["queue_recovered"] = json!(r);
    }
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
