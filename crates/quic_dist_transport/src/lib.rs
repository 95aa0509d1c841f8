//! QUIC transport of quic_dist: quinn-proto's state machine and rustls, driven by the threads
//! that use it (see [`direct`]): no runtime thread of its own.
//!
//! One [`DistEndpoint`] per node (one UDP socket) carries every distribution connection of that
//! node, incoming and outgoing. A [`DistConnection`] carries framed distribution packets on a
//! QUIC stream, batches them both ways, and applies backpressure so memory stays bounded:
//!
//! - sending never blocks the caller: [`DistConnection::send`] queues a framed batch and answers
//!   [`SendStatus::Busy`] above a high-water mark; [`ConnectionEvents::writable`] fires once the
//!   queue has drained below the low-water mark;
//! - receiving stops reading the stream while too many delivered bytes are unacknowledged
//!   ([`DistConnection::ack`]), so QUIC flow control pushes back on the peer.
//!
//! The crate knows nothing about Erlang: the NIF implements [`ConnectionEvents`].
#![warn(missing_docs)]

pub mod certificate_refusal;
pub mod certs;
pub mod config;
pub mod connection;
pub mod cookie_trust;
pub mod direct;
pub mod endpoint;
pub mod error;
pub mod insecure;
mod recv;
mod send;
pub mod server_name;
pub mod tls;

pub use config::{Congestion, TransportOptions};
pub use connection::{
    ConnectionEvents, ConnectionInfo, ConnectionStats, DistConnection, JoinedPacket, PacketBatch,
    SendStatus,
};
pub use endpoint::{ClientConfigs, DistEndpoint};
pub use error::TransportError;
pub use send::{SendBatch, Submitted};
pub use tls::{TlsMaterial, ALPN};
