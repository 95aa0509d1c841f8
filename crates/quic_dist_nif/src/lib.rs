//! Rustler NIF of quic_dist: converts Erlang terms and forwards to `quic_dist_transport`.
//!
//! Nothing here decides anything about distribution. Calls never block a scheduler (the one
//! that waits, `endpoint_close`, runs on a dirty I/O scheduler). The transport runs on the
//! calling scheduler: a send is encrypted and leaves in the `conn_send` call, datagrams are
//! read and delivered in `endpoint_receive` calls of the process watching the socket, and only
//! QUIC's timers run on a thread of the transport (see `caller.rs` for the messages back).
#![warn(missing_docs)]

mod alloc_count;
mod atoms;
mod caller;
mod certs;
mod connection;
mod endpoint;
mod halt;
mod join_buffer;
mod lend;
mod logging;
mod select;
mod terms;

fn load(env: rustler::Env, _info: rustler::Term) -> bool {
    select::init(env)
}

rustler::init!("quic_dist_nif", load = load);
