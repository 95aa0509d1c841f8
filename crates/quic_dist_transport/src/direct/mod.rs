//! QUIC driven by the threads that use it, without an I/O thread of its own.
//!
//! The carrier today hands every message to a tokio thread running quinn, which hands received
//! ones back: two thread hand-offs each way, most of its round trip on a 2-core machine
//! (bench/README.md, Latency; `examples/proto_rtt.rs`). Here quinn-proto's state machine is
//! driven in place: a sender's thread writes, encrypts and sends; the thread woken by the
//! socket (an Erlang scheduler, through `enif_select`) receives, decrypts and delivers; a
//! timer thread handles only QUIC's timers.

pub mod compat;
mod endpoint;
pub mod exec;
mod streams;
mod timers;
mod udp;

pub use endpoint::{Connection, Endpoint};
pub use streams::StreamError;
