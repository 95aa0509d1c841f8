//! What the examples share: a node identity for loopback runs.

use quic_dist_transport::certs::{generate_node, PemPair, Validity};
use quic_dist_transport::TlsMaterial;

/// A certificate for `127.0.0.1` and `localhost`, signed by `ca`, with its key and `ca` as the
/// trust anchor.
pub fn loopback_tls(ca: &PemPair) -> TlsMaterial {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let node = generate_node(ca, "node@localhost", &names, Validity::days_from_now(1))
        .expect("node certificate");
    TlsMaterial::from_pem(
        node.cert_pem.as_bytes(),
        node.key_pem.as_bytes(),
        ca.cert_pem.as_bytes(),
    )
    .expect("tls material")
}
