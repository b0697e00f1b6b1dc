//! TLS to Plex: verified by default, a CA file makes a self-signed server
//! trusted, the insecure switch works and is warned about.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::Bed;
use emulators::plugin::LogLevel;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A private CA (PEM) and a TLS front for `target` with a certificate for
/// `localhost` signed by it.
async fn tls_front(target: SocketAddr) -> (String, SocketAddr) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let Ok(mut upstream) = TcpStream::connect(target).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (ca_cert.pem(), addr)
}

#[tokio::test]
async fn tls_is_verified_by_default_and_trusts_a_ca_file_or_the_insecure_switch() {
    let bed = Bed::new(10, json!({})).await;
    let (ca_pem, front) = tls_front(bed.plex.addr()).await;
    let https = format!("https://localhost:{}", front.port());

    bed.configure(json!({"plexUrl": https}));
    let refused = bed.task("health_check").await;
    assert!(refused.failed());
    let error = refused.error.unwrap();
    assert!(error.contains("TLS certificate was not accepted") && error.contains("plexCaFile"), "{error}");

    let ca_file = bed.dir.path().join("plex-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    bed.configure(json!({"plexUrl": https, "plexCaFile": ca_file}));
    let trusted = bed.task("health_check").await;
    assert!(!trusted.failed(), "{trusted:?}");
    assert_eq!(trusted.output.unwrap()["libraries"], json!(["Movies"]));

    bed.configure(json!({"plexUrl": https, "plexInsecure": true}));
    let insecure = bed.task("health_check").await;
    assert!(!insecure.failed(), "{insecure:?}");
    assert!(insecure.messages_at(LogLevel::Warning).iter().any(|m| m.contains("plexInsecure is on")), "{insecure:?}");

    // A sync goes through the verified connection too.
    bed.configure(json!({"plexUrl": https, "plexCaFile": bed.dir.path().join("plex-ca.pem")}));
    let id = bed.scenes_in_plex()[0];
    bed.stash.update_scene(id, |s| s.title = Some("Over TLS".into()));
    assert!(!bed.update_hook(id).await.failed());
    bed.settle().await;
    assert_eq!(bed.item_of(id).field("title"), Some("Over TLS"));
}
