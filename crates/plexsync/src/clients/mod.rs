//! The two HTTP clients ([`stash`], [`plex`]), their shared options
//! ([`http`]) and credentials that never format ([`secret`]).

pub mod http;
pub mod plex;
pub mod secret;
pub mod stash;
