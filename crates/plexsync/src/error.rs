//! Errors and their failure classes, in one place.
//!
//! Every client error is mapped here to a [`ErrorClass`]; the queue's retry
//! policy (see `retry.rs`) is keyed by class only, so a new error source
//! only needs a mapping here.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Failure classes; each has one retry policy (`pipeline/retry.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Connection refused/reset, DNS, timeout, 502/503/504, maintenance.
    PlexUnavailable,
    /// 429 with Retry-After.
    Throttled,
    /// No Plex item for the scene (yet).
    NotInPlex,
    /// Several Plex items could be the scene's: nothing is written until
    /// the library or the path mappings make it clear.
    Ambiguous,
    /// 401/403: the token or API key is wrong.
    Auth,
    /// Bad URL, unknown library, unreadable CA file, bad settings.
    Config,
    /// A value Plex refused (400) or Stash data we cannot use.
    BadData,
    /// Stash unreachable or answering GraphQL errors.
    StashUnavailable,
    /// Anything unexpected: kept, recorded, the rest continues.
    Bug,
}

impl ErrorClass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PlexUnavailable => "plex_unavailable",
            Self::Throttled => "throttled",
            Self::NotInPlex => "not_in_plex",
            Self::Ambiguous => "ambiguous",
            Self::Auth => "auth",
            Self::Config => "config",
            Self::BadData => "bad_data",
            Self::StashUnavailable => "stash_unavailable",
            Self::Bug => "bug",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::PlexUnavailable,
            Self::Throttled,
            Self::NotInPlex,
            Self::Ambiguous,
            Self::Auth,
            Self::Config,
            Self::BadData,
            Self::StashUnavailable,
            Self::Bug,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which server an HTTP error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Server {
    Plex,
    Stash,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Self::Plex => "Plex",
            Self::Stash => "Stash",
        }
    }

    fn unavailable(self) -> ErrorClass {
        match self {
            Self::Plex => ErrorClass::PlexUnavailable,
            Self::Stash => ErrorClass::StashUnavailable,
        }
    }
}

/// An error with its class. Messages never contain credentials: requests
/// carry them in headers, and URLs are stripped from transport errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    pub class: ErrorClass,
    pub message: String,
    /// From a `Retry-After` header.
    pub retry_after: Option<Duration>,
    /// The HTTP status that caused it, if one did.
    pub status: Option<u16>,
    /// What the data folder's disk or file did, when the queue database
    /// failed for a reason outside PlexSync.
    pub store_fault: Option<StoreFault>,
}

/// The queue database failing for a reason outside PlexSync: the worker
/// waits these out instead of ending, and hooks say what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFault {
    /// Another program holds a lock on the queue file.
    Locked,
    /// The data folder's disk is full (or a file-size limit was reached).
    Full,
    /// The file is not a database, or its pages are damaged.
    Corrupt,
}

