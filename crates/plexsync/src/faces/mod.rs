//! The faces: how PlexSync is started. Stash runs the plugin ([`plugin`],
//! speaking [`protocol`]) for hooks and tasks; the plugin starts the
//! [`worker`], which delivers the queue; the CLI (`main.rs`) and the plugin
//! share the operations in [`tasks`]; the [`daemon`] runs the worker for
//! good, with HTTP health, metrics and a status page; `plexsync demo` runs
//! `demo`.

pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod plugin;
pub mod protocol;
pub mod tasks;
pub mod worker;
