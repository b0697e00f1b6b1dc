//! The HTTP client both server clients share: timeouts, keep-alive, TLS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::HttpOptions;
use crate::error::{Error, ErrorClass};

const LOCALHOST: [std::net::SocketAddr; 2] = [
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
    std::net::SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 0),
];

/// Builds a client for `options`; TLS is verified (rustls, Mozilla roots)
/// unless `insecure` is set.
pub(crate) fn client(options: &HttpOptions) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .user_agent(concat!("PlexSync/", env!("CARGO_PKG_VERSION")))
        // RFC 6761: `localhost` is loopback, without asking a resolver
        // (a static binary in a bare container may have no /etc/hosts).
        .resolve_to_addrs("localhost", &LOCALHOST);
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| Error::new(ErrorClass::Config, format!("cannot read CA file {}: {e}", path.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Error::new(ErrorClass::Config, format!("CA file {} is not a PEM certificate: {e}", path.display()))
        })?;
        builder = builder.add_root_certificate(cert);
    }
    if options.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| Error::new(ErrorClass::Config, format!("cannot build HTTP client: {e}")))
}

/// Plex's answer times, summed by the client as requests finish and taken
/// by the limiter once per round.
#[derive(Debug, Default)]
pub(crate) struct RttMeter {
    micros: AtomicU64,
    count: AtomicU64,
}

impl RttMeter {
    pub(crate) fn record(&self, rtt: Duration) {
        self.micros.fetch_add(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Mean since the last take, and resets; `None` when nothing was asked.
    pub(crate) fn take(&self) -> Option<Duration> {
        let count = self.count.swap(0, Ordering::Relaxed);
        let micros = self.micros.swap(0, Ordering::Relaxed);
        (count > 0).then(|| Duration::from_micros(micros / count))
    }
}
