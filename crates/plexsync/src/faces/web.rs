//! What every HTTP answer of the daemon keeps, the provider's included:
//! only names the daemon is reached by (a web page that rebinds its own
//! name to 127.0.0.1 is refused before any handler runs), a same-origin
//! check against those names, never against the request's own `Host`, and
//! headers that keep a browser from framing, sniffing or leaking a URL.
//!
//! An IP address cannot be rebound, so any address is accepted; a name
//! must be `localhost` or one of `daemonHosts` (a reverse proxy's name, a
//! LAN name).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use url::{Host, Url};

/// The largest request body any route reads (the page's forms and Plex's
/// match calls are a few hundred bytes).
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// What the page loads: its own inline style, nothing else; it may post
/// forms to itself and may not be framed.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The names and port the daemon is reached by.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    /// `daemonHosts`, lower case.
    extra: Vec<String>,
    /// The port it listens on.
    port: u16,
}

impl Names {
    pub(crate) fn new(extra: &[String], port: u16) -> Self {
        Self { extra: extra.iter().map(|n| name(n.trim())).collect(), port }
    }

    /// Whether `domain` is one of `daemonHosts`.
    fn listed(&self, domain: &str) -> bool {
        self.extra.contains(&name(domain))
    }

    /// Whether `host` (a `Host` header or an origin's host, with or without
    /// a port) is a name the daemon is reached by; with the port it gave,
    /// if any.
    fn admits(&self, host: &Host<&str>) -> bool {
        match host {
            Host::Ipv4(_) | Host::Ipv6(_) => true,
            Host::Domain(d) => name(d) == "localhost" || self.listed(d),
        }
    }

    /// Whether a `Host` header names this daemon.
    pub(crate) fn admits_host(&self, value: &str) -> bool {
        let Ok(url) = Url::parse(&format!("http://{value}/")) else { return false };
        // `http://a@b/` or a path in the header would reshape the URL.
        if !url.username().is_empty() || url.path() != "/" || value.contains(['/', '@', '?', '#', '\\']) {
            return false;
        }
        url.host().is_some_and(|h| self.admits(&h))
    }

    /// Whether an `Origin` is this daemon's: an admitted name, on the
    /// daemon's own port unless a `daemonHosts` name (a proxy's port is
    /// its own).
    pub(crate) fn admits_origin(&self, origin: &str) -> bool {
        let Ok(url) = Url::parse(origin) else { return false };
        let Some(host) = url.host() else { return false };
        let proxied = matches!(host, Host::Domain(d) if self.listed(d));
        self.admits(&host) && (proxied || url.port_or_known_default() == Some(self.port))
    }
}

/// A DNS name as compared: lower case, without the root's final dot.
fn name(domain: &str) -> String {
    domain.trim_end_matches('.').to_lowercase()
}

/// A browser's own request, judged by the headers it adds: another
/// site's (`Sec-Fetch-Site`) or another origin's is refused; a client that
/// sends neither (curl, a script) is judged by the form key alone.
pub(crate) fn same_origin(names: &Names, headers: &HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none") {
        return false;
    }
    get("origin").is_none_or(|origin| names.admits_origin(origin))
}

/// Refuses a request whose `Host` is not the daemon's (421, with the
/// setting that fixes it), then adds the security headers to the answer.
pub(crate) async fn guard(State(names): State<Arc<Names>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut response = if !names.admits_host(host) {
        refused_name(host)
    } else if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        // Refused from the length alone: nothing that large is read.
        (StatusCode::PAYLOAD_TOO_LARGE, format!("request bodies are limited to {BODY_LIMIT} bytes\n")).into_response()
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CSP),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// 421 for a `Host` the daemon is not reached by, with the fix.
fn refused_name(host: &str) -> Response {
    let shown: String = host.chars().filter(|c| c.is_ascii_graphic()).take(100).collect();
    let body = format!(
        "PlexSync's daemon does not answer to the name {shown:?}: it answers to IP addresses, localhost \
         and the names in daemonHosts. Reached through a reverse proxy or a LAN name, add that name to \
         daemonHosts.\n"
    );
    (StatusCode::MISDIRECTED_REQUEST, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_addresses_and_origins() {
        let n = Names::new(&["PlexSync.LAN".into()], 9977);
        for ok in
            ["127.0.0.1:9977", "localhost:9977", "[::1]:9977", "192.168.1.5:9977", "plexsync.lan", "plexsync.lan.:80"]
        {
            assert!(n.admits_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:9977",
            "",
            "localhost.evil.example",
            "a@127.0.0.1",
            "127.0.0.1/x",
            "evil.example\\@127.0.0.1",
        ] {
            assert!(!n.admits_host(bad), "{bad}");
        }
        assert!(n.admits_origin("http://127.0.0.1:9977"));
        assert!(n.admits_origin("http://localhost:9977"));
        assert!(n.admits_origin("https://plexsync.lan"), "a proxy's name, on the proxy's port");
        assert!(!n.admits_origin("http://127.0.0.1:8080"), "another service on this machine");
        assert!(!n.admits_origin("http://evil.example:9977"), "a rebound name");
        assert!(!n.admits_origin("null"));
    }
}
