//! Integration tests over real UDP loopback: two `DistEndpoint`s in one process, certificates
//! generated at test time with the crate's own `certs` module (nothing is written to disk).
//!
//! Every wait is bounded by a timeout; no test sleeps to synchronise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quic_dist_core::fragments::{JoinBuffer, MAX_JOINED_FRAGMENTS};
use quic_dist_core::limits::{
    RECV_BATCH_BYTES, RECV_BATCH_PACKETS, RECV_RESUME, RECV_UNACKED_LIMIT, SEND_QUEUE_HIGH_WATER,
};
use quic_dist_core::{FrameError, Packet, FRAME_HEADER_LEN};
use quic_dist_transport::certs::{generate_ca, generate_node, PemPair, Validity};
use quic_dist_transport::tls::CIPHER_SUITE;
use quic_dist_transport::{
    Congestion, ConnectionEvents, DistConnection, DistEndpoint, PacketBatch, SendStatus,
    TlsMaterial, TransportError, TransportOptions, ALPN,
};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::time::timeout;

/// How long any single expected event may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for an event that must not happen.
const QUIET: Duration = Duration::from_millis(300);
/// The server name every node certificate carries (besides 127.0.0.1).
const HOST: &str = "localhost";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

// ---------------------------------------------------------------------------------------------
// Certificates

#[derive(Debug)]
struct Pki {
    ca: PemPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        Self {
            ca: generate_ca(name, Validity::days_from_now(1)).expect("generate ca"),
        }
    }

    /// A node certificate of this CA naming `names`, trusting this CA.
    fn node(&self, names: &[&str]) -> TlsMaterial {
        self.node_trusting(names, &self.ca)
    }

    /// A node certificate of this CA naming `names`, trusting `roots` (maybe another CA).
    fn node_trusting(&self, names: &[&str], roots: &PemPair) -> TlsMaterial {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let node = generate_node(
            &self.ca,
            "node@localhost",
            &names,
            Validity::days_from_now(1),
        )
        .expect("generate node certificate");
        TlsMaterial::from_pem(
            node.cert_pem.as_bytes(),
            node.key_pem.as_bytes(),
            roots.cert_pem.as_bytes(),
        )
        .expect("load generated material")
    }
}

fn good_names() -> [&'static str; 2] {
    ["127.0.0.1", HOST]
}

// ---------------------------------------------------------------------------------------------
// Events forwarded into channels

#[derive(Debug)]
struct ChannelEvents {
    packets: UnboundedSender<PacketBatch>,
    closed: UnboundedSender<String>,
    writable: UnboundedSender<()>,
}

impl ConnectionEvents for ChannelEvents {
    fn packets(&self, batch: PacketBatch) {
        let _ = self.packets.send(batch);
    }
    fn closed(&self, reason: String) {
        let _ = self.closed.send(reason);
    }
    fn writable(&self) {
        let _ = self.writable.send(());
    }
    // As the NIF does (with Erlang binaries): long messages are copied as they arrive.
    fn join_buffer(&self, capacity: usize) -> Option<Box<dyn JoinBuffer>> {
        Some(Box::new(Vec::<u8>::with_capacity(capacity)))
    }
}

/// A started connection and the receiving ends of its events.
#[derive(Debug)]
struct Side {
    conn: DistConnection,
    packets: UnboundedReceiver<PacketBatch>,
    closed: UnboundedReceiver<String>,
    writable: UnboundedReceiver<()>,
}

fn start(conn: DistConnection) -> Side {
    let (ptx, packets) = mpsc::unbounded_channel();
    let (ctx, closed) = mpsc::unbounded_channel();
    let (wtx, writable) = mpsc::unbounded_channel();
    conn.start(Arc::new(ChannelEvents {
        packets: ptx,
        closed: ctx,
        writable: wtx,
    }))
    .expect("start connection");
    Side {
        conn,
        packets,
        closed,
        writable,
    }
}

async fn within<T>(rx: &mut UnboundedReceiver<T>, what: &str) -> T {
    timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel of {what} closed"))
}

/// Asserts that nothing arrives on `rx` for a while.
async fn stays_quiet<T: std::fmt::Debug>(rx: &mut UnboundedReceiver<T>, what: &str) {
    if let Ok(got) = timeout(QUIET, rx.recv()).await {
        panic!("unexpected {what}: {got:?}");
    }
}

impl Side {
    /// Frames `packets` with the connection's encoder and queues them as one send.
    fn send_packets(&self, packets: &[&[u8]]) -> SendStatus {
        let enc = self.conn.encoder();
        let mut buf = BytesMut::new();
        for p in packets {
            enc.encode_packet(&[p], &mut buf).expect("encode packet");
        }
        self.conn
            .send(buf.freeze(), packets.len() as u64)
            .expect("send")
    }

    /// Receives exactly `n` packets (acknowledging them if `ack`); returns them and the number of
    /// batches they came in. Checks each batch's byte count and size limits.
    async fn recv_packets(&mut self, n: usize, ack: bool) -> (Vec<Bytes>, usize) {
        let mut got = Vec::with_capacity(n);
        let mut batches = 0;
        while got.len() < n {
            let batch = within(&mut self.packets, "packets").await;
            check_batch(&batch);
            batches += 1;
            if ack {
                self.conn.ack(batch.channel, batch.bytes);
            }
            got.extend(batch.packets.iter().map(Packet::to_bytes));
            got.extend((batch.joined.iter()).map(|j| Bytes::copy_from_slice(j.0.as_slice())));
        }
        assert_eq!(got.len(), n, "more packets than expected");
        (got, batches)
    }
}

