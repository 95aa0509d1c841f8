//! Certificate generation with rcgen: a cluster CA and node certificates signed by it.
//! Used by `make certs`, `quic_dist:gen_certs/2` and the tests; nothing here is committed.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::error::TransportError;

/// A certificate and its private key, both PEM-encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from an hour ago (clock skew between nodes) for `days` days.
    pub fn days_from_now(days: u32) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

fn apply_validity(params: &mut CertificateParams, v: Validity) {
    params.not_before = OffsetDateTime::from(v.not_before);
    params.not_after = OffsetDateTime::from(v.not_after);
}

/// Creates a self-signed cluster CA.
pub fn generate_ca(common_name: &str, validity: Validity) -> Result<PemPair, TransportError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "quic_dist");
    params.distinguished_name = dn;
    // One level of intermediate CAs allowed below the root (see generate_intermediate).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    apply_validity(&mut params, validity);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Creates an intermediate CA signed by `ca` (which may sign node certificates, not other CAs).
/// Nodes then present the chain: their certificate followed by the intermediate's.
pub fn generate_intermediate(
    ca: &PemPair,
    common_name: &str,
    validity: Validity,
) -> Result<PemPair, TransportError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "quic_dist");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    apply_validity(&mut params, validity);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Creates a node certificate signed by `ca`, usable as both TLS server and client.
///
/// `names` become subject alternative names: strings that parse as IP addresses become IP SANs,
/// the others DNS SANs. Distribution verifies the host part of node names against them.
pub fn generate_node(
    ca: &PemPair,
    common_name: &str,
    names: &[String],
    validity: Validity,
) -> Result<PemPair, TransportError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "quic_dist");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    apply_validity(&mut params, validity);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsMaterial;

    #[test]
    fn generated_node_certificate_loads_as_tls_material() {
        let ca = generate_ca("test ca", Validity::days_from_now(1)).unwrap();
        let node = generate_node(
            &ca,
            "a@127.0.0.1",
            &["127.0.0.1".into(), "localhost".into()],
            Validity::days_from_now(1),
        )
        .unwrap();
        let m = TlsMaterial::from_pem(
            node.cert_pem.as_bytes(),
            node.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .unwrap();
        assert_eq!(m.chain.len(), 1);
        assert_eq!(m.roots.len(), 1);
    }

    #[test]
    fn missing_certificate_is_a_clear_error() {
        let err = TlsMaterial::from_pem(b"", b"", b"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no certificate found"), "{err}");
    }
}
