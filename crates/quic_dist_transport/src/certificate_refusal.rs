//! Telling a refused certificate apart from other failed handshakes, and saying so.
//!
//! A TLS verifier that refuses a certificate aborts the QUIC handshake with an alert, which
//! quinn reports as "the cryptographic handshake failed: error 51: invalid peer certificate:
//! BadSignature", on both sides. That reads the same whether this node refused the peer's
//! certificate or the peer refused ours, and it does not name the usual cause: in cookie mode,
//! nodes with different cookies derive different CAs.

use quinn_proto::{ConnectionError, TransportErrorCode};

/// rustls's text for a certificate its verifier refused (`rustls::Error::InvalidCertificate`).
const INVALID_CERTIFICATE: &str = "invalid peer certificate";

/// rustls's names for a certificate that no trusted CA signed: a CA of another name
/// (`UnknownIssuer`), or one of the same name with another key (`BadSignature`, which is what
/// two cookie-derived CAs give).
const UNTRUSTED_ISSUER: [&str; 2] = ["UnknownIssuer", "BadSignature"];

/// Whose certificate a TLS handshake refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This node refused the peer's certificate.
    PeersCertificate,
    /// The peer refused this node's certificate.
    OwnCertificate,
}

/// A handshake that failed on a certificate: whose, and rustls's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRefusal {
    /// Whose certificate was refused.
    pub refused: Refused,
    /// rustls's reason, e.g. "invalid peer certificate: BadSignature".
    pub reason: String,
}

impl CertificateRefusal {
    /// The refusal in `e`, if the connection ended on a refused certificate.
    pub fn of(e: &ConnectionError) -> Option<Self> {
        let (refused, code, reason) = match e {
            // This node's TLS stack raised the alert.
            ConnectionError::TransportError(t) => {
                (Refused::PeersCertificate, t.code, t.reason.clone())
            }
            // The peer's did, and sent its reason in the close frame.
            ConnectionError::ConnectionClosed(c) => (
                Refused::OwnCertificate,
                c.error_code,
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            _ => return None,
        };
        (is_tls_alert(code) && reason.contains(INVALID_CERTIFICATE))
            .then_some(Self { refused, reason })
    }
}

impl std::fmt::Display for CertificateRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whose, truster) = match self.refused {
            Refused::PeersCertificate => (
                "this node does not trust the peer's certificate",
                "this node",
            ),
            Refused::OwnCertificate => (
                "the peer does not trust this node's certificate",
                "the peer",
            ),
        };
        write!(f, "{whose} ({})", self.reason)?;
        if UNTRUSTED_ISSUER
            .iter()
            .any(|name| self.reason.contains(name))
        {
            write!(
                f,
                ": no CA that {truster} trusts signed it (in cookie mode: the two nodes' cookies differ)"
            )?;
        }
        Ok(())
    }
}

/// QUIC carries TLS alerts as the transport error codes 0x100-0x1ff (RFC 9001, section 4.8).
fn is_tls_alert(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(code: TransportErrorCode, reason: &str) -> ConnectionError {
        ConnectionError::TransportError(quinn_proto::TransportError {
            code,
            frame: None,
            reason: reason.to_string(),
        })
    }

    fn remote(code: TransportErrorCode, reason: &str) -> ConnectionError {
        ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: bytes::Bytes::copy_from_slice(reason.as_bytes()),
        })
    }

    const BAD_SIGNATURE: &str = "invalid peer certificate: BadSignature";

    #[test]
    fn a_certificate_refused_here_names_the_peers_certificate_and_the_cookie() {
        let r = CertificateRefusal::of(&local(TransportErrorCode::crypto(51), BAD_SIGNATURE))
            .expect("a refusal");
        assert_eq!(r.refused, Refused::PeersCertificate);
        assert_eq!(
            r.to_string(),
            "this node does not trust the peer's certificate (invalid peer certificate: \
             BadSignature): no CA that this node trusts signed it (in cookie mode: the two \
             nodes' cookies differ)"
        );
    }

    #[test]
    fn a_certificate_refused_by_the_peer_names_ours() {
        let reason = "invalid peer certificate: UnknownIssuer";
        let r = CertificateRefusal::of(&remote(TransportErrorCode::crypto(48), reason))
            .expect("a refusal");
        assert_eq!(r.refused, Refused::OwnCertificate);
        assert!(r
            .to_string()
            .starts_with("the peer does not trust this node's certificate"));
        assert!(r.to_string().contains("no CA that the peer trusts"));
    }

    #[test]
    fn other_certificate_faults_get_no_cookie_hint() {
        let reason = "invalid peer certificate: Expired";
        let r = CertificateRefusal::of(&local(TransportErrorCode::crypto(45), reason))
            .expect("a refusal");
        assert_eq!(
            r.to_string(),
            "this node does not trust the peer's certificate (invalid peer certificate: Expired)"
        );
    }

    #[test]
    fn other_failures_are_not_certificate_refusals() {
        // A client without a certificate: a TLS alert, but no certificate to distrust.
        let none = local(TransportErrorCode::crypto(116), "peer sent no certificates");
        assert_eq!(CertificateRefusal::of(&none), None);
        // The same words in a close for another error than a TLS alert.
        let app = remote(TransportErrorCode::PROTOCOL_VIOLATION, BAD_SIGNATURE);
        assert_eq!(CertificateRefusal::of(&app), None);
        assert_eq!(CertificateRefusal::of(&ConnectionError::TimedOut), None);
    }
}
