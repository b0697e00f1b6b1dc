//! Long operations handed to the worker. A plugin task must return at
//! once (Stash runs one task at a time and shows it as running), so "sync
//! all", "reconcile" and a changed performer, studio or tag are written to
//! the store as a request, and the worker runs them between deliveries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::pipeline::sync::Pipeline;
use crate::store::Store;

/// A long operation a plugin task hands to the worker, so the task returns
/// at once (Stash runs one job at a time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Work {
    /// Queue every scene (changed after `since`).
    Sync { since: Option<DateTime<Utc>> },
    /// Compare scenes (changed after `since`) with Plex, queue what differs.
    Reconcile { since: Option<DateTime<Utc>> },
    /// A performer, studio or tag changed: queue every scene that shows it.
    Related(crate::clients::stash::Related),
}

impl Work {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Sync { since: None } => "Sync all scenes".into(),
            Self::Sync { since: Some(_) } => "Sync recent scenes".into(),
            Self::Reconcile { since: None } => "Reconcile all".into(),
            Self::Reconcile { since: Some(_) } => "Reconcile recent".into(),
            Self::Related(r) => format!("scenes showing {} {}", r.kind.name(), r.id),
        }
    }
}

/// Hands `work` to the worker of this queue.
pub(crate) fn request(queue: &Store, work: &Work) -> Result<(), Error> {
    queue.push_work(&serde_json::to_string(work).expect("work serializes"))
}

/// Runs the requests plugin tasks left, oldest first.
pub(crate) async fn run(pipeline: &Pipeline, queue: &Store) -> Result<(), Error> {
    for raw in queue.take_work()? {
        let Ok(work) = serde_json::from_str::<Work>(&raw) else {
            tracing::warn!("ignoring an unreadable request: {raw}");
            continue;
        };
        tracing::info!("{}: started", work.describe());
        let mut shown = 0;
        let mut progress = |done: usize, total: usize| {
            if done == total || done >= shown + 1000 {
                shown = done;
                tracing::info!("{}: {done}/{total}", work.describe());
            }
        };
        let result = match &work {
            Work::Sync { since } => {
                crate::pipeline::related::enqueue_ids(&pipeline.stash, queue, *since, &mut progress).await
            }
            Work::Reconcile { since } => {
                crate::pipeline::reconcile::reconcile(pipeline, queue, *since, &mut progress).await
            }
            Work::Related(object) => crate::pipeline::related::enqueue_showing(&pipeline.stash, queue, object)
                .await
                .map(|n| serde_json::json!({"queued": n})),
        };
        match result {
            Ok(summary) => tracing::info!("{}: done: {summary}", work.describe()),
            Err(e) => {
                tracing::error!("{}: {e}; asked again", work.describe());
                request(queue, &work)?;
                return Err(e);
            }
        }
    }
    Ok(())
}
