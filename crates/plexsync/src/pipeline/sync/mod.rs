//! Delivering one scene (fetch → the old plugin's Stash-side behaviours →
//! match → sanitize → diff → write → record), in four files: [`delivery`]
//! (the pipeline and the order of a delivery), [`locate`] (the library
//! index kept current and asked for the scene's items), [`write`] (edits
//! and records) and [`images`] (what is uploaded, and when).

mod delivery;
mod images;
mod locate;
mod write;

pub(crate) use delivery::Outcome;
pub use delivery::{BeforeRefresh, Pipeline, Stats};
pub(crate) use images::unshown;
pub(crate) use write::managed_collections;
