//! Whether a certificate names a host, by the rules TLS applies to server names (webpki): a
//! DNS or IP subject alternative name that matches; the CN is not taken for a host name.

use rustls_pki_types::{CertificateDer, ServerName};

/// True if `cert` (DER) is valid for `host` (a DNS name or an IP address) as a TLS server name.
/// False for a certificate or a host that does not parse.
pub fn certificate_names_host(cert: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{generate_ca, generate_node, Validity};
    use rustls_pki_types::pem::PemObject;

    fn node_cert(names: &[&str]) -> CertificateDer<'static> {
        let ca = generate_ca("test ca", Validity::days_from_now(1)).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let node = generate_node(&ca, "n", &names, Validity::days_from_now(1)).unwrap();
        CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn ip_and_dns_names_match_as_in_tls() {
        let cert = node_cert(&["127.0.0.1", "db1.example.com"]);
        assert!(certificate_names_host(&cert, "127.0.0.1"));
        assert!(certificate_names_host(&cert, "db1.example.com"));
        assert!(!certificate_names_host(&cert, "127.0.0.2"));
        assert!(!certificate_names_host(&cert, "db2.example.com"));
        assert!(!certificate_names_host(&cert, "not a host name"));
    }

    #[test]
    fn garbage_is_not_a_certificate_that_names_anything() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        assert!(!certificate_names_host(&junk, "127.0.0.1"));
    }
}
