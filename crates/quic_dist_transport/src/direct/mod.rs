//! QUIC driven by the threads that use it, without an I/O thread of its own.
//!
//! Handing every message to an I/O thread (quinn with tokio) and received ones back costs two
//! thread hand-offs each way, tens of microseconds each on a virtual machine (bench/README.md,
//! Latency). Here quinn-proto's state machine is driven in place: a sender's thread writes,
//! encrypts and sends; the thread woken by the socket (an Erlang scheduler, through
//! `enif_select`) receives, decrypts and delivers; a timer thread handles only QUIC's timers.
//! The distribution layer (`connection.rs`, `send.rs`, `recv.rs`) keeps its async tasks: they
//! run on the inline executor (`exec.rs`) over quinn-like handles (`compat.rs`).

pub mod compat;
mod endpoint;
pub mod exec;
mod streams;
mod timers;
mod udp;
mod unreachable;

pub use endpoint::{Connection, Endpoint, NO_QUIC_AT_PEER, PEER_GONE};
pub use streams::{StreamError, SMALL_WRITE_RESERVE};
