//! SPIKE (branch direct-io, not for main): quinn-proto driven from Erlang processes, with the
//! UDP socket in Erlang (OTP's `socket` module, which waits with `enif_select`). Measures what
//! a scheduler-driven carrier's round trip would be.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use quic_dist_transport::certs::{generate_ca, generate_node, Validity};
use quic_dist_transport::{TlsMaterial, TransportOptions};
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, StreamId};
use rustler::{Binary, Encoder, Env, Resource, ResourceArc, Term};

use crate::terms::binary;

struct State {
    ep: quinn_proto::Endpoint,
    conn: Option<(ConnectionHandle, quinn_proto::Connection)>,
    stream: Option<StreamId>,
    client: Option<quinn_proto::ClientConfig>,
    /// Written before the handshake allowed a stream.
    pending: Vec<u8>,
    tx: Vec<u8>,
}

/// One spike endpoint.
pub struct SpikeRes(Mutex<State>);

#[rustler::resource_impl]
impl Resource for SpikeRes {}

fn tls(dir: &str) -> TlsMaterial {
    // Both OS processes load the same files; the first one writes them.
    let path = |f: &str| format!("{dir}/{f}");
    if std::fs::metadata(path("ca.pem")).is_err() {
        let ca = generate_ca("spike ca", Validity::days_from_now(1)).unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let node = generate_node(&ca, "n@localhost", &names, Validity::days_from_now(1)).unwrap();
        std::fs::write(path("cert.pem"), &node.cert_pem).unwrap();
        std::fs::write(path("key.pem"), &node.key_pem).unwrap();
        std::fs::write(path("ca.pem"), &ca.cert_pem).unwrap();
    }
    let read = |f: &str| std::fs::read(path(f)).unwrap();
    TlsMaterial::from_pem(&read("cert.pem"), &read("key.pem"), &read("ca.pem")).unwrap()
}

#[rustler::nif]
fn spike_new(listen: bool, dir: String) -> ResourceArc<SpikeRes> {
    let opts = TransportOptions::default().for_loopback();
    let tls = tls(&dir);
    let server = listen.then(|| Arc::new(tls.server_config(&opts).unwrap()));
    let client = (!listen).then(|| tls.client_config(&opts).unwrap());
    let ep = quinn_proto::Endpoint::new(Arc::new(opts.quinn_endpoint()), server, false, None);
    ResourceArc::new(SpikeRes(Mutex::new(State {
        ep,
        conn: None,
        stream: None,
        client,
        pending: Vec::new(),
        tx: Vec::with_capacity(65536),
    })))
}

fn drive<'a>(env: Env<'a>, st: &mut State, out: &mut Vec<Term<'a>>, data: &mut Vec<u8>) {
    let Some((h, conn)) = st.conn.as_mut() else {
        return;
    };
    let now = Instant::now();
    while let Some(ev) = conn.poll_endpoint_events() {
        if let Some(back) = st.ep.handle_event(*h, ev) {
            conn.handle_event(back);
        }
    }
    while conn.poll().is_some() {}
    if st.stream.is_none() {
        st.stream = conn.streams().accept(Dir::Bi);
    }
    if st.stream.is_none() && st.client.is_some() && !conn.is_handshaking() {
        st.stream = conn.streams().open(Dir::Bi);
    }
    if let (Some(id), false) = (st.stream, st.pending.is_empty()) {
        if let Ok(n) = conn.send_stream(id).write(&st.pending) {
            st.pending.drain(..n);
        }
    }
    if let Some(id) = st.stream {
        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
            while let Ok(Some(c)) = chunks.next(usize::MAX) {
                data.extend_from_slice(&c.bytes);
            }
            let _ = chunks.finalize();
        }
    }
    loop {
        st.tx.clear();
        let Some(t) = conn.poll_transmit(now, 1, &mut st.tx) else {
            break;
        };
        out.push(binary(env, &st.tx[..t.size]).to_term(env));
    }
}

/// Starts a connection to 127.0.0.1:`port`; the datagrams to send.
#[rustler::nif]
fn spike_connect<'a>(env: Env<'a>, res: ResourceArc<SpikeRes>, port: u16) -> Term<'a> {
    let mut st = res.0.lock().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = st.client.clone().unwrap();
    let c = st
        .ep
        .connect(Instant::now(), client, addr, "localhost")
        .unwrap();
    st.conn = Some(c);
    let (mut out, mut data) = (Vec::new(), Vec::new());
    drive(env, &mut st, &mut out, &mut data);
    out.encode(env)
}

