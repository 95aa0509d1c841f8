//! NIFs for one distribution connection, and the events it sends back to Erlang.
//!
//! Messages sent to Erlang processes:
//! - input handler: `{quic_dist_data, [Packet :: binary()], Channel, Bytes, Receivers}`
//!   (acknowledge with `conn_ack(Conn, Channel, Bytes)` once consumed; `Receivers` is
//!   `[{EncodedPidOrName :: binary(), Bytes}]`) and `{quic_dist_closed, Reason}`
//! - controller: `quic_dist_writable`, `{quic_dist_stream_writable, Stream}`

use std::sync::Arc;

use quic_dist_core::fragments::JoinBuffer;
use quic_dist_transport::{
    ConnectionEvents, DistConnection, JoinedPacket, PacketBatch, SendStatus,
};
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, Resource, ResourceArc, Term};

use crate::caller;

use crate::atoms;
use crate::join_buffer::ErlangJoinBuffer;
use crate::lend::Lender;
use crate::terms::{
    binary, encode_socket_addr, error_tuple, give_pieces, iodata_pieces, packet_binaries,
};

/// A connection, held by the Erlang side as a resource. Dropping it closes the connection.
pub struct ConnRes {
    conn: DistConnection,
}

#[rustler::resource_impl]
impl Resource for ConnRes {}

impl ConnRes {
    pub fn new(conn: DistConnection) -> Self {
        Self { conn }
    }
}

struct ErlangEvents {
    input: LocalPid,
    controller: LocalPid,
}

impl ConnectionEvents for ErlangEvents {
    fn packets(&self, batch: PacketBatch) {
        caller::send(&self.input, move |env| {
            let list = match batch.joined {
                Some(JoinedPacket(whole)) => {
                    let whole = whole
                        .into_any()
                        .downcast::<ErlangJoinBuffer>()
                        .expect("buffers come from join_buffer");
                    vec![whole.into_binary(env).to_term(env)]
                }
                None => packet_binaries(env, &batch.packets),
            };
            let receivers: Vec<Term> = batch
                .receivers
                .iter()
                .map(|(to, n)| (binary(env, to), *n).encode(env))
                .collect();
            (
                atoms::quic_dist_data(),
                list,
                batch.channel,
                batch.bytes,
                receivers,
            )
                .encode(env)
        });
    }

    fn closed(&self, reason: String) {
        caller::send(&self.input, move |env| {
            (atoms::quic_dist_closed(), reason).encode(env)
        });
    }

    fn join_buffer(&self, capacity: usize) -> Option<Box<dyn JoinBuffer>> {
        Some(Box::new(ErlangJoinBuffer::new(capacity)?))
    }

    fn writable(&self) {
        caller::send(&self.controller, move |env| {
            atoms::quic_dist_writable().encode(env)
        });
    }

    fn stream_writable(&self, stream: usize) {
        caller::send(&self.controller, move |env| {
            (atoms::quic_dist_stream_writable(), stream).encode(env)
        });
    }
}

/// Starts delivery: packets and close notices go to `input`, writable notices to `controller`.
#[rustler::nif]
fn conn_start<'a>(
    env: Env<'a>,
    conn: ResourceArc<ConnRes>,
    input: LocalPid,
    controller: LocalPid,
) -> Term<'a> {
    let _caller = caller::enter(env);
    match conn
        .conn
        .start(Arc::new(ErlangEvents { input, controller }))
    {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_tuple(env, e),
    }
}

