//! Sans-IO core of quic_dist.
//!
//! Everything here is deterministic and free of I/O so it can be unit-tested without a runtime:
//! the framing of distribution packets on a QUIC stream ([`framing`]), the routing facts of a
//! distribution packet ([`dist_header`]), the joining of a message's fragments ([`fragments`]),
//! the choice of stream per packet and the delivery rule for ordered packets ([`stream_map`]),
//! which received packets share one Erlang binary ([`shared_binaries`]),
//! and the limits that keep memory bounded per connection ([`limits`]).
#![warn(missing_docs)]

pub mod copy;
pub mod dist_header;
pub mod error;
pub mod fragments;
pub mod framing;
pub mod in_flight;
pub mod limits;
pub mod packet;
pub mod shared_binaries;
pub mod stream_map;
#[cfg(test)]
mod test_terms;

pub use error::FrameError;
pub use framing::{Frame, FrameDecoder, FrameEncoder, FRAME_HEADER_LEN};
pub use packet::Packet;
