//! Errors of the transport.

use thiserror::Error;

/// Everything that can go wrong while setting up or using a distribution connection.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A certificate, key or CA file could not be read or parsed.
    #[error("bad tls material: {0}")]
    TlsMaterial(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind udp {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection could not be started (bad server name, endpoint closed, ...).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection: {}", crate::connection::describe_close(.0))]
    Connection(#[from] quinn::ConnectionError),
    /// A stream or the connection failed during set-up.
    #[error("{0}")]
    Stream(#[from] crate::direct::StreamError),
    /// The peer did not complete its part in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection is closed; nothing more can be sent.
    #[error("connection closed")]
    Closed,
    /// A packet broke the framing rules.
    #[error("framing: {0}")]
    Frame(#[from] quic_dist_core::FrameError),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    CertGen(#[from] rcgen::Error),
}
