//! Reconcile: compares what Stash wants in Plex with what Plex shows, for
//! every scene, and queues each one that differs or is missing. It is the
//! net under everything else: a Plex restored from backup, an edit made in
//! Plex, a hook that never fired.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::clients::stash::Scene;
use crate::error::Error;
use crate::pipeline::concurrency::Limiter;
use crate::pipeline::sync::Pipeline;
use crate::store::{Reason, Store};

/// Scenes per Stash page in reconcile: Stash pages by offset, so every
/// page costs a walk to its start; few large pages keep a 100 000-scene
/// library linear enough.
const RECONCILE_PAGE: usize = 500;

/// What reconcile found for one scene.
enum Verdict {
    Same,
    /// Plex shows other values than Stash wants.
    Differs,
    /// No Plex item holds the scene's file.
    Missing,
}

/// Compares Stash's desired state with Plex's current values for every
/// scene (changed after `since`, when given) and queues each scene whose
/// Plex item differs or is missing; its stored hashes are reset so the
/// delivery rewrites every field. Item reads run several at once under the
/// same adaptive limit as deliveries: a slow Plex is read in parallel, an
/// overloaded one is backed off from.
pub(crate) async fn reconcile(
    pipeline: &Pipeline,
    queue: &Store,
    since: Option<DateTime<Utc>>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    if pipeline.settings.mode == crate::config::Mode::Refresh {
        return Ok(json!({"message": "reconcile compares pushed values; refresh mode pushes none"}));
    }
    let stash = pipeline.stash.clone();
    let mut limiter = Limiter::new(pipeline.settings.retry.concurrency);
    let (mut checked, mut differ, mut missing) = (0usize, 0usize, 0usize);
    for page in 1.. {
        let batch = stash.scenes_page(page, RECONCILE_PAGE, since).await?;
        let got = batch.scenes.len();
        checked += got;
        let mut waiting = batch.scenes.into_iter().filter(|scene| {
            since.is_none_or(|t| crate::clients::stash::updated_after(&scene.updated_at, t))
                && crate::pipeline::library::gate(scene, &pipeline.settings).is_none()
        });
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < limiter.limit() {
                let Some(scene) = waiting.next() else { break };
                limiter.starting(running.len());
                running.push(async move { (compare(pipeline, queue, &scene).await, scene.id) });
            }
            let Some((verdict, id)) = running.next().await else { break };
            match verdict? {
                Verdict::Same => {}
                Verdict::Differs => {
                    differ += 1;
                    queue.reset_hashes(&id)?;
                    queue.enqueue(&id, Reason::Reconcile)?;
                }
                Verdict::Missing => {
                    missing += 1;
                    queue.enqueue(&id, Reason::Reconcile)?;
                }
            }
            if let Some(plex) = &pipeline.plex {
                limiter.finished(plex.rtt());
            }
        }
        progress(checked, batch.count);
        if got == 0 || checked >= batch.count {
            break;
        }
    }
    tracing::info!(
        "reconcile: {checked} scenes checked, {differ} differ in Plex, {missing} not found in Plex; queued \
         (item reads at once: {} at the end)",
        limiter.limit()
    );
    Ok(json!({"checked": checked, "differ": differ, "missing": missing, "queued": differ + missing}))
}

/// Reads the scene's Plex items and compares them with what Stash wants.
async fn compare(pipeline: &Pipeline, queue: &Store, scene: &Scene) -> Result<Verdict, Error> {
    let settings = &pipeline.settings;
    let ours = queue.records(&scene.id)?;
    let recorded: Vec<String> = ours.iter().map(|r| r.rating_key.clone()).collect();
    let items = pipeline.find(scene, &recorded).await?.items();
    if items.is_empty() {
        return Ok(Verdict::Missing);
    }
    let wanted = crate::pipeline::desired::desired(scene, settings, &mut Default::default());
    for (rk, _) in items {
        let Some(item) = pipeline.plex.as_ref().expect("find needs Plex").item(&rk).await? else {
            return Ok(Verdict::Missing);
        };
        // Reconcile writes again only what PlexSync owns: with
        // preservePlexEdits, a person's locked edit is not a difference.
        let wrote = |d: &crate::pipeline::desired::Desired| {
            ours.iter().any(|r| r.rating_key == rk && r.field_hashes.contains_key(d.field.name()))
        };
        let previous = ours.iter().find(|r| r.rating_key == rk).map(|r| r.field_hashes.clone()).unwrap_or_default();
        let managed = crate::pipeline::sync::managed_collections(scene, settings, &previous);
        if wanted.iter().any(|d| {
            !crate::pipeline::sync::unshown(&previous, d.field)
                && crate::pipeline::desired::differs(d, &item, &managed)
                && (!settings.preserve_plex_edits || !crate::pipeline::desired::person_edited(d, &item, wrote(d)))
        }) {
            return Ok(Verdict::Differs);
        }
    }
    Ok(Verdict::Same)
}
