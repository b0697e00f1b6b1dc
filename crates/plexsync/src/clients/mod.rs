//! The two HTTP clients ([`stash`], [`plex`]) and their shared transport
//! ([`http`]: timeouts, TLS, the round-trip meter the limiter reads).

pub mod http;
pub mod plex;
pub mod stash;