/// A datagram from 127.0.0.1:`port`: `{DatagramsToSend, StreamBytes}`.
#[rustler::nif]
fn spike_input<'a>(
    env: Env<'a>,
    res: ResourceArc<SpikeRes>,
    port: u16,
    d: Binary<'a>,
    echo: bool,
) -> Term<'a> {
    let mut st = res.0.lock().unwrap();
    let now = Instant::now();
    let from = SocketAddr::from(([127, 0, 0, 1], port));
    let mut resp = Vec::new();
    let mut out = Vec::new();
    match st.ep.handle(
        now,
        from,
        None,
        None,
        BytesMut::from(d.as_slice()),
        &mut resp,
    ) {
        Some(DatagramEvent::ConnectionEvent(_, ev)) => {
            if let Some((_, c)) = st.conn.as_mut() {
                c.handle_event(ev);
            }
        }
        Some(DatagramEvent::NewConnection(inc)) => {
            let accepted = st.ep.accept(inc, now, &mut resp, None);
            if let Ok(c) = accepted {
                st.conn = Some(c);
            }
        }
        Some(DatagramEvent::Response(t)) => out.push(binary(env, &resp[..t.size]).to_term(env)),
        None => {}
    }
    let mut data = Vec::new();
    drive(env, &mut st, &mut out, &mut data);
    if echo && !data.is_empty() {
        st.pending.extend_from_slice(&data);
        let mut more = Vec::new();
        drive(env, &mut st, &mut out, &mut more);
    }
    (out, binary(env, &data)).encode(env)
}

/// Writes `bytes` on the stream; the datagrams to send.
#[rustler::nif]
fn spike_write<'a>(env: Env<'a>, res: ResourceArc<SpikeRes>, bytes: Binary<'a>) -> Term<'a> {
    let mut st = res.0.lock().unwrap();
    let st = &mut *st;
    st.pending.extend_from_slice(bytes.as_slice());
    let (mut out, mut data) = (Vec::new(), Vec::new());
    drive(env, st, &mut out, &mut data);
    out.encode(env)
}

/// SPIKE: a `direct` endpoint whose socket readiness arrives as `enif_select` messages.
pub struct DirectEpRes {
    ep: quic_dist_transport::direct::Endpoint,
    watch: crate::select::SocketWatch,
}

#[rustler::resource_impl]
impl Resource for DirectEpRes {}

#[rustler::nif]
fn direct_open(port: u16) -> rustler::NifResult<ResourceArc<DirectEpRes>> {
    let err = |e: String| rustler::Error::Term(Box::new(e));
    let socket = std::net::UdpSocket::bind(("127.0.0.1", port)).map_err(|e| err(e.to_string()))?;
    let opts = TransportOptions::default();
    let ep = quic_dist_transport::direct::Endpoint::new(socket, opts.quinn_endpoint(), None)
        .map_err(|e| err(e.to_string()))?;
    let handle = ep.socket_handle().map_err(|e| err(e.to_string()))?;
    let watch = crate::select::SocketWatch::new(&handle).map_err(|e| err(e.to_string()))?;
    Ok(ResourceArc::new(DirectEpRes { ep, watch }))
}

/// Arms the watch: the caller gets `{select, _, undefined, ready_input}` when a datagram waits.
#[rustler::nif]
fn direct_watch(env: Env, res: ResourceArc<DirectEpRes>) -> rustler::NifResult<rustler::Atom> {
    res.watch
        .arm(env)
        .map_err(|e| rustler::Error::Term(Box::new(e.to_string())))?;
    Ok(rustler::types::atom::ok())
}

/// Reads what waits on the socket; the number of connections it concerned.
#[rustler::nif]
fn direct_receive(res: ResourceArc<DirectEpRes>) -> usize {
    res.ep.receive().map(|c| c.len()).unwrap_or(0)
}

/// Stops the watch.
#[rustler::nif]
fn direct_stop(env: Env, res: ResourceArc<DirectEpRes>) -> rustler::Atom {
    res.watch.stop(env);
    rustler::types::atom::ok()
}
