//! The emulators' own tests over real HTTP, built as one test binary:
//! the Plex emulator's API and faults, the Stash emulator's GraphQL, and
//! Stash's real schema as the contract.

mod plex_faults;
mod plex_http;
mod stash_http;
mod stash_schema;