/// Frames and queues a list of packets (each an iodata); `ok`, `busy` (stop until
/// `quic_dist_writable`), `{ok | busy, [{Stream, EncodedPid}]}` (also suspend those senders
/// until `{quic_dist_stream_writable, Stream}`), or `{error, Reason}`.
#[rustler::nif]
fn conn_send<'a>(
    env: Env<'a>,
    conn: ResourceArc<ConnRes>,
    packets: Term<'a>,
) -> NifResult<Term<'a>> {
    let _caller = caller::enter(env);
    let mut batch = conn.conn.batch();
    let mut lender = Lender::default();
    let mut pieces = Vec::new();
    for packet in packets.into_list_iterator()? {
        pieces.clear();
        if let Err(e) = batch.begin_packet(iodata_pieces(packet, &mut pieces)?) {
            return Ok(error_tuple(env, e));
        }
        give_pieces(&pieces, &mut batch, &mut lender);
        if let Err(e) = batch.end_packet() {
            return Ok(error_tuple(env, e));
        }
    }
    // A batch can take a few hundred microseconds to copy: count it against the caller's time
    // slice, so that the scheduler turns to other processes (a latency-sensitive one queued
    // behind a bulk transfer) as it would after as much Erlang work.
    let _ = rustler::schedule::consume_timeslice(env, timeslice_percent(batch.bytes()));
    let submitted = match batch.submit() {
        Ok(s) => s,
        Err(e) => return Ok(error_tuple(env, e)),
    };
    let status = match submitted.status {
        SendStatus::Ready => atoms::ok(),
        SendStatus::Busy => atoms::busy(),
    };
    if submitted.throttle.is_empty() {
        return Ok(status.encode(env));
    }
    let throttle: Vec<Term> = submitted
        .throttle
        .iter()
        .map(|(stream, pid)| (*stream, binary(env, pid)).encode(env))
        .collect();
    Ok((status, throttle).encode(env))
}

/// Share of a scheduler time slice (about a millisecond) that framing `bytes` costs: copying
/// runs at a few GB/s, so about 1% per 64 KiB.
fn timeslice_percent(bytes: usize) -> i32 {
    (bytes / (64 * 1024)).clamp(1, 100) as i32
}

/// The handshake is over: send data over `streams` data streams from now on (1: all on the
/// control stream, in one order). Called by the controller before its first data packet.
#[rustler::nif]
fn conn_data_mode<'a>(env: Env<'a>, conn: ResourceArc<ConnRes>, streams: usize) -> Term<'a> {
    let _caller = caller::enter(env);
    match conn.conn.start_data_streams(streams) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_tuple(env, e),
    }
}

/// The input handler is in data mode: deliver the peer's data streams from now on.
#[rustler::nif]
fn conn_open_input(env: Env, conn: ResourceArc<ConnRes>) -> Atom {
    let _caller = caller::enter(env);
    conn.conn.open_input();
    atoms::ok()
}

/// Sends a tick on the control stream (ahead of any data). Never blocks.
#[rustler::nif]
fn conn_tick(env: Env, conn: ResourceArc<ConnRes>) -> Atom {
    let _caller = caller::enter(env);
    let _ = conn.conn.tick();
    atoms::ok()
}

/// The input handler consumed `bytes` of the packets delivered on `channel`: `ok`, or
/// `run_tasks` when that lets the channel's reader go on, which it then does at the next
/// `conn_run_tasks/1` (the caller asks the node's receiver process for it).
#[rustler::nif]
fn conn_ack(env: Env, conn: ResourceArc<ConnRes>, channel: usize, bytes: usize) -> Atom {
    let _caller = caller::enter(env);
    if conn.conn.ack_later(channel, bytes) {
        atoms::run_tasks()
    } else {
        atoms::ok()
    }
}

/// Runs the ready tasks of the connection's endpoint (readers that `conn_ack/3` let go on).
#[rustler::nif]
fn conn_run_tasks(env: Env, conn: ResourceArc<ConnRes>) -> Atom {
    let _caller = caller::enter(env);
    conn.conn.run_tasks();
    atoms::ok()
}

/// `{ok, Received, Sent, Pending}` for `dist_util`'s tick logic: `Received` counts UDP datagrams
/// from the peer, so any QUIC activity proves the peer alive, even behind flow-controlled data.
#[rustler::nif]
fn conn_getstat(conn: ResourceArc<ConnRes>) -> (Atom, u64, u64, usize) {
    let s = conn.conn.stats();
    (
        atoms::ok(),
        s.datagrams_received,
        s.packets_sent,
        s.queued_bytes,
    )
}