fn check_batch(batch: &PacketBatch) {
    if let Some(joined) = &batch.joined {
        assert!(
            batch.packets.is_empty(),
            "a joined message shares its batch"
        );
        assert_eq!(batch.bytes, joined.0.as_slice().len(), "batch byte count");
        return;
    }
    assert!(!batch.packets.is_empty(), "empty batch delivered");
    assert!(
        batch.packets.len() <= RECV_BATCH_PACKETS,
        "batch of {} packets",
        batch.packets.len()
    );
    assert_eq!(
        batch.bytes,
        batch.packets.iter().map(Packet::len).sum::<usize>(),
        "batch byte count"
    );
    assert!(
        batch.packets.iter().all(|p| !p.is_empty()),
        "a zero-length frame (tick) was delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// Endpoints

#[derive(Debug)]
struct Server {
    ep: DistEndpoint,
    addr: SocketAddr,
    accepted: UnboundedReceiver<DistConnection>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn server(tls: &TlsMaterial, opts: TransportOptions) -> Server {
    let ep = DistEndpoint::bind(loopback(), tls, true, opts).expect("bind server endpoint");
    watch(&ep);
    let addr = ep.local_addr().expect("server address");
    let (tx, accepted) = mpsc::unbounded_channel();
    ep.accept_loop(move |conn| {
        let _ = tx.send(conn);
    });
    Server { ep, addr, accepted }
}

fn client(tls: &TlsMaterial, opts: TransportOptions) -> DistEndpoint {
    let ep = DistEndpoint::bind(loopback(), tls, false, opts).expect("bind client endpoint");
    watch(&ep);
    ep
}

/// Reads the endpoint's socket whenever it is readable, as the NIF's acceptor process does on
/// `enif_select` messages.
fn watch(ep: &DistEndpoint) {
    let ep = ep.clone();
    let socket = tokio::net::UdpSocket::from_std(ep.socket_handle().expect("socket handle"))
        .expect("tokio socket");
    tokio::spawn(async move {
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            let _ = socket.try_io(tokio::io::Interest::READABLE, || {
                ep.receive()?;
                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
            });
        }
    });
}

#[derive(Debug)]
struct Pair {
    client: Side,
    server: Side,
    client_ep: DistEndpoint,
    server_ep: Server,
    client_tls: TlsMaterial,
    server_tls: TlsMaterial,
}

/// Connects a client to a server and exchanges one `hello` packet client -> server (a QUIC peer
/// only sees a stream once data flows on it, so the server delivers the connection then).
/// The hello is acknowledged; counters therefore start at one packet.
async fn pair(client_opts: TransportOptions, server_opts: TransportOptions) -> Pair {
    init_tracing();
    let pki = Pki::new("test ca");
    let server_tls = pki.node(&good_names());
    let client_tls = pki.node(&good_names());
    let mut srv = server(&server_tls, server_opts);
    let client_ep = client(&client_tls, client_opts);
    let conn = client_ep.connect(srv.addr, HOST).await.expect("connect");
    let client = start(conn);
    assert_eq!(client.send_packets(&[b"hello"]), SendStatus::Ready);
    let accepted = within(&mut srv.accepted, "accepted connection").await;
    let mut server = start(accepted);
    let (hello, _) = server.recv_packets(1, true).await;
    assert_eq!(hello, vec![Bytes::from_static(b"hello")]);
    Pair {
        client,
        server,
        client_ep,
        server_ep: srv,
        client_tls,
        server_tls,
    }
}

/// A packet of `len` bytes (at least 8): its sequence number, then bytes derived from it.
fn seq_packet(seq: u64, len: usize) -> Vec<u8> {
    let mut p = vec![(seq % 251) as u8; len];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn check_seq_packet(p: &[u8], seq: u64, len: usize) {
    assert_eq!(p.len(), len, "length of packet {seq}");
    let got = u64::from_be_bytes(p[..8].try_into().unwrap());
    assert_eq!(got, seq, "packet out of order");
    let fill = (seq % 251) as u8;
    assert!(p[8..].iter().all(|&b| b == fill), "packet {seq} corrupted");
}

/// Pseudo-random bytes, so that any misplaced chunk shows.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn wait_until_drained(conn: &DistConnection) {
    timeout(WAIT, async {
        while conn.stats().queued_bytes > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("send queue never drained");
}

// ---------------------------------------------------------------------------------------------
// 1. Exchange both ways; ticks counted but not delivered

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_flow_both_ways_in_order_and_ticks_are_counted_not_delivered() {
    init_tracing();
    let pki = Pki::new("test ca");
    let mut srv = server(&pki.node(&good_names()), TransportOptions::default());
    let client_ep = client(&pki.node(&good_names()), TransportOptions::default());
    let mut c = start(client_ep.connect(srv.addr, HOST).await.expect("connect"));

    // Client -> server: one send with packets and a tick among them, then another send.
    let enc = c.conn.encoder();
    let mut buf = BytesMut::new();
    enc.encode_packet(&[b"c1"], &mut buf).unwrap();
    enc.encode_tick(&mut buf);
    enc.encode_packet(&[b"c", b"2"], &mut buf).unwrap(); // an I/O vector: one frame
    enc.encode_packet(&[b"c3"], &mut buf).unwrap();
    assert_eq!(c.conn.send(buf.freeze(), 4).unwrap(), SendStatus::Ready);
    assert_eq!(c.send_packets(&[b"c4 is a bit longer"]), SendStatus::Ready);

    let accepted = within(&mut srv.accepted, "accepted connection").await;
    assert_eq!(accepted.remote_address(), client_ep.local_addr().unwrap());
    let mut s = start(accepted);
    let (got, _) = s.recv_packets(4, false).await;
    assert_eq!(
        got,
        vec![
            Bytes::from_static(b"c1"),
            Bytes::from_static(b"c2"),
            Bytes::from_static(b"c3"),
            Bytes::from_static(b"c4 is a bit longer"),
        ]
    );
    // The tick travelled before c2, so it has been counted by now; it was not delivered.
    let st = s.conn.stats();
    assert_eq!(st.packets_received, 5, "4 packets + 1 tick");
    assert_eq!(
        st.unacked_bytes,
        2 + 2 + 2 + 18,
        "delivered, not acknowledged"
    );
    s.conn.ack(0, st.unacked_bytes);
    assert_eq!(s.conn.stats().unacked_bytes, 0);
    assert_eq!(c.conn.stats().packets_sent, 5);

    // Server -> client, with ticks through `tick()` (idle queue) and through the encoder.
    assert_eq!(s.send_packets(&[b"s1", b"s2"]), SendStatus::Ready);
    let (got, _) = c.recv_packets(2, true).await;
    assert_eq!(
        got,
        vec![Bytes::from_static(b"s1"), Bytes::from_static(b"s2")]
    );
    wait_until_drained(&s.conn).await;
    s.conn.tick().unwrap();
    let mut buf = BytesMut::new();
    enc.encode_tick(&mut buf);
    enc.encode_tick(&mut buf);
    s.conn.send(buf.freeze(), 2).unwrap();
    assert_eq!(s.send_packets(&[b"s3"]), SendStatus::Ready);
    let (got, _) = c.recv_packets(1, true).await;
    assert_eq!(got, vec![Bytes::from_static(b"s3")]);
    assert_eq!(c.conn.stats().packets_received, 6, "3 packets + 3 ticks");
    assert_eq!(s.conn.stats().packets_sent, 6);
    stays_quiet(&mut c.packets, "delivery (ticks must not be delivered)").await;

    // And the client can still talk after receiving.
    assert_eq!(c.send_packets(&[b"c5"]), SendStatus::Ready);
    let (got, _) = s.recv_packets(1, true).await;
    assert_eq!(got, vec![Bytes::from_static(b"c5")]);
    assert_eq!(s.conn.stats().packets_received, 6);
    assert!(c.closed.try_recv().is_err() && s.closed.try_recv().is_err());
}

// ---------------------------------------------------------------------------------------------
// 2. Many small packets: complete, in order, batched

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_packets_arrive_complete_in_order_and_batched() {
    const N: u64 = 100_000;
    const LEN: usize = 100;
    const PER_SEND: u64 = 1_000;
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    let enc = p.client.conn.encoder();

    let mut server = p.server;
    let receiver = tokio::spawn(async move {
        let (got, batches) = server.recv_packets(N as usize, true).await;
        for (i, pkt) in got.iter().enumerate() {
            check_seq_packet(pkt, i as u64, LEN);
        }
        (server, batches)
    });

    let mut busy = 0;
    for first in (0..N).step_by(PER_SEND as usize) {
        let mut buf = BytesMut::with_capacity(PER_SEND as usize * (LEN + 4));
        for seq in first..first + PER_SEND {
            enc.encode_packet(&[&seq_packet(seq, LEN)], &mut buf)
                .unwrap();
        }
        if p.client.conn.send(buf.freeze(), PER_SEND).unwrap() == SendStatus::Busy {
            busy += 1;
            within(&mut p.client.writable, "writable").await;
        }
    }
    let (server, batches) = timeout(Duration::from_secs(20), receiver)
        .await
        .expect("receiver timed out")
        .expect("receiver panicked");
    eprintln!("{N} packets in {batches} batches ({busy} busy)");
    assert!(
        batches * 2 <= N as usize,
        "{batches} batches for {N} packets: not batched"
    );
    assert_eq!(server.conn.stats().packets_received, N + 1);
    assert_eq!(server.conn.stats().unacked_bytes, 0);
    assert_eq!(p.client.conn.stats().packets_sent, N + 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Large packets and the frame limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_packet_arrives_intact() {
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    let big = noise(4 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15);
    assert_eq!(p.client.send_packets(&[&big, b"after"]), SendStatus::Ready);
    let (got, _) = p.server.recv_packets(2, true).await;
    assert_eq!(got[0].len(), big.len());
    assert!(got[0] == big, "4 MiB packet corrupted");
    assert_eq!(got[1], Bytes::from_static(b"after"));

    // And the other way round.
    assert_eq!(p.server.send_packets(&[&big]), SendStatus::Ready);
    let (got, _) = p.client.recv_packets(1, true).await;
    assert!(got[0] == big, "4 MiB packet corrupted (server -> client)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_moves_large_packets_with_loopback_datagrams() {
    // Loopback peers send 65 000-byte datagrams from the start: a controller whose first window
    // is smaller than one datagram would never send one.
    for congestion in [Congestion::Bbr, Congestion::Cubic, Congestion::NewReno] {
        let opts = TransportOptions {
            congestion,
            ..TransportOptions::default()
        };
        let mut p = pair(opts.clone(), opts).await;
        let big = noise(1024 * 1024, 0x5851_f42d_4c95_7f2d);
        for _ in 0..4 {
            p.client.send_packets(&[&big]);
        }
        let (got, _) =
            tokio::time::timeout(Duration::from_secs(10), p.server.recv_packets(4, true))
                .await
                .unwrap_or_else(|_| panic!("{congestion:?}: 4 MiB not delivered within 10 s"));
        assert!(got.iter().all(|g| *g == big), "{congestion:?}: corrupted");
        let stats = p.client.conn.stats();
        assert!(
            stats.udp_bytes_sent / stats.datagrams_sent.max(1) > 16 * 1024,
            "{congestion:?}: small datagrams: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_of_exactly_max_frame_pass_and_larger_ones_are_refused_by_the_encoder() {
    const MAX: usize = 64 * 1024;
    let opts = TransportOptions {
        max_frame: MAX,
        ..TransportOptions::default()
    };
    let mut p = pair(opts.clone(), opts).await;
    let enc = p.client.conn.encoder();

    let mut buf = BytesMut::new();
    let too_big = vec![1u8; MAX + 1];
    assert_eq!(
        enc.encode_packet(&[&too_big], &mut buf),
        Err(FrameError::Oversize {
            len: MAX + 1,
            max: MAX
        })
    );
    assert_eq!(
        enc.encode_packet(&[&too_big[..MAX], b"x"], &mut buf),
        Err(FrameError::Oversize {
            len: MAX + 1,
            max: MAX
        }),
        "parts of an I/O vector count together"
    );
    assert!(buf.is_empty(), "a refused packet wrote something");

    let packets: Vec<Vec<u8>> = (0..8).map(|i| noise(MAX, 1 + i)).collect();
    for pkt in &packets {
        enc.encode_packet(&[pkt], &mut buf).unwrap();
    }
    assert_eq!(
        p.client.conn.send(buf.freeze(), 8).unwrap(),
        SendStatus::Ready
    );
    let (got, _) = p.server.recv_packets(8, true).await;
    for (g, want) in got.iter().zip(&packets) {
        assert!(g == want, "max_frame packet corrupted");
    }

    // The server's encoder has the same limit, and its packets at the limit arrive too.
    let mut buf = BytesMut::new();
    let enc = p.server.conn.encoder();
    assert!(enc.encode_packet(&[&too_big], &mut buf).is_err());
    enc.encode_packet(&[&packets[3]], &mut buf).unwrap();
    p.server.conn.send(buf.freeze(), 1).unwrap();
    let (got, _) = p.client.recv_packets(1, true).await;
    assert!(got[0] == packets[3]);
    assert!(p.client.closed.try_recv().is_err() && p.server.closed.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_the_receivers_max_frame_closes_the_connection() {
    const MAX: usize = 64 * 1024;
    let server_opts = TransportOptions {
        max_frame: MAX,
        ..TransportOptions::default()
    };
    // The client allows larger frames than the server does.
    let mut p = pair(TransportOptions::default(), server_opts).await;
    let big = vec![3u8; MAX + 1];
    p.client.send_packets(&[&big]);
    let reason = within(&mut p.server.closed, "server closed").await;
    assert!(reason.contains("protocol error"), "{reason}");
    let reason = within(&mut p.client.closed, "client closed").await;
    assert!(
        reason.contains("peer") && reason.contains("framing"),
        "{reason}"
    );
    assert!(
        p.server.packets.try_recv().is_err(),
        "oversize frame delivered"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Backpressure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_data_stops_the_reader_and_acks_resume_the_flow() {
    // Not a divisor of the limit, so the reader's overshoot shows.
    const LEN: usize = 100_000;
    // Far above what the windows, the receiver limit and the send queue can hold together.
    const MAX_PACKETS: u64 = (256 * 1024 * 1024 / LEN) as u64;
    // How long a busy sender waits for `writable` before deciding the flow has stopped.
    const STALL: Duration = Duration::from_secs(2);

    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    let enc = p.client.conn.encoder();
    let send = |conn: &DistConnection, seq: u64| {
        let mut buf = BytesMut::with_capacity(LEN + 4);
        enc.encode_packet(&[&seq_packet(seq, LEN)], &mut buf)
            .unwrap();
        conn.send(buf.freeze(), 1).unwrap()
    };

    // The receiver never acks. Send until the sender is Busy and stays Busy (no `writable` for
    // STALL) while the receiver holds at least the limit.
    let mut seq = 0u64;
    let mut busy = 0;
    let mut delivered = Vec::new();
    let mut delivered_bytes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    'sending: loop {
        assert!(seq < MAX_PACKETS, "sent {seq} packets and never got stuck");
        let status = send(&p.client.conn, seq);
        seq += 1;
        if status == SendStatus::Ready {
            continue;
        }
        busy += 1;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no stall: {delivered_bytes} bytes delivered after {seq} packets sent"
            );
            let woke = timeout(STALL, p.client.writable.recv()).await.is_ok();
            while let Ok(batch) = p.server.packets.try_recv() {
                check_batch(&batch);
                delivered_bytes += batch.bytes;
                delivered.extend(batch.packets.iter().map(Packet::to_bytes));
            }
            if woke {
                continue 'sending;
            }
            if delivered_bytes >= RECV_UNACKED_LIMIT {
                break 'sending;
            }
        }
    }
    let stuck_at = seq;

    // The receiver took just over the limit, then stopped.
    eprintln!(
        "stuck after {stuck_at} packets ({} MiB), {} delivered ({delivered_bytes} bytes), {busy} busy",
        (stuck_at as usize * LEN) >> 20,
        delivered.len()
    );
    assert!(
        delivered_bytes >= RECV_UNACKED_LIMIT,
        "reader stopped early: {delivered_bytes} bytes"
    );
    // A batch closes once it reaches RECV_BATCH_BYTES, so it may hold one packet more.
    assert!(
        delivered_bytes < RECV_UNACKED_LIMIT + RECV_BATCH_BYTES + LEN,
        "reader went on past the limit: {delivered_bytes} bytes"
    );
    stays_quiet(
        &mut p.server.packets,
        "delivery while over the unacked limit",
    )
    .await;
    assert_eq!(p.server.conn.stats().unacked_bytes, delivered_bytes);
    assert!(p.client.conn.stats().queued_bytes > 0, "sender not blocked");
    assert!(matches!(
        p.client.writable.try_recv(),
        Err(TryRecvError::Empty)
    ));
    for (i, pkt) in delivered.iter().enumerate() {
        check_seq_packet(pkt, i as u64, LEN);
    }

    // Ack everything (and everything that follows): the sender becomes writable and the rest
    // arrives.
    let total = stuck_at + 128;
    let first_missing = delivered.len() as u64;
    // First as the input handler acknowledges small batches (`ack_later`): the reader stays
    // stopped while more than RECV_RESUME is unconsumed, and the acknowledgement that brings it
    // there says the reader may go on, which it does at the next run of the endpoint's tasks.
    let small_step = 1000;
    let first_step = delivered_bytes - RECV_RESUME - small_step;
    assert!(!p.server.conn.ack_later(0, first_step));
    p.server.conn.run_tasks();
    stays_quiet(&mut p.server.packets, "delivery above the resume mark").await;
    assert!(p.server.conn.ack_later(0, small_step));
    p.server.conn.run_tasks();
    let mut server = p.server;
    server.conn.ack(0, RECV_RESUME);
    let receiver = tokio::spawn(async move {
        let (got, _) = server
            .recv_packets((total - first_missing) as usize, true)
            .await;
        for (i, pkt) in got.iter().enumerate() {
            check_seq_packet(pkt, first_missing + i as u64, LEN);
        }
        server
    });
    within(&mut p.client.writable, "writable after the receiver acked").await;
    while seq < total {
        let status = send(&p.client.conn, seq);
        seq += 1;
        if status == SendStatus::Busy {
            within(&mut p.client.writable, "writable").await;
        }
    }
    let server = timeout(Duration::from_secs(20), receiver)
        .await
        .expect("rest of the data never arrived")
        .expect("receiver panicked");
    assert_eq!(server.conn.stats().packets_received, total + 1);
    assert_eq!(server.conn.stats().unacked_bytes, 0);
    assert!(p.client.closed.try_recv().is_err());
}

/// Sends 64 KiB packets until the receiver has been delivered at least the unacked limit
/// (it never acks). Returns the bytes delivered.
async fn stall_receiver(p: &mut Pair) -> usize {
    const LEN: usize = 64 * 1024;
    // Well above what one read of the reader can overshoot the limit by.
    let packets = (4 * RECV_UNACKED_LIMIT + RECV_BATCH_BYTES) / LEN + 1;
    for seq in 0..packets as u64 {
        // Busy is ignored on purpose: the queue takes the batch anyway.
        let _ = p.client.send_packets(&[&seq_packet(seq, LEN)]);
    }
    let mut delivered = 0;
    while delivered < RECV_UNACKED_LIMIT {
        delivered += within(&mut p.server.packets, "packets").await.bytes;
    }
    // The reader checks its credit before each read, so the last read may go a little over.
    while let Ok(Some(batch)) = timeout(QUIET, p.server.packets.recv()).await {
        delivered += batch.bytes;
    }
    assert!(
        delivered < packets * LEN,
        "everything delivered: the reader never stalled"
    );
    delivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_stalled_by_backpressure_still_learns_that_the_peer_closed() {
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    stall_receiver(&mut p).await;
    p.client.conn.close("bye while you were busy");
    let reason = within(&mut p.server.closed, "closed on the stalled receiver").await;
    assert!(
        reason.contains("peer") && reason.contains("busy"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stalled_receiver_ends_its_tasks() {
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    stall_receiver(&mut p).await;
    let Side {
        conn,
        mut packets,
        mut closed,
        ..
    } = p.server;
    drop(conn);
    let reason = within(&mut p.client.closed, "peer closed").await;
    assert!(reason.contains("dropped"), "{reason}");
    // The events object (and with it every sender of these channels) is released only when the
    // connection's tasks have ended.
    timeout(WAIT, async {
        while packets.recv().await.is_some() {}
        while closed.recv().await.is_some() {}
    })
    .await
    .expect("the tasks of a dropped connection never ended");
}

// ---------------------------------------------------------------------------------------------
// 5. Closing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_reported_to_the_peer_with_the_reason() {
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    p.client.conn.close("bye from the client");
    let reason = within(&mut p.server.closed, "server closed").await;
    assert!(reason.contains("peer"), "{reason}");
    assert!(reason.contains("bye from the client"), "{reason}");
    let local = within(&mut p.client.closed, "client closed").await;
    assert!(local.contains("locally"), "{local}");
    // `closed` is called once per connection.
    stays_quiet(&mut p.server.closed, "second closed").await;
    assert!(p.client.closed.try_recv().is_err());
    // Nothing can be sent any more once the writer has stopped.
    timeout(WAIT, async {
        while p
            .server
            .conn
            .send(Bytes::from_static(&[0, 0, 0, 0]), 1)
            .is_ok()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("send still accepted long after close");
}

/// Distribution ticks may come less often than the idle timeout (every net_ticktime/4): a
/// connection whose peer is alive but has nothing to say must stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_to_a_live_peer_outlives_the_idle_timeout() {
    let idle = TransportOptions {
        idle_timeout: Duration::from_millis(300),
        ..TransportOptions::default()
    };
    let mut p = pair(idle.clone(), idle).await;
    // Four idle timeouts without a packet from either side's distribution layer.
    if let Ok(reason) = timeout(Duration::from_millis(1200), p.client.closed.recv()).await {
        panic!("a quiet connection was closed: {reason:?}");
    }
    assert!(p.server.closed.try_recv().is_err());
    assert_eq!(p.client.send_packets(&[b"still here"]), SendStatus::Ready);
    let (got, _) = p.server.recv_packets(1, true).await;
    assert_eq!(got, vec![Bytes::from_static(b"still here")]);
}

/// idle_timeout 0 is QUIC's "none": no keep-alive either (an interval of 0 would ping without
/// end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_idle_timeout_a_quiet_connection_stays_quiet() {
    let none = TransportOptions {
        idle_timeout: Duration::ZERO,
        ..TransportOptions::default()
    };
    let mut p = pair(none.clone(), none).await;
    // Let the handshake's last acknowledgements settle, then count for 600 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = p.client.conn.stats().datagrams_sent + p.server.conn.stats().datagrams_sent;
    if let Ok(reason) = timeout(Duration::from_millis(600), p.client.closed.recv()).await {
        panic!("a quiet connection was closed: {reason:?}");
    }
    let after = p.client.conn.stats().datagrams_sent + p.server.conn.stats().datagrams_sent;
    assert!(
        after - before <= 4,
        "{} datagrams while quiet",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_connection_closes_it() {
    let p = pair(TransportOptions::default(), TransportOptions::default()).await;
    let Pair {
        client,
        server: mut srv,
        client_ep: _client_ep,
        server_ep: _server_ep,
        ..
    } = p;
    let Side {
        conn,
        closed: mut client_closed,
        packets: mut client_packets,
        ..
    } = client;
    drop(conn);
    let reason = within(&mut srv.closed, "server closed").await;
    assert!(reason.contains("peer"), "{reason}");
    assert!(reason.contains("dropped"), "{reason}");
    let local = within(&mut client_closed, "client closed").await;
    assert!(local.contains("locally"), "{local}");
    // The connection's tasks end, releasing the events object and its channel senders.
    timeout(WAIT, async {
        while client_packets.recv().await.is_some() {}
    })
    .await
    .expect("the tasks of a dropped connection never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_endpoint_closes_its_connections() {
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    p.server_ep.ep.close("node stopping");
    let reason = within(&mut p.client.closed, "client closed").await;
    assert!(
        reason.contains("peer") && reason.contains("node stopping"),
        "{reason}"
    );
    within(&mut p.server.closed, "server closed").await;
    // `wait_idle_blocking` blocks, so it is called off the runtime (as the NIF does).
    let ep = p.server_ep.ep.clone();
    timeout(
        WAIT,
        tokio::task::spawn_blocking(move || ep.wait_idle_blocking(WAIT)),
    )
    .await
    .expect("wait_idle_blocking did not return")
    .unwrap();
    // A closed endpoint refuses new connections.
    let err = p
        .client_ep
        .connect(p.server_ep.addr, HOST)
        .await
        .expect_err("connected to a closed endpoint");
    eprintln!("connect to closed endpoint: {err}");
}

// ---------------------------------------------------------------------------------------------
// 6, 7. Certificate checks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused_and_good_clients_still_get_in() {
    init_tracing();
    let pki = Pki::new("cluster ca");
    let rogue = Pki::new("rogue ca");
    let mut srv = server(&pki.node(&good_names()), TransportOptions::default());

    // The rogue client trusts the cluster CA (so it accepts the server) but its own certificate
    // comes from another CA.
    let rogue_ep = client(
        &rogue.node_trusting(&good_names(), &pki.ca),
        TransportOptions::default(),
    );
    match rogue_ep.connect(srv.addr, HOST).await {
        Err(e) => eprintln!("rogue connect refused: {e}"),
        Ok(conn) => {
            // TLS 1.3: the client finishes before the server has checked its certificate, so
            // the refusal shows as the connection closing.
            let mut side = start(conn);
            let _ = side.conn.send(Bytes::from_static(b"\0\0\0\x05hello"), 1);
            let reason = within(&mut side.closed, "rogue connection closed").await;
            eprintln!("rogue connection closed: {reason}");
            assert!(side.packets.try_recv().is_err());
        }
    }
    stays_quiet(&mut srv.accepted, "accepted rogue connection").await;

    // The server still accepts a good client.
    let good_ep = client(&pki.node(&good_names()), TransportOptions::default());
    let c = start(good_ep.connect(srv.addr, HOST).await.expect("good connect"));
    c.send_packets(&[b"good"]);
    let accepted = within(&mut srv.accepted, "good connection").await;
    assert_eq!(accepted.remote_address(), good_ep.local_addr().unwrap());
    let mut s = start(accepted);
    let (got, _) = s.recv_packets(1, true).await;
    assert_eq!(got, vec![Bytes::from_static(b"good")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_not_naming_the_server_is_refused() {
    init_tracing();
    let pki = Pki::new("cluster ca");
    let mut srv = server(&pki.node(&["otherhost"]), TransportOptions::default());
    let ep = client(&pki.node(&good_names()), TransportOptions::default());

    for name in [HOST, "127.0.0.1"] {
        let err = ep
            .connect(srv.addr, name)
            .await
            .expect_err("server certificate for another name accepted");
        assert!(matches!(err, TransportError::Connection(_)), "{err:?}");
        let msg = err.to_string().to_lowercase();
        assert!(msg.contains("name"), "{name}: {msg}");
    }
    stays_quiet(&mut srv.accepted, "accepted connection").await;

    // The same server is fine under the name its certificate carries.
    let c = start(ep.connect(srv.addr, "otherhost").await.expect("connect"));
    c.send_packets(&[b"ok"]);
    within(&mut srv.accepted, "connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_an_untrusted_ca_is_refused() {
    init_tracing();
    let pki = Pki::new("cluster ca");
    let rogue = Pki::new("rogue ca");
    // The rogue server trusts the cluster CA, so only the client's check can refuse it.
    let mut srv = server(
        &rogue.node_trusting(&good_names(), &pki.ca),
        TransportOptions::default(),
    );
    let ep = client(&pki.node(&good_names()), TransportOptions::default());
    let err = ep
        .connect(srv.addr, HOST)
        .await
        .expect_err("untrusted server accepted");
    assert!(matches!(err, TransportError::Connection(_)), "{err:?}");
    stays_quiet(&mut srv.accepted, "accepted connection").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Connection info

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_tls_parameters_and_peer_certificates_on_both_sides() {
    let p = pair(TransportOptions::default(), TransportOptions::default()).await;
    let ci = p.client.conn.info();
    let si = p.server.conn.info();
    for i in [&ci, &si] {
        assert_eq!(i.cipher_suite, CIPHER_SUITE);
        assert_eq!(i.tls_version, "TLSv1.3");
        assert_eq!(i.alpn.as_deref(), Some(ALPN));
        assert_eq!(i.peer_certificates.len(), 1);
    }
    assert_eq!(ci.peer_certificates[0], p.server_tls.chain[0]);
    assert_eq!(si.peer_certificates[0], p.client_tls.chain[0]);
    assert_eq!(ci.remote, p.server_ep.addr);
    assert_eq!(si.remote, p.client_ep.local_addr().unwrap());
    assert_eq!(si.server_name.as_deref(), Some(HOST));
}

// ---------------------------------------------------------------------------------------------
// 9. Data streams

/// External term format of a pid of `node` (after the 131 version byte).
fn ext_pid(node: &str, id: u32) -> Vec<u8> {
    let mut v = vec![88, 119, node.len() as u8];
    v.extend_from_slice(node.as_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v
}

/// A SEND_SENDER packet from process `from` of a@h whose message ends with `seq`, `len` bytes
/// of message in all (at least 8).
fn dist_send(from: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut p = vec![131, 68, 0, 104, 3, 97, 22];
    p.extend(ext_pid("a@h", from));
    p.extend(ext_pid("b@h", 1));
    p.resize(p.len() + len - 8, from as u8);
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// Sender and sequence number of a [`dist_send`] packet.
fn sender_and_seq(p: &[u8]) -> (u32, u64) {
    let from = u32::from_be_bytes(p[13..17].try_into().unwrap());
    let seq = u64::from_be_bytes(p[p.len() - 8..].try_into().unwrap());
    (from, seq)
}

/// A MONITOR_P_EXIT naming the dead process by its registered name: it must go ordered.
fn exit_by_name() -> Vec<u8> {
    let mut p = vec![131, 68, 0, 104, 5, 97, 21, 119, 3, b's', b'r', b'v'];
    p.extend(ext_pid("b@h", 1));
    p.extend_from_slice(&[90, 0, 1, 119, 3, b'a', b'@', b'h', 0, 0, 0, 1, 0, 0, 0, 9]);
    p.extend_from_slice(&[119, 6, b'n', b'o', b'r', b'm', b'a', b'l']);
    p
}

/// Bytes of a packet that [`send_batch`] copies before it lends the rest (the distribution
/// header: 43 bytes for [`dist_send`]).
const HEAD: usize = 64;

/// Queues `packets` as one batch, as the NIF does: the first [`HEAD`] bytes of each copied, the
/// rest of a longer one lent in two pieces (without copying).
fn send_batch(side: &Side, packets: &[Vec<u8>]) -> SendStatus {
    let mut batch = side.conn.batch();
    for p in packets {
        batch.begin_packet(p.len()).expect("frame packet");
        if p.len() > 2 * HEAD {
            let mid = HEAD + (p.len() - HEAD) / 2;
            batch.copy(&p[..HEAD]);
            batch.lend(Bytes::copy_from_slice(&p[HEAD..mid]));
            batch.lend(Bytes::copy_from_slice(&p[mid..]));
        } else {
            batch.copy(p);
        }
        batch.end_packet().expect("frame packet");
    }
    batch.submit().expect("submit").status
}

/// Lent bytes are the runtime's own binaries: refusing them would leave them in the runtime's
/// single queue for the node, ahead of every later packet. Only copies make the connection busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_copied_bytes_make_the_connection_busy() {
    const LEN: usize = 1024 * 1024;
    let mut p = data_pair(4).await;
    // The receiver never acks: after its first 512 KiB nothing more leaves the queues.
    let lent = 2 * SEND_QUEUE_HIGH_WATER / LEN;
    for seq in 0..lent as u64 {
        let status = send_batch(&p.client, &[dist_send(1, seq, LEN)]);
        assert_eq!(status, SendStatus::Ready, "lent packet {seq} made it busy");
    }
    let queued = p.client.conn.stats().queued_bytes;
    assert!(
        queued > SEND_QUEUE_HIGH_WATER,
        "only {queued} bytes queued: the test did not get above the mark"
    );
    // The same again, copied: busy before as many bytes again are queued, and not before the
    // copies held (framed, with the lent packets' copied heads) are above the mark. The
    // receiver's first 512 KiB could only have made it later.
    let mut busy_after = None;
    let mut packet_len = 0;
    for seq in 0..lent as u64 {
        let packet = dist_send(2, seq, LEN);
        packet_len = packet.len();
        let mut batch = p.client.conn.batch();
        batch.begin_packet(packet.len()).unwrap();
        batch.copy(&packet);
        batch.end_packet().unwrap();
        if batch.submit().unwrap().status == SendStatus::Busy {
            busy_after = Some(seq + 1);
            break;
        }
    }
    let busy_after = busy_after.expect("copies never made the connection busy");
    let copied =
        busy_after as usize * (FRAME_HEADER_LEN + packet_len) + lent * (FRAME_HEADER_LEN + HEAD);
    assert!(
        copied > SEND_QUEUE_HIGH_WATER,
        "busy after {busy_after} copied packets ({copied} bytes copied in all)"
    );
    stays_quiet(&mut p.client.writable, "writable while nothing drains").await;
}

/// With one stream (`streams 1`) every packet takes the control stream, in order, and no sender
/// waits on its own: lent bytes count towards the mark as well, or nothing would bound them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_stream_lent_bytes_make_the_connection_busy_too() {
    const LEN: usize = 1024 * 1024;
    let mut p = data_pair(1).await;
    // The receiver never acks: after its first 512 KiB nothing more leaves the queue.
    let mut busy_after = None;
    for seq in 0..(2 * SEND_QUEUE_HIGH_WATER / LEN) as u64 {
        if send_batch(&p.client, &[dist_send(1, seq, LEN)]) == SendStatus::Busy {
            busy_after = Some(seq + 1);
            break;
        }
    }
    let busy_after = busy_after.expect("lent packets never made a one-stream connection busy");
    assert!(
        busy_after as usize * LEN > SEND_QUEUE_HIGH_WATER,
        "busy after {busy_after} packets of {LEN} bytes"
    );
    stays_quiet(&mut p.client.writable, "writable while nothing drains").await;
    // Once the receiver takes what it got, the queue drains and the sender hears so.
    p.server.recv_packets(busy_after as usize, true).await;
    within(&mut p.client.writable, "writable after draining").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lent_and_copied_pieces_arrive_as_one_packet_on_any_number_of_streams() {
    for streams in [1, 4] {
        let mut p = data_pair(streams).await;
        let packets: Vec<Vec<u8>> = (0..40u64)
            .map(|seq| {
                dist_send(
                    1 + (seq % 3) as u32,
                    seq,
                    8 + (seq as usize * 3001) % 70_000,
                )
            })
            // Ordered packets, one of them long enough to be sent in pieces.
            .chain([exit_by_name(), [exit_by_name(), vec![7; 300]].concat()])
            .collect();
        assert_eq!(send_batch(&p.client, &packets), SendStatus::Ready);
        let (got, _) = p.server.recv_packets(packets.len(), true).await;
        let mut got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
        let mut want = packets.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{streams} stream(s)");
        // A length that does not match what is given is refused.
        let mut batch = p.client.conn.batch();
        batch.begin_packet(10).unwrap();
        batch.copy(b"short");
        assert!(matches!(
            batch.end_packet(),
            Err(FrameError::LengthMismatch {
                declared: 10,
                given: 5
            })
        ));
    }
}

/// `packet` (a [`dist_send`]) cut as the runtime fragments a message: a start fragment with
/// the header and control message, continuations with the rest, FragId counting down to 1.
fn fragments(packet: &[u8], seq: u64, cuts: &[usize]) -> Vec<Vec<u8>> {
    // From the atom cache count on, as a start fragment carries it.
    let body = &packet[2..];
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(body.len());
    let count = bounds.len() as u64 - 1;
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let kind = if i == 0 { 69 } else { 70 };
            [
                &[131, kind][..],
                &seq.to_be_bytes(),
                &(count - i as u64).to_be_bytes(),
                &body[w[0]..w[1]],
            ]
            .concat()
        })
        .collect()
}

/// The receiver joins a message's fragments into one ordinary packet (which the runtime
/// decodes without joining them again), delivered where its last fragment arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fragments_of_a_message_arrive_joined_into_one_packet() {
    for streams in [1, 4] {
        let mut p = data_pair(streams).await;
        let whole = dist_send(1, 99, 150_000);
        let frags = fragments(&whole, 7, &[65_536, 131_072]);
        assert_eq!(frags.len(), 3);
        // Another sender's message between the fragments, as the runtime may interleave them.
        let other = dist_send(2, 5, 100);
        let sent = [
            frags[0].clone(),
            other.clone(),
            frags[1].clone(),
            frags[2].clone(),
        ];
        assert_eq!(send_batch(&p.client, &sent), SendStatus::Ready);
        let (got, _) = p.server.recv_packets(2, true).await;
        let got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
        if streams == 1 {
            assert_eq!(got, vec![other.clone(), whole.clone()]);
        } else {
            let mut got = got;
            got.sort();
            let mut want = vec![other.clone(), whole.clone()];
            want.sort();
            assert_eq!(got, want);
        }
    }
}

/// A message of more than `MAX_JOINED_FRAGMENTS` fragments is copied into a buffer of the
/// owner's as they arrive and delivered whole, in a batch of its own, after what came before its
/// last fragment and before what came after; its receiver is counted with its whole size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_arrives_whole_in_a_buffer_of_the_owners() {
    for streams in [1, 4] {
        let mut p = data_pair(streams).await;
        let whole = dist_send(1, 99, 40 * 65_536);
        // As the runtime cuts: the start fragment also holds the atom cache count.
        let cuts: Vec<usize> = (1..40).map(|i| 1 + i * 65_536).collect();
        let frags = fragments(&whole, 7, &cuts);
        assert_eq!(frags.len() as u64, MAX_JOINED_FRAGMENTS + 8);
        let before = dist_send(2, 5, 100);
        let after = dist_send(1, 100, 100);
        let mut sent = vec![frags[0].clone(), before.clone()];
        sent.extend(frags[1..].iter().cloned());
        sent.push(after.clone());
        assert_eq!(send_batch(&p.client, &sent), SendStatus::Ready);
        let mut got = Vec::new();
        while got.len() < 3 {
            let batch = within(&mut p.server.packets, "packets").await;
            check_batch(&batch);
            p.server.conn.ack(batch.channel, batch.bytes);
            if let Some(joined) = &batch.joined {
                let receiver = batch.receivers.iter().map(|(_, n)| *n).sum::<usize>();
                assert_eq!(receiver, whole.len(), "the receiver's share");
                got.push(("joined", batch.channel, joined.0.as_slice().to_vec()));
            }
            for pk in &batch.packets {
                got.push(("packet", batch.channel, pk.to_bytes().to_vec()));
            }
        }
        let kinds: Vec<&str> = got.iter().map(|(k, _, _)| *k).collect();
        let bytes: Vec<&Vec<u8>> = got.iter().map(|(_, _, b)| b).collect();
        if streams == 1 {
            assert_eq!(kinds, ["packet", "joined", "packet"]);
            assert_eq!(bytes, [&before, &whole, &after]);
        } else {
            // Sender 1's packets keep their order on their stream; sender 2's may go first.
            let of_1: Vec<&Vec<u8>> = bytes.iter().copied().filter(|b| **b != before).collect();
            assert_eq!(of_1, [&whole, &after]);
            assert!(bytes.contains(&&before));
        }
    }
}

async fn data_pair(streams: usize) -> Pair {
    let p = pair(TransportOptions::default(), TransportOptions::default()).await;
    p.client.conn.start_data_streams(streams).unwrap();
    p.server.conn.open_input();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_streams_keep_each_senders_order_and_a_stalled_stream_stops_no_other() {
    let mut p = data_pair(4).await;
    // Sender 1 streams bulk first, so the others get the other streams; it sends more than the
    // receiver's credit, and the receiver never acknowledges it.
    let bulk: Vec<Vec<u8>> = (0..(RECV_UNACKED_LIMIT / 65536 + 64) as u64)
        .map(|seq| dist_send(1, seq, 65536))
        .collect();
    send_batch(&p.client, &bulk);
    const SMALL: u64 = 3000;
    for seq in 0..SMALL {
        let batch: Vec<Vec<u8>> = (2..=4).map(|from| dist_send(from, seq, 100)).collect();
        send_batch(&p.client, &batch);
    }
    let mut next = [0u64; 5];
    let mut bulk_channel = None;
    while next[2..].iter().any(|&n| n < SMALL) {
        let batch = within(&mut p.server.packets, "packets").await;
        check_batch(&batch);
        assert_ne!(batch.channel, 0, "data came on the control stream");
        for pk in &batch.packets {
            let (from, seq) = sender_and_seq(&pk.to_bytes());
            assert_eq!(seq, next[from as usize], "sender {from} out of order");
            next[from as usize] += 1;
            if from == 1 {
                assert!(!matches!(bulk_channel, Some(c) if c != batch.channel));
                bulk_channel = Some(batch.channel);
            }
        }
        if bulk_channel != Some(batch.channel) {
            p.server.conn.ack(batch.channel, batch.bytes);
        }
    }
    assert!(
        next[1] < bulk.len() as u64,
        "the stalled stream delivered everything"
    );
    assert!(p.client.conn.stats().streams == 4 && p.server.conn.stats().peer_streams == 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_packet_waits_for_what_other_streams_carried_before_it() {
    let mut p = data_pair(4).await;
    let bulk: Vec<Vec<u8>> = (0..(RECV_UNACKED_LIMIT / 65536 + 32) as u64)
        .map(|seq| dist_send(1, seq, 65536))
        .collect();
    send_batch(&p.client, &bulk);
    send_batch(&p.client, &[exit_by_name()]);
    // Take what the bulk stream delivers within its credit, without acknowledging it.
    let mut delivered = 0;
    let mut channels = Vec::new();
    while let Ok(Some(batch)) = timeout(QUIET, p.server.packets.recv()).await {
        assert!(
            batch.packets.iter().all(|pk| pk.head(7)[6] == 22),
            "the ordered packet overtook the bulk stream"
        );
        delivered += batch.packets.len();
        channels.push((batch.channel, batch.bytes));
    }
    assert!(
        delivered < bulk.len(),
        "credit did not stall the bulk stream"
    );
    for (channel, bytes) in channels {
        p.server.conn.ack(channel, bytes);
    }
    // Now everything comes, the ordered packet last.
    let mut last = Vec::new();
    while delivered < bulk.len() {
        let batch = within(&mut p.server.packets, "packets").await;
        p.server.conn.ack(batch.channel, batch.bytes);
        delivered += batch
            .packets
            .iter()
            .filter(|pk| pk.head(7)[6] == 22)
            .count();
        last = batch.packets.last().unwrap().to_bytes().to_vec();
        assert_ne!(
            last,
            exit_by_name(),
            "ordered packet before the end of the bulk"
        );
    }
    if last != exit_by_name() {
        let batch = within(&mut p.server.packets, "ordered packet").await;
        assert_eq!(
            batch.packets,
            vec![Packet::from(Bytes::from(exit_by_name()))]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_streams_are_held_until_the_owner_opens_its_input() {
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    p.client.conn.start_data_streams(2).unwrap();
    send_batch(&p.client, &[dist_send(7, 0, 50)]);
    stays_quiet(&mut p.server.packets, "data before open_input").await;
    // The control stream is delivered meanwhile (the handshake's last message travels there).
    p.client.send_packets(&[b"handshake"]);
    let (got, _) = p.server.recv_packets(1, true).await;
    assert_eq!(got, vec![Bytes::from_static(b"handshake")]);
    p.server.conn.open_input();
    let (got, _) = p.server.recv_packets(1, true).await;
    assert_eq!(sender_and_seq(&got[0]), (7, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_behind_data_the_peer_never_takes_still_closes_within_the_limit() {
    // One stream: the shutdown itself is queued behind the data.
    let mut p = pair(TransportOptions::default(), TransportOptions::default()).await;
    // 32 MiB the server never acknowledges: most of it stays queued on the client.
    let packets: Vec<Vec<u8>> = (0..512).map(|seq| dist_send(1, seq, 65536)).collect();
    send_batch(&p.client, &packets);
    assert!(
        p.client.conn.stats().queued_bytes > 0,
        "nothing left queued"
    );
    let started = std::time::Instant::now();
    p.client.conn.shutdown("giving up");
    let reason = timeout(
        quic_dist_transport::connection::SHUTDOWN_LIMIT + Duration::from_secs(3),
        p.server.closed.recv(),
    )
    .await
    .expect("the connection stayed open past the shutdown limit")
    .expect("closed channel");
    assert!(reason.contains("giving up"), "{reason}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before any grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_are_admitted_with_the_identity_set_while_they_waited() {
    init_tracing();
    let old = Pki::new("old cluster ca");
    let new = Pki::new("new cluster ca");
    let mut srv = server(&old.node(&good_names()), TransportOptions::default());
    let (held_tx, mut held) = mpsc::unbounded_channel();
    srv.ep.hold_incoming(move || {
        let _ = held_tx.send(());
    });

    // A client of the new cluster: refused by the old identity, so it may only get in once the
    // server has taken the new one.
    let new_client = client(&new.node(&good_names()), TransportOptions::default());
    let addr = srv.addr;
    let connecting = tokio::spawn(async move { new_client.connect(addr, HOST).await });
    within(&mut held, "connection held").await;
    assert!(!connecting.is_finished(), "a held connection went on");
    srv.ep
        .set_tls(&new.node(&good_names()))
        .expect("new identity");
    srv.ep.admit_held();
    let conn = timeout(WAIT, connecting)
        .await
        .expect("connect in time")
        .expect("task")
        .expect("admitted with the new identity");
    let c = start(conn);
    c.send_packets(&[b"new"]);
    let mut s = start(within(&mut srv.accepted, "accepted connection").await);
    assert_eq!(
        s.recv_packets(1, true).await.0,
        vec![Bytes::from_static(b"new")]
    );

    // The old cluster is now refused, in both directions.
    let old_client = client(&old.node(&good_names()), TransportOptions::default());
    let connecting = tokio::spawn(async move { old_client.connect(addr, HOST).await });
    within(&mut held, "second connection held").await;
    srv.ep.admit_held();
    assert!(
        timeout(WAIT, connecting)
            .await
            .expect("in time")
            .expect("task")
            .is_err(),
        "the old identity's client got in"
    );
    stays_quiet(&mut srv.accepted, "accepted old-identity connection").await;
    let old_srv = server(&old.node(&good_names()), TransportOptions::default());
    assert!(srv.ep.connect(old_srv.addr, HOST).await.is_err());
    let new_srv = server(&new.node(&good_names()), TransportOptions::default());
    srv.ep
        .connect(new_srv.addr, HOST)
        .await
        .expect("outgoing connection with the new identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_use_another_identity_than_its_endpoints() {
    init_tracing();
    let own = Pki::new("own cluster ca");
    let other = Pki::new("other cluster ca");
    let ep = client(&own.node(&good_names()), TransportOptions::default());
    let mut srv = server(&other.node(&good_names()), TransportOptions::default());

    // The endpoint's own identity is refused there; one of the other cluster gets in.
    assert!(ep.connect(srv.addr, HOST).await.is_err());
    let clients = ep
        .client_configs(&other.node(&good_names()))
        .expect("client configurations");
    let (tx, mut rx) = mpsc::unbounded_channel();
    ep.spawn_connect_as(srv.addr, HOST.to_string(), Some(&clients), move |r| {
        let _ = tx.send(r);
    });
    let c = start(
        within(&mut rx, "connect")
            .await
            .expect("connect as the other cluster"),
    );
    c.send_packets(&[b"as other"]);
    let mut s = start(within(&mut srv.accepted, "accepted connection").await);
    assert_eq!(
        s.recv_packets(1, true).await.0,
        vec![Bytes::from_static(b"as other")]
    );

    // The endpoint's own identity is unchanged.
    let own_srv = server(&own.node(&good_names()), TransportOptions::default());
    ep.connect(own_srv.addr, HOST)
        .await
        .expect("connect with the endpoint's own identity");
}
