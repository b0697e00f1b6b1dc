//! PlexSync: keeps a Plex Media Server's metadata in step with Stash.
//!
//! Faces (see `main.rs`): the Stash plugin ([`plugin`]), the worker
//! ([`worker`]), the CLI ([`tasks`]) and the demo. The delivery pipeline is
//! [`sync`]: fetch from Stash ([`stash`]), match ([`matching`]), clean
//! ([`sanitize`]), map ([`desired`]), diff and write to Plex ([`plex`]),
//! record in the queue database ([`queue`]).

pub mod app;
pub mod capture;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod desired;
pub mod error;
pub mod http;
pub mod legacy;
pub mod logging;
pub mod matching;
pub mod plex;
pub mod plugin;
pub mod protocol;
pub mod queue;
pub mod retry;
pub mod sanitize;
pub mod secret;
pub mod stash;
pub mod sync;
pub mod tasks;
pub mod worker;

/// `0.1.0 (x86_64-unknown-linux-musl, abc1234567)`: the version, the
/// target the binary was built for and the commit it was built from.
pub const BUILD: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILT_FOR_TARGET"), ", ", env!("BUILT_FROM_COMMIT"), ")");
