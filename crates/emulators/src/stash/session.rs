//! Stash's session cookie (pkg/session): a signed, timestamped value that
//! carries the user and the list of plugin hooks already visited. It is
//! valid for `max_session_age` after it was issued or last refreshed, and
//! every request that presents a valid one gets a refreshed `Set-Cookie`.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// What a session cookie holds (gorilla `session.Values`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// `userID`: set by a login, or when an authenticated request fires a hook.
    pub user: Option<String>,
    /// `visitedPluginsHooks`: (plugin id, hook type), one entry per nesting level.
    pub visited: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    session: Session,
    issued: i64,
}

/// Encodes and checks cookies with a per-server secret (securecookie's job).
pub struct CookieCodec {
    secret: u64,
    pub max_age: Duration,
}

pub const COOKIE_NAME: &str = "session";

impl CookieCodec {
    pub fn new(max_age: Duration) -> Self {
        Self { secret: rand::random(), max_age }
    }

    fn sign(&self, body: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.secret, body).hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// A cookie value issued now.
    pub fn encode(&self, session: &Session) -> String {
        let signed = Signed { session: session.clone(), issued: chrono::Utc::now().timestamp() };
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&signed).expect("session serializes"));
        let sig = self.sign(&body);
        format!("{body}.{sig}")
    }

    /// The session, when the value is ours and not older than `max_age`.
    pub fn decode(&self, value: &str) -> Option<Session> {
        let (body, sig) = value.rsplit_once('.')?;
        if self.sign(body) != sig {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()?;
        let signed: Signed = serde_json::from_slice(&bytes).ok()?;
        let age = chrono::Utc::now().timestamp() - signed.issued;
        (age <= i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX)).then_some(signed.session)
    }
}

/// The `session` cookie's value in a `Cookie` header.
pub fn from_header(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_reject_tampering_and_expire() {
        let codec = CookieCodec::new(Duration::from_secs(3600));
        let s = Session { user: Some("admin".into()), visited: vec![("PlexSync".into(), "Scene.Update.Post".into())] };
        let v = codec.encode(&s);
        assert_eq!(codec.decode(&v), Some(s));
        assert_eq!(codec.decode(&v.replacen('e', "f", 1)), None);
        assert_eq!(CookieCodec::new(Duration::from_secs(3600)).decode(&v), None, "another server's secret");
        let short = CookieCodec { secret: codec.secret, max_age: Duration::ZERO };
        let old = {
            let signed = Signed { session: Session::default(), issued: chrono::Utc::now().timestamp() - 5 };
            let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&signed).unwrap());
            format!("{body}.{}", codec.sign(&body))
        };
        assert_eq!(short.decode(&old), None);
        assert!(codec.decode(&old).is_some());
    }
}