/// All counters of the connection, as a map.
#[rustler::nif]
fn conn_stats<'a>(env: Env<'a>, conn: ResourceArc<ConnRes>) -> NifResult<Term<'a>> {
    let s = conn.conn.stats();
    let pairs: Vec<(Term, Term)> = vec![
        (
            atoms::datagrams_received().encode(env),
            s.datagrams_received.encode(env),
        ),
        (
            atoms::datagrams_sent().encode(env),
            s.datagrams_sent.encode(env),
        ),
        (
            atoms::udp_bytes_received().encode(env),
            s.udp_bytes_received.encode(env),
        ),
        (
            atoms::udp_bytes_sent().encode(env),
            s.udp_bytes_sent.encode(env),
        ),
        (
            atoms::packets_sent().encode(env),
            s.packets_sent.encode(env),
        ),
        (
            atoms::packets_received().encode(env),
            s.packets_received.encode(env),
        ),
        (
            atoms::queued_bytes().encode(env),
            s.queued_bytes.encode(env),
        ),
        (
            atoms::unacked_bytes().encode(env),
            s.unacked_bytes.encode(env),
        ),
        (
            atoms::rtt_us().encode(env),
            (s.rtt.as_micros() as u64).encode(env),
        ),
        (atoms::cwnd().encode(env), s.cwnd.encode(env)),
        (
            atoms::lost_packets().encode(env),
            s.lost_packets.encode(env),
        ),
        (
            atoms::quic_packets_sent().encode(env),
            s.quic_packets_sent.encode(env),
        ),
        (atoms::streams().encode(env), s.streams.encode(env)),
        (
            atoms::peer_streams().encode(env),
            s.peer_streams.encode(env),
        ),
    ];
    Term::map_from_pairs(env, &pairs)
}

/// Peer address, TLS version and cipher, ALPN, SNI and the peer's certificate chain (DER).
#[rustler::nif]
fn conn_info<'a>(env: Env<'a>, conn: ResourceArc<ConnRes>) -> NifResult<Term<'a>> {
    let i = conn.conn.info();
    let bin = |bytes: &[u8]| binary(env, bytes).to_term(env);
    let certs: Vec<Term> = i
        .peer_certificates
        .iter()
        .map(|c| bin(c.as_ref()))
        .collect();
    let alpn = i
        .alpn
        .as_deref()
        .map(bin)
        .unwrap_or_else(|| atoms::undefined().encode(env));
    let sni = i
        .server_name
        .as_deref()
        .map(|s| bin(s.as_bytes()))
        .unwrap_or_else(|| atoms::undefined().encode(env));
    let pairs: Vec<(Term, Term)> = vec![
        (
            atoms::remote().encode(env),
            encode_socket_addr(env, i.remote),
        ),
        (
            atoms::cipher_suite().encode(env),
            i.cipher_suite.encode(env),
        ),
        (atoms::tls_version().encode(env), i.tls_version.encode(env)),
        (atoms::alpn().encode(env), alpn),
        (atoms::server_name().encode(env), sni),
        (atoms::peer_certificates().encode(env), certs.encode(env)),
    ];
    Term::map_from_pairs(env, &pairs)
}

/// True if the peer's certificate is valid for `host` (DNS name or IP address, TLS rules).
#[rustler::nif]
fn conn_peer_names(conn: ResourceArc<ConnRes>, host: String) -> bool {
    conn.conn.peer_certificate_names(&host)
}

/// Closes gracefully: queued packets still go, then the stream ends and the connection closes
/// once the peer acknowledged it (bounded). Never blocks.
#[rustler::nif]
fn conn_shutdown(env: Env, conn: ResourceArc<ConnRes>, reason: String) -> Atom {
    let _caller = caller::enter(env);
    conn.conn.shutdown(&reason);
    atoms::ok()
}
