//! From what changed to the scenes to queue: every scene (of a period),
//! or every scene that shows a performer, studio or tag that changed.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::clients::stash::{Related, StashClient};
use crate::error::Error;
use crate::store::{Reason, Store};

/// Queues every scene of `stash` (updated after `since`, when given).
pub(crate) async fn enqueue_ids(
    stash: &StashClient,
    queue: &Store,
    since: Option<DateTime<Utc>>,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<Value, Error> {
    let n = match since {
        // A page at a time: a whole library's ids would be tens of MB.
        None => {
            let mut n = 0;
            stash
                .each_scene_id_page(progress, |ids| {
                    n += queue.enqueue_many(&ids, Reason::Manual)?;
                    Ok(())
                })
                .await?;
            n
        }
        Some(_) => {
            let ids = stash.scene_ids(since, &mut *progress).await?;
            queue.enqueue_many(&ids, Reason::Manual)?
        }
    };
    tracing::info!("queued {n} scenes for Plex");
    Ok(json!({"queued": n}))
}

/// Queues every scene that shows `object`; scenes already waiting stay one
/// row each (the queue coalesces).
pub(crate) async fn enqueue_showing(stash: &StashClient, queue: &Store, object: &Related) -> Result<usize, Error> {
    // Stash knows who shows it now; our records know who showed it when
    // delivered (the only answer once it is deleted or merged away).
    let mut ids = stash.scenes_showing(object).await?;
    ids.extend(queue.scenes_recorded_showing(object.kind.name(), &object.id)?);
    ids.sort();
    ids.dedup();
    let n = queue.enqueue_many(&ids, Reason::Hook)?;
    tracing::info!("{} {} changed: queued {n} scenes that show it", object.kind.name(), object.id);
    Ok(n)
}
