//! Emulated Stash and Plex Media Server for PlexSync's tests, benchmarks and
//! demo: real HTTP servers on loopback that speak the real wire formats.
//!
//! - [`plex`]: Plex's XML/JSON API, edits, scans, request log, fault injection.
//! - [`stash`]: Stash's GraphQL API, auth, images, and plugin invocation.
//! - [`fixtures`]: seeded sample libraries shared by both.
//! - [`legacy_agent`]: a Plex library as StashPlexAgent left it.
//! - [`plugin`]: running a `raw` plugin binary exactly as Stash does.
//! - [`package`]: installing a plugin from a plugin source, as Stash does.
//! - [`table`]: rows kept in the order clients page them by.

pub mod corpus;
pub mod fixtures;
pub mod legacy_agent;
pub mod package;
pub mod plex;
pub mod plugin;
pub mod stash;
pub mod table;

pub use fixtures::{Library, LibrarySpec};
pub use plex::{PlexEmulator, PlexState};
pub use stash::{StashAuth, StashEmulator, StashState};
