//! PlexSync: keeps a Plex Media Server's metadata in step with Stash.
//!
//! Four layers, each a folder or file, each using only the ones below it
//! (a test, `tests/it/layers.rs`, reads the imports and holds this):
//!
//! 1. [`faces`]: how PlexSync is started: the Stash plugin, the daemon,
//!    the operations the CLI (`main.rs`) and both share, the demo.
//! 2. [`pipeline`]: the delivery engine: capture → queue → fetch → match →
//!    sanitize → diff → write → record, and the worker that drives it.
//! 3. [`clients`] (Stash, Plex over HTTP) and the [`store`] (SQLite).
//! 4. Settings ([`config`]), [`error`]s, Stash's [`ids`], [`secret`]s, [`logging`],
//!    [`metrics`] counters, [`progress`] and `units` (integer conversions
//!    that saturate).
//!
//! The public modules are the library's API: what the binary and the
//! integration tests use. Everything else is `pub(crate)` or private.

#![deny(unreachable_pub)]

pub mod clients;
pub mod config;
pub mod error;
pub mod faces;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod secret;
pub mod store;
mod units;

/// `0.1.0 (x86_64-unknown-linux-musl, abc1234567)`: the version, the
/// target the binary was built for and the commit it was built from.
pub const BUILD: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILT_FOR_TARGET"), ", ", env!("BUILT_FROM_COMMIT"), ")");
