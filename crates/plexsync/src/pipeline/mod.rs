//! The delivery pipeline: [`capture`] and hooks fill the [`queue`];
//! [`sync`] delivers one scene (fetch → the old plugin's Stash-side
//! behaviours in [`legacy`] → [`matching`] → [`sanitize`] and [`desired`]
//! → diff → write → record), with [`retry`] deciding when a failure is
//! tried again and [`concurrency`] how many deliveries run at once.

pub mod capture;
pub mod concurrency;
pub mod desired;
pub mod legacy;
pub mod matching;
pub mod queue;
pub mod retry;
pub mod sanitize;
pub mod sync;
