//! Reconcile: compares what Stash wants in Plex with what Plex shows, for
//! every scene, and queues each one that differs or is missing. It is the
//! net under everything else: a Plex restored from backup, an edit made in
//! Plex, a hook that never fired.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use std::collections::HashMap;

use crate::clients::plex::PlexItem;
use crate::clients::stash::Scene;
use crate::config::Settings;
use crate::error::Error;
use crate::ids::SceneId;
use crate::pipeline::sync::Pipeline;
use crate::store::{Reason, Store, SyncRecord};

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
/// delivery rewrites every field. A page of scenes costs Stash one request
/// and Plex a read per hundred of its items (`GET /library/metadata/k1,k2,…`).
pub(crate) async fn reconcile(
    pipeline: &Pipeline,
    queue: &Store,
    since: Option<DateTime<Utc>>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    if pipeline.settings.mode == crate::config::Mode::Refresh {
        return Ok(json!({"message": "reconcile compares pushed values; refresh mode pushes none"}));
    }
    let stash = pipeline.stash.clone();
    let (mut checked, mut differ, mut missing) = (0usize, 0usize, 0usize);
    let mut page = 1;
    let mut batch = stash.scenes_page(page, RECONCILE_PAGE, since).await?;
    loop {
        let got = batch.scenes.len();
        checked += got;
        let total = batch.count;
        let waiting: Vec<Scene> = batch
            .scenes
            .into_iter()
            .filter(|scene| {
                since.is_none_or(|t| crate::clients::stash::updated_after(&scene.updated_at, t))
                    && crate::pipeline::library::gate(scene, &pipeline.settings).is_none()
            })
            .collect();
        // The next page is read while this one is compared with Plex.
        let more = got > 0 && checked < total;
        let next = async {
            match more {
                true => Some(stash.scenes_page(page + 1, RECONCILE_PAGE, since).await),
                false => None,
            }
        };
        let (verdicts, next) = tokio::join!(compare_page(pipeline, queue, waiting), next);
        for (id, verdict) in verdicts? {
            let Some(id) = SceneId::parse(&id) else { continue };
            match verdict {
                Verdict::Same => {}
                Verdict::Differs => {
                    differ += 1;
                    queue.reset_hashes(id.as_str())?;
                    queue.enqueue(&id, Reason::Reconcile)?;
                }
                Verdict::Missing => {
                    missing += 1;
                    queue.enqueue(&id, Reason::Reconcile)?;
                }
            }
        }
        progress(checked, total);
        let Some(next) = next else { break };
        batch = next?;
        page += 1;
    }
    tracing::info!("reconcile: {checked} scenes checked, {differ} differ in Plex, {missing} not found in Plex; queued");
    Ok(json!({"checked": checked, "differ": differ, "missing": missing, "queued": differ + missing}))
}

/// The verdict on each of a page's scenes: their items found in the index,
/// then read from Plex together.
async fn compare_page(pipeline: &Pipeline, queue: &Store, scenes: Vec<Scene>) -> Result<Vec<(String, Verdict)>, Error> {
    let mut found = Vec::with_capacity(scenes.len());
    for scene in scenes {
        let ours = queue.records(&scene.id)?;
        let recorded: Vec<String> = ours.iter().map(|r| r.rating_key.clone()).collect();
        let keys: Vec<String> =
            pipeline.find(&scene, &recorded).await?.items().into_iter().map(|i| i.rating_key).collect();
        found.push((scene, ours, keys));
    }
    let keys: Vec<String> = found.iter().flat_map(|(_, _, keys)| keys.iter().cloned()).collect();
    let items: HashMap<String, PlexItem> = match &pipeline.plex {
        Some(plex) if !keys.is_empty() => {
            plex.items(&keys).await?.into_iter().map(|item| (item.rating_key.clone(), item)).collect()
        }
        // No item found (`find` refuses to run without Plex).
        _ => HashMap::new(),
    };
    Ok(found
        .into_iter()
        .map(|(scene, ours, keys)| {
            let verdict = compare(&pipeline.settings, &scene, &ours, &keys, &items);
            (scene.id, verdict)
        })
        .collect())
}

/// Compares the scene's items (`keys`, read into `items`) with what Stash wants.
fn compare(
    settings: &Settings,
    scene: &Scene,
    ours: &[SyncRecord],
    keys: &[String],
    items: &HashMap<String, PlexItem>,
) -> Verdict {
    if keys.is_empty() {
        return Verdict::Missing;
    }
    let wanted = crate::pipeline::desired::desired(scene, settings, &mut Default::default());
    for rk in keys {
        let Some(item) = items.get(rk) else { return Verdict::Missing };
        // Reconcile writes again only what PlexSync owns: with
        // preservePlexEdits, a person's locked edit is not a difference.
        let wrote = |d: &crate::pipeline::desired::Desired| {
            ours.iter().any(|r| &r.rating_key == rk && r.field_hashes.contains_key(d.field.name()))
        };
        let previous = ours.iter().find(|r| &r.rating_key == rk).map(|r| r.field_hashes.clone()).unwrap_or_default();
        let managed = crate::pipeline::sync::managed_collections(scene, settings, &previous);
        if wanted.iter().any(|d| {
            !crate::pipeline::sync::unshown(&previous, d.field)
                && crate::pipeline::desired::differs(d, item, &managed)
                && (!settings.preserve_plex_edits || !crate::pipeline::desired::person_edited(d, item, wrote(d)))
        }) {
            return Verdict::Differs;
        }
    }
    Verdict::Same
}
