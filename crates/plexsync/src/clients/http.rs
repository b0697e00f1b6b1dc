//! The HTTP client both server clients share: timeouts, keep-alive, TLS.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, ErrorClass};

/// Connection options for one server.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra CA certificate (PEM) to trust, e.g. a self-signed Plex certificate.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only by explicit setting; logged at each start.
    pub insecure: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            ca_file: None,
            insecure: false,
        }
    }
}

const LOCALHOST: [std::net::SocketAddr; 2] = [
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0),
    std::net::SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 0),
];

impl HttpOptions {
    /// Builds a client; TLS is verified (rustls, Mozilla roots) unless
    /// `insecure` is set.
    pub fn client(&self) -> Result<reqwest::Client, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("PlexSync/", env!("CARGO_PKG_VERSION")))
            // RFC 6761: `localhost` is loopback, without asking a resolver
            // (a static binary in a bare container may have no /etc/hosts).
            .resolve_to_addrs("localhost", &LOCALHOST);
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| Error::new(ErrorClass::Config, format!("cannot read CA file {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::new(ErrorClass::Config, format!("CA file {} is not a PEM certificate: {e}", path.display()))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        if self.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        builder.build().map_err(|e| Error::new(ErrorClass::Config, format!("cannot build HTTP client: {e}")))
    }
}