impl Error {
    pub(crate) fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), retry_after: None, status: None, store_fault: None }
    }

    /// Classifies a transport error (no HTTP status was received).
    pub(crate) fn transport(server: Server, what: &str, err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "could not connect"
        } else if err.is_decode() {
            return Self::new(server.unavailable(), format!("{what}: {} sent an unreadable answer", server.name()));
        } else {
            "connection failed"
        };
        // `without_url` keeps query strings (and anything in them) out of the message.
        let err = err.without_url();
        let detail = root_cause(&err);
        if certificate_refused(&err) {
            return Self::new(
                ErrorClass::Config,
                format!(
                    "{what}: {}'s TLS certificate was not accepted ({detail}); set plexCaFile to its CA, use an http:// plexUrl, or plexInsecure (what the old plugin did)",
                    server.name()
                ),
            );
        }
        Self::new(server.unavailable(), format!("{what}: {} {kind} ({detail})", server.name()))
    }

    /// Classifies an HTTP status other than success.
    pub(crate) fn status(server: Server, what: &str, status: u16, retry_after: Option<Duration>) -> Self {
        let name = server.name();
        let (class, hint) = match status {
            403 if server == Server::Plex => (
                ErrorClass::Auth,
                "the Plex token may read this server but not change it (a shared or managed user's token); set \
                 plexToken to the server owner's token (Plex Web → an item → Get Info → View XML, while signed in \
                 as the owner)",
            ),
            401 | 403 => (
                ErrorClass::Auth,
                match server {
                    Server::Plex => "the Plex token was refused; set plexToken to a valid token",
                    Server::Stash => "Stash refused our credentials; check the API key",
                },
            ),
            // Stash's GraphQL endpoint is missing where we looked: a
            // wrong address (or a proxy's path), never a scene not in Plex.
            404 if server == Server::Stash => (
                ErrorClass::Config,
                "nothing answers there: check stashUrl, Stash's address (e.g. http://localhost:9999, with the \
                 path prefix of a reverse proxy in front of it)",
            ),
            404 => (ErrorClass::NotInPlex, "not found"),
            // A reverse proxy's limits: smaller requests get through.
            413 | 414 | 431 => (ErrorClass::BadData, "the request was too large for a proxy in front of the server"),
            429 => (ErrorClass::Throttled, "too many requests"),
            400 | 422 => (ErrorClass::BadData, "the server refused a value"),
            408 | 500 | 502 | 503 | 504 => (server.unavailable(), "server unavailable"),
            _ => (ErrorClass::Bug, "unexpected answer"),
        };
        Self {
            class,
            message: format!("{what}: {name} answered {status} ({hint})"),
            retry_after,
            status: Some(status),
            store_fault: None,
        }
    }

    /// Whether a proxy refused the request for its size (its line, body or
    /// headers): the same content in smaller requests may pass.
    pub(crate) fn too_large(&self) -> bool {
        matches!(self.status, Some(413 | 414 | 431))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The store failing is PlexSync's problem (class `bug`), unless the
/// disk or another program made it fail: then the message says what to
/// do and [`Error::store_fault`] says which.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        let (fault, hint) = match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => (
                Some(StoreFault::Locked),
                "another program holds a lock on the queue file (a backup tool, a second Stash?); PlexSync waits for it",
            ),
            Some(DiskFull) => (
                Some(StoreFault::Full),
                "the data folder's disk is full; free some space: edits made meanwhile reach Plex once there is room",
            ),
            Some(NotADatabase | DatabaseCorrupt) => (
                Some(StoreFault::Corrupt),
                "the queue file is damaged; PlexSync moves it aside and starts a fresh queue",
            ),
            _ => (None, ""),
        };
        let message = match fault {
            Some(_) => format!("queue database: {e} ({hint})"),
            None => format!("queue database: {e}"),
        };
        Error { store_fault: fault, ..Error::new(ErrorClass::Bug, message) }
    }
}

/// Whether the TLS handshake refused the server's certificate, as rustls
/// says in its own error type somewhere in the chain (words in a message
/// could come from anything, a server's answer included).
fn certificate_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let refused = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<rustls::Error>().is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            )
        })
    };
    let mut cause = Some(err);
    while let Some(e) = cause {
        if refused(e) {
            return true;
        }
        // An I/O error carries the next one as its payload (rustls's is
        // two I/O errors deep), not as its source.
        cause = match e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(payload) => Some(payload),
            None => e.source(),
        };
    }
    false
}

fn root_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The longest `Retry-After` honoured: a server (or a proxy) asking for
/// more is asked again after this, and a huge value cannot overflow the
/// due times it is added to.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` in seconds (the HTTP-date form is not used by Plex), at
/// most [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_and_at_most_an_hour() {
        let with = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(with(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(with("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn a_refused_certificate_is_found_in_the_chain_not_in_the_words() {
        use std::io::{Error as Io, ErrorKind};
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested = Io::other(Io::new(ErrorKind::InvalidData, tls));
        assert!(certificate_refused(&nested));
        let words = Io::other("the server said: bad certificate");
        assert!(!certificate_refused(&words));
    }

    #[test]
    fn statuses_map_to_classes() {
        let class = |s| Error::status(Server::Plex, "x", s, None).class;
        assert_eq!(class(401), ErrorClass::Auth);
        let shared_user = Error::status(Server::Plex, "edit item", 403, None);
        assert!(shared_user.class == ErrorClass::Auth && shared_user.message.contains("server owner's token"));
        assert!(Error::status(Server::Plex, "edit item", 414, None).too_large());
        assert_eq!(class(414), ErrorClass::BadData);
        assert_eq!(class(404), ErrorClass::NotInPlex);
        assert_eq!(class(429), ErrorClass::Throttled);
        assert_eq!(class(400), ErrorClass::BadData);
        assert_eq!(class(503), ErrorClass::PlexUnavailable);
        assert_eq!(class(418), ErrorClass::Bug);
        assert_eq!(Error::status(Server::Stash, "x", 502, None).class, ErrorClass::StashUnavailable);
        let stash_404 = Error::status(Server::Stash, "list scenes", 404, None);
        assert!(stash_404.class == ErrorClass::Config && stash_404.message.contains("stashUrl"), "{stash_404}");
        for c in ["plex_unavailable", "not_in_plex", "bug"] {
            assert_eq!(ErrorClass::parse(c).unwrap().as_str(), c);
        }
    }
}
