//! `plexsync demo`: the bundled emulators, a sample library, a real sync
//! through a simulated Plex outage, and what happened.

/// A line for the person watching; a closed stdout (`plexsync demo | head`)
/// loses it instead of ending the demo, as `println!` would.
macro_rules! say {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($line)*);
    }};
}

use std::time::{Duration, Instant};

use emulators::{Library, PlexEmulator, PlexState, StashAuth, StashEmulator, StashState};
use serde_json::json;

use crate::clients::stash::StashCredentials;
use crate::config::PLUGIN_ID;
use crate::faces::context::{Context, Sources};
use crate::pipeline::worker::{self, WorkerOptions};
use crate::secret::Secret;
use crate::store::Reason;

pub async fn run(scenes: usize, seed: u64, outage: Duration) -> anyhow::Result<()> {
    let lib = Library::sample(scenes, seed);
    let api_key = "demo-api-key";
    let stash = StashEmulator::start(StashState::from_library(&lib), StashAuth::login(Some(api_key))).await?;
    let plex = PlexEmulator::start(PlexState::from_library(&lib), "demo-plex-token").await?;
    stash.set_plugin_settings(
        PLUGIN_ID,
        json!({
            "plexUrl": plex.url().as_str(),
            "plexToken": "demo-plex-token",
            "pathMappings": format!("{} => {}", lib.stash_prefix, lib.plex_prefix),
            "skipUnorganized": false,
            "taglineSource": "code",
        }),
    );
    say!("Stash emulator: {} with {} scenes", stash.url(), lib.scenes.len());
    say!("Plex emulator:  {} with {} items", plex.url(), plex.with_state(|s| s.items.len()));

    let data_dir = std::env::temp_dir().join(format!("plexsync-demo-{}", std::process::id()));
    let creds = StashCredentials { api_key: Some(Secret::new(api_key)), session_cookie: None };
    let ctx = Context::new(&stash.url(), creds, data_dir.clone(), &Sources::default()).await?;
    let queue = ctx.store()?;
    let ids = ctx.stash.scene_ids(None, |_, _| {}).await?;
    queue.enqueue_many(&ids, Reason::Manual)?;
    say!("queued {} scenes; Plex is down for the first {:.1?} (a simulated restart)", ids.len(), outage);

    let started = Instant::now();
    plex.down_for(outage);
    plex.settled().await;
    let mut pipeline = ctx.pipeline()?;
    // Ride out the outage, then stop once only not-yet-scanned scenes wait.
    let options = WorkerOptions { max_wait: Duration::from_secs(5), ..WorkerOptions::default() };
    let mut last_shown = 0;
    worker::run(&mut pipeline, &queue, &options, |done, total| {
        if done * 10 / total.max(1) != last_shown * 10 / total.max(1) {
            say!("  {done}/{total} delivered after {:.1?}", started.elapsed());
        }
        last_shown = done;
    })
    .await?;
    let elapsed = started.elapsed();

    let stats = &pipeline.stats();
    let waiting = queue.stats()?;
    let matching_titles = lib
        .scenes
        .iter()
        .filter(|s| {
            s.files
                .first()
                .and_then(|f| plex.item_by_file(&f.plex_path))
                .is_some_and(|i| i.field("title") == Some(s.title.as_str()))
        })
        .count();
    say!();
    say!("summary after {elapsed:.1?}:");
    say!("  scenes synced:          {}", stats.synced);
    say!("  already up to date:     {}", stats.unchanged);
    say!("  fields written:         {}", stats.fields_written);
    say!("  Plex write requests:    {}", stats.plex_writes);
    say!("  tries failed (outage, not in Plex): {}", stats.failed);
    say!("  still waiting:          {} (not in Plex yet: retried until Plex scans them)", waiting.pending);
    say!("  Plex titles equal to Stash: {matching_titles} of {}", lib.scenes.len());
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
