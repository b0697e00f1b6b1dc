//! The delivery pipeline. [`capture`] and hooks fill the queue; the
//! [`worker`] claims rows and runs [`sync`] for each (fetch → the old
//! plugin's Stash-side behaviours in [`legacy`] → [`matching`] →
//! [`sanitize`] and [`desired`] → diff → write → record), with [`retry`]
//! deciding when a failure is tried again, the [`breaker`] holding the
//! queue while Plex is down and [`concurrency`] setting how many
//! deliveries run at once. [`related`] turns a changed performer, studio
//! or tag into its scenes; [`reconcile`] compares everything with Plex.

pub(crate) mod breaker;
pub(crate) mod capture;
pub(crate) mod concurrency;
pub(crate) mod desired;
pub(crate) mod legacy;
pub(crate) mod library;
pub mod matching;
pub(crate) mod picture;
pub(crate) mod reconcile;
pub(crate) mod related;
pub(crate) mod requests;
pub(crate) mod retry;
pub mod reverse;
pub mod sanitize;
pub mod sync;
pub mod worker;
