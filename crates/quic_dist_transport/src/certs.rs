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

/// Sets a certificate's validity window.
pub(crate) fn apply_validity(params: &mut CertificateParams, v: Validity) {
    params.not_before = OffsetDateTime::from(v.not_before);
    params.not_after = OffsetDateTime::from(v.not_after);
}

/// A distinguished name with the given common name, and `O=quic_dist` if `with_organization`.
pub(crate) fn name(common_name: &str, with_organization: bool) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if with_organization {
        dn.push(DnType::OrganizationName, "quic_dist");
    }
    dn
}

/// Parameters of a CA certificate allowing `path_len` levels of CAs below it.
pub(crate) fn ca_params(
    dn: DistinguishedName,
    path_len: u8,
) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Parameters of a node certificate naming `names`, usable as TLS server and client.
pub(crate) fn node_params(
    dn: DistinguishedName,
    names: &[String],
    validity: Validity,
) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    apply_validity(&mut params, validity);
    Ok(params)
}

/// Signs `params` for a new key with the CA in `ca`.
fn sign_with(ca: &PemPair, params: CertificateParams) -> Result<PemPair, TransportError> {
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Creates a self-signed cluster CA.
pub fn generate_ca(common_name: &str, validity: Validity) -> Result<PemPair, TransportError> {
    let key = KeyPair::generate()?;
    // One level of intermediate CAs allowed below the root (see generate_intermediate).
    let mut params = ca_params(name(common_name, true), 1)?;
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
    let mut params = ca_params(name(common_name, true), 0)?;
    apply_validity(&mut params, validity);
    sign_with(ca, params)
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
    sign_with(ca, node_params(name(common_name, true), names, validity)?)
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
