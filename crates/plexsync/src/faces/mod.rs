//! The faces: how PlexSync is started. Each one turns what started it
//! (Stash's JSON on stdin, an HTTP request, a command line) into one of the
//! [`operations`], a hook's queue row, or a run of the pipeline's worker,
//! and reports the result in its own way; none of them delivers anything
//! itself.
//!
//! - [`plugin`]: Stash runs it for hooks and tasks, speaking [`protocol`];
//!   it queues, hands long work to the worker and starts the worker.
//! - [`daemon`]: the worker for good, with HTTP health, metrics and a
//!   status page; with `provider` on it also serves [`provider`], Plex's
//!   metadata provider; `serve` holds its connections (timeouts, a cap),
//!   `web` guards every one of its answers, `page` makes its status page's
//!   HTML.
//! - [`context`]: settings, clients and the data folder of one run.
//! - `migrate`: the settings of StashPlexAgent and Stash2Plex carried over.
//! - `demo`: the bundled emulators and a sample library.

pub mod context;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub(crate) mod migrate;
pub mod operations;
pub(crate) mod page;
pub mod plugin;
pub mod protocol;
pub mod provider;
mod serve;
pub(crate) mod web;
