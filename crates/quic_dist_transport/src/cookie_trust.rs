//! Zero-configuration trust: a cluster CA derived from the distribution cookie.
//!
//! Every node that knows the cookie derives the same CA key (Ed25519, seeded by PBKDF2 over the
//! cookie) and the same CA certificate, and signs a fresh leaf certificate for its own key at
//! start. Nodes verify each other against that CA exactly as with real certificates, so a node
//! without the cookie cannot complete the QUIC handshake. The mode is as strong as the cookie:
//! whoever knows the cookie can derive the CA key, and anyone who can reach the port obtains a
//! CA-signed certificate to test cookie guesses against offline (PBKDF2 makes each guess cost
//! about 100 000 HMACs). Production clusters should use real certificates.

use std::num::NonZeroU32;
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::pbkdf2;
use rcgen::{CertificateParams, Issuer, KeyPair, SerialNumber};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::certs::{ca_params, name, node_params, Validity};
use crate::error::TransportError;
use crate::tls::TlsMaterial;

/// PBKDF2 iterations: slows down offline guessing of the cookie, costs ~30 ms at node start.
const KDF_ITERATIONS: u32 = 100_000;
/// Domain separation: changing it changes every derived CA.
const KDF_SALT: &[u8] = b"quic_dist cookie cluster ca v1";
/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Name of the derived CA, as peers see it in `quic_dist:info/1`.
pub const COOKIE_CA_NAME: &str = "quic_dist cookie-derived cluster CA";

fn derived_ca_key(cookie: &[u8]) -> Result<KeyPair, TransportError> {
    let mut seed = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(KDF_ITERATIONS).expect("non-zero"),
        KDF_SALT,
        cookie,
        &mut seed,
    );
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    let key = PrivatePkcs8KeyDer::from(der);
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &key,
        &rcgen::PKCS_ED25519,
    )?)
}

fn cookie_ca_params() -> Result<CertificateParams, TransportError> {
    let mut params = ca_params(name(COOKIE_CA_NAME, false), 0)?;
    // Fixed fields: every node derives a byte-identical CA certificate.
    params.serial_number = Some(SerialNumber::from(1u64));
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2120, 1, 1);
    Ok(params)
}

/// Validity of a cookie-mode leaf: from the Unix epoch to RFC 5280's "no well-defined
/// expiration date". Trust comes from the cookie, and TCP distribution does not depend on
/// clocks: a peer whose clock is off (no real-time clock before NTP, a VM resumed) or a node
/// that runs for years must not be refused for it.
fn cookie_leaf_validity() -> Validity {
    Validity {
        not_before: UNIX_EPOCH,
        // 9999-12-31T23:59:59Z
        not_after: UNIX_EPOCH + Duration::from_secs(253_402_300_799),
    }
}

/// TLS material for a node that trusts whoever knows `cookie`: the derived CA as the only
/// trust anchor and a new leaf certificate naming `names` (the host part of the node name and
/// its aliases), valid whatever the clocks say.
pub fn cookie_material(
    cookie: &[u8],
    common_name: &str,
    names: &[String],
) -> Result<TlsMaterial, TransportError> {
    if cookie.is_empty() {
        return Err(TransportError::TlsMaterial(
            "cookie mode needs a non-empty cookie".into(),
        ));
    }
    let ca_key = derived_ca_key(cookie)?;
    let params = cookie_ca_params()?;
    let ca_cert = params.self_signed(&ca_key)?;
    let issuer = Issuer::new(params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let leaf = node_params(name(common_name, false), names, cookie_leaf_validity())?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    Ok(TlsMaterial {
        chain: vec![leaf_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        roots: vec![CertificateDer::from(ca_cert.der().to_vec())],
        verify_peer: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_cookie_gives_the_same_ca_and_another_cookie_another() {
        let names = vec!["127.0.0.1".to_string()];
        let a = cookie_material(b"secret", "a", &names).unwrap();
        let b = cookie_material(b"secret", "b", &names).unwrap();
        let c = cookie_material(b"other", "c", &names).unwrap();
        assert_eq!(a.roots, b.roots);
        assert_ne!(a.roots, c.roots);
        assert_ne!(a.chain, b.chain, "each node has its own leaf");
    }

    /// Trust in cookie mode comes from the cookie alone, and TCP distribution does not look at
    /// clocks: a node whose clock is hours, or decades, away from its peer's (a board without a
    /// real-time clock before NTP, a VM after a pause) must still be let in.
    #[test]
    fn a_leaf_is_accepted_whatever_the_clocks_of_the_two_nodes() {
        use rustls::server::WebPkiClientVerifier;
        use rustls_pki_types::UnixTime;
        use std::time::SystemTime;

        let names = vec!["127.0.0.1".to_string()];
        let a = cookie_material(b"secret", "a", &names).unwrap();
        let b = cookie_material(b"secret", "b", &names).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(b.roots[0].clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let hour = Duration::from_secs(3600);
        let year = 365 * 24 * hour;
        for (peer_clock, at) in [
            ("2 hours behind", now - 2 * hour),
            ("a day ahead", now + 24 * hour),
            ("at 1970", Duration::from_secs(86_400)),
            ("20 years ahead", now + 20 * year),
        ] {
            let checked = verifier.verify_client_cert(
                &a.chain[0],
                &a.chain[1..],
                UnixTime::since_unix_epoch(at),
            );
            assert!(checked.is_ok(), "peer clock {peer_clock}: {checked:?}");
        }
    }

    #[test]
    fn an_empty_cookie_is_refused() {
        let err = cookie_material(b"", "a", &[]).unwrap_err();
        assert!(err.to_string().contains("non-empty cookie"));
    }
}
