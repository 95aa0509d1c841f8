//! Certificate generation for `quic_dist:gen_certs/2`, `make certs` and the tests, and the
//! server-name check of the node's own certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quic_dist_transport::certs::{
    generate_ca, generate_intermediate, generate_node, PemPair, Validity,
};
use quic_dist_transport::TransportError;

fn validity(not_before_unix: i64, not_after_unix: i64) -> Validity {
    let at = |s: i64| {
        if s >= 0 {
            UNIX_EPOCH + Duration::from_secs(s as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
        }
    };
    Validity {
        not_before: at(not_before_unix),
        not_after: at(not_after_unix),
    }
}

/// A generated pair as the NIFs return it: `{ok, {CertPem, KeyPem}}` or `{error, Reason}`.
fn reply(result: Result<PemPair, TransportError>) -> Result<(String, String), String> {
    result
        .map(|p| (p.cert_pem, p.key_pem))
        .map_err(|e| e.to_string())
}

fn ca_pair(cert_pem: String, key_pem: String) -> PemPair {
    PemPair { cert_pem, key_pem }
}

/// Whether the DER certificate names `host` as TLS checks a server name: what a peer that dials
/// this node checks against the host part of its node name.
#[rustler::nif]
fn cert_names_host(der: rustler::Binary, host: String) -> bool {
    quic_dist_transport::server_name::certificate_names_host(&der.as_slice().into(), &host)
}

/// Seconds since the epoch, for callers computing validity windows.
#[rustler::nif]
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `{CertPem, KeyPem}` of a new self-signed CA.
#[rustler::nif(schedule = "DirtyCpu")]
fn gen_ca(
    common_name: String,
    not_before: i64,
    not_after: i64,
) -> Result<(String, String), String> {
    reply(generate_ca(&common_name, validity(not_before, not_after)))
}

/// `{CertPem, KeyPem}` of a node certificate signed by the given CA.
#[rustler::nif(schedule = "DirtyCpu")]
fn gen_node_cert(
    ca_cert_pem: String,
    ca_key_pem: String,
    common_name: String,
    names: Vec<String>,
    not_before: i64,
    not_after: i64,
) -> Result<(String, String), String> {
    let ca = ca_pair(ca_cert_pem, ca_key_pem);
    reply(generate_node(
        &ca,
        &common_name,
        &names,
        validity(not_before, not_after),
    ))
}

/// `{CertPem, KeyPem}` of an intermediate CA signed by the given CA.
#[rustler::nif(schedule = "DirtyCpu")]
fn gen_intermediate(
    ca_cert_pem: String,
    ca_key_pem: String,
    common_name: String,
    not_before: i64,
    not_after: i64,
) -> Result<(String, String), String> {
    let ca = ca_pair(ca_cert_pem, ca_key_pem);
    reply(generate_intermediate(
        &ca,
        &common_name,
        validity(not_before, not_after),
    ))
}
