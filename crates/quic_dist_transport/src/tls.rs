//! TLS 1.3 configuration: the node's certificate chain and key, the CA it trusts, and the
//! rustls client and server configurations built from them. Both directions verify the peer.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TransportOptions;
use crate::error::TransportError;
use crate::insecure::AcceptAnyPeer;

/// ALPN protocol name: a QUIC client speaking anything else is refused during the handshake.
pub const ALPN: &[u8] = b"quic-dist/1";

/// The cipher suite quic_dist offers. Offering exactly one makes the negotiated suite known
/// (quinn does not expose it) and AES-128-GCM is the fastest with AES-NI.
pub const CIPHER_SUITE: &str = "TLS13_AES_128_GCM_SHA256";

/// [`CIPHER_SUITE`] from the faster of the two AES-GCM implementations at hand on this CPU.
///
/// aws-lc (the rest of the provider: key exchange, signatures) uses vector AES instructions
/// only with AVX-512 and otherwise AES-NI one block at a time; ring has a VAES + AVX2 version.
/// On a CPU with VAES but no AVX-512 (the AMD EPYC of the benchmarks) ring seals 7.4 GB/s
/// against aws-lc's 4.0 (64 KiB buffers), and AES-GCM is a quarter of the CPU that bulk data
/// costs. Both are the same cipher suite on the wire.
pub fn aes_128_gcm() -> rustls::SupportedCipherSuite {
    if vector_aes_without_avx512() {
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
    } else {
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
    }
}

/// Whether this CPU has VAES and VPCLMULQDQ with AVX2 but not AVX-512.
fn vector_aes_without_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("avx2")
            && !std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The certificates and key a node presents, and the CA certificates it trusts.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The node's certificate followed by any intermediate certificates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors: peers must present a chain ending at one of these.
    pub roots: Vec<CertificateDer<'static>>,
    /// Verify the peer's certificate (always, unless the user asked for `insecure`).
    pub verify_peer: bool,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            verify_peer: self.verify_peer,
        }
    }
}

fn pem_error(what: &str, source: impl std::fmt::Display) -> TransportError {
    TransportError::TlsMaterial(format!("{what}: {source}"))
}

impl TlsMaterial {
    /// Reads PEM files: certificate chain, private key (PKCS#8, PKCS#1 or SEC1) and CA bundle.
    pub fn from_pem_files(
        certfile: &Path,
        keyfile: &Path,
        cacertfile: &Path,
    ) -> Result<Self, TransportError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| pem_error(&format!("cannot read {}", p.display()), e))
        };
        Self::from_pem(&read(certfile)?, &read(keyfile)?, &read(cacertfile)?)
    }

    /// Parses PEM text: certificate chain, private key and CA bundle.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
    ) -> Result<Self, TransportError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("certificate", e))?;
        if chain.is_empty() {
            return Err(pem_error("certificate", "no certificate found"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error("private key", e))?;
        let roots = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("ca certificate", e))?;
        if roots.is_empty() {
            return Err(pem_error("ca certificate", "no certificate found"));
        }
        Ok(Self {
            chain,
            key,
            roots,
            verify_peer: true,
        })
    }

    fn provider() -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![aes_128_gcm()];
        Arc::new(provider)
    }

    fn root_store(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone())?;
        }
        Ok(Arc::new(store))
    }

    /// The server side: presents the node certificate and requires a client certificate
    /// signed by a trusted CA.
    pub fn server_config(
        &self,
        opts: &TransportOptions,
    ) -> Result<quinn::ServerConfig, TransportError> {
        let provider = Self::provider();
        let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = if self.verify_peer {
            WebPkiClientVerifier::builder_with_provider(self.root_store()?, provider.clone())
                .build()
                .map_err(|e| pem_error("client verifier", e))?
        } else {
            AcceptAnyPeer::new(provider.clone())
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT data could be replayed: never accept it for distribution traffic.
        tls.max_early_data_size = 0;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| pem_error("quic server", e))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(opts.quinn_transport());
        Ok(server)
    }

    /// The client side: verifies the server certificate against the trusted CA and the server
    /// name (the host part of the node name), and presents the node certificate.
    pub fn client_config(
        &self,
        opts: &TransportOptions,
    ) -> Result<quinn::ClientConfig, TransportError> {
        let provider = Self::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = if self.verify_peer {
            builder.with_root_certificates(self.root_store()?)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(AcceptAnyPeer::new(provider))
        };
        let mut tls = builder.with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| pem_error("quic client", e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(opts.quinn_transport());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::quic::Version;
    use rustls::Side;
    use rustls::SupportedCipherSuite;

    fn quic_suite(s: SupportedCipherSuite) -> rustls::quic::Suite {
        s.tls13()
            .and_then(|t| t.quic_suite())
            .expect("a TLS 1.3 suite with QUIC keys")
    }

    #[test]
    fn the_chosen_suite_is_the_announced_one() {
        assert_eq!(format!("{:?}", aes_128_gcm().suite()), CIPHER_SUITE);
        let _ = quic_suite(aes_128_gcm());
    }

    #[test]
    fn packets_sealed_by_one_implementation_open_with_the_other() {
        // Peers on different CPUs may pick different implementations of the same suite.
        let ring = quic_suite(rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256);
        let aws = quic_suite(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256);
        let cid = [0x51u8; 8];
        for (seal, open) in [(ring, aws), (aws, ring)] {
            let client = seal.keys(&cid, Side::Client, Version::V1);
            let server = open.keys(&cid, Side::Server, Version::V1);
            let header = b"header";
            let mut packet = b"a distribution packet".to_vec();
            let tag = client
                .local
                .packet
                .encrypt_in_place(7, header, &mut packet)
                .unwrap();
            packet.extend_from_slice(tag.as_ref());
            let opened = server
                .remote
                .packet
                .decrypt_in_place(7, header, &mut packet)
                .unwrap();
            assert_eq!(opened, b"a distribution packet");
        }
    }
}
