//! Rustler NIF of quic_dist: converts Erlang terms and forwards to `quic_dist_transport`.
//!
//! Nothing here decides anything about distribution. Calls never block a scheduler (the one
//! that waits, `endpoint_close`, runs on a dirty I/O scheduler); everything slow happens on
//! the tokio runtime, which reports back with messages to Erlang processes.
#![warn(missing_docs)]

mod alloc_count;
mod atoms;
mod certs;
mod connection;
mod endpoint;
mod halt;
mod lend;
mod logging;
mod runtime;
mod select;
mod spike;
mod terms;

fn load(env: rustler::Env, _info: rustler::Term) -> bool {
    select::init(env)
}

rustler::init!("quic_dist_nif", load = load);
