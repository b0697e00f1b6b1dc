//! PlexSync: keeps a Plex Media Server's metadata in step with Stash.
//!
//! Three groups, one folder each: the [`faces`] (plugin, worker, tasks
//! shared with the CLI in `main.rs`, demo), the delivery [`pipeline`]
//! (capture → queue → sync: fetch, match, sanitize, diff, write, record)
//! and the two [`clients`] (Stash, Plex). Settings ([`config`]), assembling
//! a run ([`app`]), errors ([`error`]) and logging stay at the root.

pub mod app;
pub mod clients;
pub mod config;
pub mod error;
pub mod faces;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod progress;

// One hop from the crate root to any module, wherever it lives.
pub use clients::{http, plex, secret, stash};
#[cfg(feature = "demo")]
pub use faces::demo;
pub use faces::{daemon, plugin, protocol, tasks, worker};
pub use pipeline::{capture, concurrency, desired, legacy, matching, queue, retry, sanitize, sync};

/// `0.1.0 (x86_64-unknown-linux-musl, abc1234567)`: the version, the
/// target the binary was built for and the commit it was built from.
pub const BUILD: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILT_FOR_TARGET"), ", ", env!("BUILT_FROM_COMMIT"), ")");
