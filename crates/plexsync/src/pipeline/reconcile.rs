//! Reconcile: compares what Stash wants in Plex with what Plex shows, for
//! every scene, and queues each one that differs or is missing. It is the
//! net under everything else: a Plex restored from backup, an edit made in
//! Plex, a hook that never fired.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::error::Error;
use crate::pipeline::sync::Pipeline;
use crate::store::{Reason, Store};

/// Scenes per Stash page in reconcile: Stash pages by offset, so every
/// page costs a walk to its start; few large pages keep a 100 000-scene
/// library linear enough.
const RECONCILE_PAGE: usize = 500;

/// Compares Stash's desired state with Plex's current values for every
/// scene (changed after `since`, when given) and queues each scene whose
/// Plex item differs or is missing; its stored hashes are reset so the
/// delivery rewrites every field.
pub(crate) async fn reconcile(
    pipeline: &Pipeline,
    queue: &Store,
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
            if since.is_some_and(|t| !crate::clients::stash::updated_after(&scene.updated_at, t)) {
                continue;
            }
            if settings.skip_unorganized && !scene.organized {
                continue;
            }
            let recorded = queue.rating_keys(&scene.id)?;
            let items = pipeline.find(&scene, &recorded).await?.items();
            if items.is_empty() {
                missing += 1;
                queue.enqueue(&scene.id, Reason::Reconcile)?;
                continue;
            }
            let wanted = crate::pipeline::desired::desired(&scene, &settings, &mut Default::default());
            let preserve = settings.preserve_plex_edits;
            let ours = queue.records(&scene.id)?;
            for (rk, _) in items {
                let Some(item) = pipeline.plex.as_ref().expect("find needs Plex").item(&rk).await? else {
                    missing += 1;
                    queue.enqueue(&scene.id, Reason::Reconcile)?;
                    break;
                };
                // Reconcile writes again only what PlexSync owns: with
                // preservePlexEdits, a person's locked edit is not a difference.
                let wrote = |d: &crate::pipeline::desired::Desired| {
                    ours.iter().any(|r| r.rating_key == rk && r.field_hashes.contains_key(d.field.name()))
                };
                if wanted.iter().any(|d| {
                    crate::pipeline::desired::differs(d, &item)
                        && (!preserve || !crate::pipeline::desired::person_edited(d, &item, wrote(d)))
                }) {
                    differ += 1;
                    queue.reset_hashes(&scene.id)?;
                    queue.enqueue(&scene.id, Reason::Reconcile)?;
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
