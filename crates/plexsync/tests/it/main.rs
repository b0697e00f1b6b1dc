//! PlexSync's integration tests, one module per subject, built as one
//! test binary (one link instead of one per file). Each talks to the
//! emulators over real HTTP, starts the plugin from its manifest and uses a
//! real SQLite queue; `common` is the test bed they share.

mod agent;
mod browser;
mod chaos;
mod cli;
mod common;
mod daemon;
mod layers;
mod matching;
mod package;
mod pipeline;
mod properties;
mod provider;
mod related;
mod reliability;
mod resources;
mod scenarios;
mod security;
mod stash_fidelity;
mod tls;
mod untidy_plex;
mod web_security;
