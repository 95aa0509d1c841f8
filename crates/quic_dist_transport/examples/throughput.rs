//! throughput: bulk transfer over loopback through `DistEndpoint`/`DistConnection`, one way,
//! both endpoints in this process, and the counters that explain the rate.
//!
//! ```text
//! cargo run --release -p quic_dist_transport --example throughput -- [MIB [PACKET_KIB [RUNS]]]
//! ```
//!
//! Moves `MIB` MiB (default 1024) in distribution packets of `PACKET_KIB` KiB (default 1024) from
//! a client to a server and prints, per run: MB/s, UDP datagrams sent by the sender, average bytes
//! per datagram, QUIC packets declared lost (and per GB), the path MTU reached (largest datagram
//! seen by the MTU discovery trace), and process CPU seconds per GB.
//!
//! Environment (to compare settings without rebuilding; unset means the crate's defaults):
//! `QD_MTU_UPPER` (discovery bound towards non-loopback peers), `QD_MAX_UDP_PAYLOAD` (announced
//! limit and loopback bound), `QD_INITIAL_MTU`, `QD_MTU_DISCOVERY=0` (discovery off), `QD_GSO=0|1`
//! (segmentation offload), `QD_THREADS` (tokio workers, default 2), `QD_RAW=1` (plain quinn with
//! the same settings and socket set-up instead of `DistConnection`, printing quinn's own path
//! counters: current MTU, black holes detected).
//! Across network namespaces: `QD_ROLE=server` (with `QD_BIND`, `QD_PORT`) on one side,
//! `QD_ROLE=client` with `QD_CONNECT=ADDR:PORT` on the other, both with the same `QD_CA_DIR`
//! (the first to start writes a CA there).
//!
//! Kernel drop counters are system-wide (`/proc/net/snmp`, `/proc/net/softnet_stat`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quic_dist_transport::certs::{generate_ca, Validity};
use quic_dist_transport::{
    ConnectionEvents, ConnectionStats, DistConnection, DistEndpoint, PacketBatch, SendStatus,
    TransportOptions,
};
use tokio::sync::{mpsc, Notify};

mod support;
use support::loopback_tls;

/// Largest MTU that quinn's discovery reported ("new MTU detected" trace events).
static MTU_SEEN: AtomicU64 = AtomicU64::new(0);

/// Records the MTU discovery's trace events, nothing else (cheap: other call sites are disabled).
struct MtuWatch;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MtuWatch {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.target().starts_with("quinn_proto::connection::mtud")
            || *meta.level() <= tracing::Level::WARN
        {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        meta.target().starts_with("quinn_proto::connection::mtud")
            || *meta.level() <= tracing::Level::WARN
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Mtu(Option<u64>);
        impl tracing::field::Visit for Mtu {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "current_mtu" {
                    self.0 = Some(value);
                }
            }
            fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                if field.name() == "current_mtu" {
                    self.0 = u64::try_from(value).ok();
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut v = Mtu(None);
        event.record(&mut v);
        match v.0 {
            Some(mtu) => {
                MTU_SEEN.fetch_max(mtu, Relaxed);
            }
            None => {
                if *event.metadata().level() <= tracing::Level::WARN {
                    eprintln!("{:?}", event);
                }
            }
        }
    }
}

struct Events {
    packets: mpsc::UnboundedSender<PacketBatch>,
    writable: Notify,
    closed: mpsc::UnboundedSender<String>,
}

impl ConnectionEvents for Events {
    fn packets(&self, batch: PacketBatch) {
        let _ = self.packets.send(batch);
    }
    fn closed(&self, reason: String) {
        let _ = self.closed.send(reason);
    }
    fn writable(&self) {
        self.writable.notify_one();
    }
}

struct Side {
    conn: DistConnection,
    events: Arc<Events>,
    packets: mpsc::UnboundedReceiver<PacketBatch>,
    _closed: mpsc::UnboundedReceiver<String>,
}

fn start(conn: DistConnection) -> Side {
    let (ptx, packets) = mpsc::unbounded_channel();
    let (ctx, closed) = mpsc::unbounded_channel();
    let events = Arc::new(Events {
        packets: ptx,
        writable: Notify::new(),
        closed: ctx,
    });
    conn.start(events.clone()).expect("start connection");
    Side {
        conn,
        events,
        packets,
        _closed: closed,
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Kernel drop counters: UDP receive-buffer errors, send-buffer errors, backlog drops.
fn kernel_drops() -> [u64; 3] {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut out = [0u64; 3];
    if udp.len() >= 2 {
        let names: Vec<&str> = udp[0].split_whitespace().collect();
        let vals: Vec<&str> = udp[1].split_whitespace().collect();
        for (n, v) in names.iter().zip(vals.iter()) {
            match *n {
                "RcvbufErrors" => out[0] = v.parse().unwrap_or(0),
                "SndbufErrors" => out[1] = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    out[2] = softnet
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|h| u64::from_str_radix(h, 16).ok())
        .sum();
    out
}

fn drops_since(before: [u64; 3]) -> String {
    let now = kernel_drops();
    format!(
        "kernel drops: rcvbuf {} sndbuf {} backlog {}",
        now[0] - before[0],
        now[1] - before[1],
        now[2] - before[2]
    )
}

/// Raw quinn with the same transport/endpoint settings and socket set-up: one stream, writes of
/// `packet` bytes, nothing of `DistConnection`. Prints quinn's own path counters.
async fn raw(
    ca: &quic_dist_transport::certs::PemPair,
    opts: &TransportOptions,
    total: u64,
    packet: usize,
    runs: u64,
) {
    // As `DistEndpoint` does for loopback peers.
    let opts = &opts.for_loopback();
    let bind = |addr: SocketAddr| {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).unwrap();
        let _ = s.set_recv_buffer_size(opts.socket_buffer);
        let _ = s.set_send_buffer_size(opts.socket_buffer);
        s.bind(&addr.into()).unwrap();
        std::net::UdpSocket::from(s)
    };
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let server_ep = quinn::Endpoint::new(
        opts.quinn_endpoint(),
        Some(loopback_tls(ca).server_config(opts).unwrap()),
        bind(lo),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut client_ep = quinn::Endpoint::new(
        opts.quinn_endpoint(),
        None,
        bind(lo),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    client_ep.set_default_client_config(loopback_tls(ca).client_config(opts).unwrap());
    let addr = server_ep.local_addr().unwrap();
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let server = tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().await.unwrap();
        let (_s, mut r) = conn.accept_bi().await.unwrap();
        let mut got = 0u64;
        while let Some(c) = r.read_chunk(usize::MAX, true).await.unwrap() {
            got += c.bytes.len() as u64;
            let _ = progress_tx.send(got);
        }
        (got, conn)
    });
    let conn = client_ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut s, _r) = conn.open_bi().await.unwrap();
    let chunk = Bytes::from(vec![0x5au8; packet]);
    for run in 1..=runs {
        let before = conn.stats();
        let drops = kernel_drops();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            s.write_chunk(chunk.clone()).await.unwrap();
            sent += packet as u64;
        }
        // Until the server has read everything.
        progress.wait_for(|got| *got >= total * run).await.unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let st = conn.stats();
        let dgrams = st.udp_tx.datagrams - before.udp_tx.datagrams;
        let gb = total as f64 / 1e9;
        println!(
            "raw run {run}: {:.0} MB/s, {dgrams} datagrams, {} B/datagram, lost {} ({:.0}/GB), current mtu {}, black holes {}, cpu {:.2} s/GB, {}",
            total as f64 / secs / 1e6,
            (st.udp_tx.bytes - before.udp_tx.bytes) / dgrams.max(1),
            st.path.lost_packets - before.path.lost_packets,
            (st.path.lost_packets - before.path.lost_packets) as f64 / gb,
            st.path.current_mtu,
            st.path.black_holes_detected,
            cpu / gb,
            drops_since(drops)
        );
    }
    s.finish().unwrap();
    let (got, _sconn) = server.await.unwrap();
    assert_eq!(got, total * runs);
    conn.close(0u32.into(), b"done");
}

fn env_u16(name: &str) -> Option<u16> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn options() -> TransportOptions {
    let mut o = TransportOptions::default();
    if let Some(v) = env_u16("QD_MAX_UDP_PAYLOAD") {
        o.max_udp_payload = v;
    }
    if let Some(v) = env_u16("QD_MTU_UPPER") {
        o.mtu_upper_bound = v;
    }
    if env_u16("QD_MTU_DISCOVERY") == Some(0) {
        o.mtu_discovery = false;
    }
    if let Some(v) = env_u16("QD_INITIAL_MTU") {
        o.initial_mtu = v;
    }
    if let Some(v) = env_u16("QD_GSO") {
        o.segmentation_offload = v != 0;
    }
    o
}

fn print_stats(label: &str, s: &ConnectionStats) {
    println!(
        "  {label}: datagrams sent {} ({} B avg), received {} ({} B avg), quic packets sent {}, lost {}, cwnd {}, rtt {:?}",
        s.datagrams_sent,
        s.udp_bytes_sent / s.datagrams_sent.max(1),
        s.datagrams_received,
        s.udp_bytes_received / s.datagrams_received.max(1),
        s.quic_packets_sent,
        s.lost_packets,
        s.cwnd,
        s.rtt
    );
}

/// Sends `total` bytes in packets of `packet` bytes; returns when they are all queued.
async fn send_all(client: &Side, total: u64, packet: usize) {
    let enc = client.conn.encoder();
    let payload = vec![0x5au8; packet];
    let mut buf = BytesMut::new();
    enc.encode_packet(&[&payload], &mut buf).expect("encode");
    let framed: Bytes = buf.freeze();
    let mut sent = 0u64;
    while sent < total {
        match client.conn.send(framed.clone(), 1).expect("send") {
            SendStatus::Ready => {}
            SendStatus::Busy => {
                tokio::time::timeout(Duration::from_secs(30), client.events.writable.notified())
                    .await
                    .expect("writable in time");
            }
        }
        sent += packet as u64;
    }
}

async fn receive_all(server: &mut Side, total: u64) {
    let mut got = 0u64;
    while got < total {
        let batch = tokio::time::timeout(Duration::from_secs(30), server.packets.recv())
            .await
            .expect("packets in time")
            .expect("connection alive");
        server.conn.ack(batch.channel, batch.bytes);
        got += batch.bytes as u64;
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let mib = args.first().copied().unwrap_or(1024);
    let packet = args.get(1).copied().unwrap_or(1024) as usize * 1024;
    let runs = args.get(2).copied().unwrap_or(1);
    let total = mib * 1024 * 1024;

    use tracing_subscriber::layer::SubscriberExt;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(MtuWatch))
        .expect("subscriber");

    let threads = std::env::var("QD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let bind: std::net::IpAddr = std::env::var("QD_BIND")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()
        .expect("QD_BIND");
    let role = std::env::var("QD_ROLE").unwrap_or_default();
    let opts = options();
    println!(
        "{mib} MiB in {} KiB packets, {threads} workers, options: initial_mtu {} max_udp_payload {}, discovery up to {:?} (loopback {:?}), gso {}",
        packet / 1024,
        opts.initial_mtu,
        opts.max_udp_payload,
        opts.mtu_discovery_upper_bound(),
        opts.for_loopback().mtu_discovery_upper_bound(),
        opts.segmentation_offload
    );
    // Both sides of a run across namespaces need the same CA: derive it from a fixed file if given.
    let ca = match std::env::var("QD_CA_DIR") {
        Ok(dir) => {
            let cert = format!("{dir}/ca.pem");
            let key = format!("{dir}/ca.key");
            if let (Ok(c), Ok(k)) = (
                std::fs::read_to_string(&cert),
                std::fs::read_to_string(&key),
            ) {
                quic_dist_transport::certs::PemPair {
                    cert_pem: c,
                    key_pem: k,
                }
            } else {
                let ca = generate_ca("throughput ca", Validity::days_from_now(1)).expect("ca");
                std::fs::write(&cert, &ca.cert_pem).expect("write ca");
                std::fs::write(&key, &ca.key_pem).expect("write ca key");
                ca
            }
        }
        Err(_) => generate_ca("throughput ca", Validity::days_from_now(1)).expect("ca"),
    };

    if std::env::var("QD_RAW").is_ok() {
        rt.block_on(raw(&ca, &opts, total, packet, runs));
        return;
    }
    rt.block_on(async move {
        let port: u16 = std::env::var("QD_PORT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut accepted = None;
        let mut server_addr = SocketAddr::new(bind, port);
        let mut _server_ep = None;
        if role != "client" {
            let ep = DistEndpoint::bind(
                SocketAddr::new(bind, port),
                &loopback_tls(&ca),
                true,
                opts.clone(),
            )
            .expect("bind server");
            watch(&ep);
            server_addr = ep.local_addr().expect("addr");
            let (tx, rx) = mpsc::unbounded_channel();
            ep.accept_loop(move |c| {
                let _ = tx.send(c);
            });
            accepted = Some(rx);
            _server_ep = Some(ep);
        }
        if let Ok(a) = std::env::var("QD_CONNECT") {
            server_addr = a.parse().expect("QD_CONNECT");
        }
        if role == "server" {
            let mut rx = accepted.expect("server");
            println!("server listening on {server_addr}");
            let conn = rx.recv().await.expect("accepted");
            let mut server = start(conn);
            for run in 0..runs {
                receive_all(&mut server, total + if run == 0 { 5 } else { 0 }).await;
                print_stats("server", &server.conn.stats());
                // Tell the client that everything arrived.
                let mut b = BytesMut::new();
                server
                    .conn
                    .encoder()
                    .encode_packet(&[b"done"], &mut b)
                    .expect("encode");
                server.conn.send(b.freeze(), 1).expect("done");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        let client_ep = DistEndpoint::bind(
            SocketAddr::new(bind, 0),
            &loopback_tls(&ca),
            false,
            opts.clone(),
        )
        .expect("bind client");
        watch(&client_ep);
        let conn = client_ep
            .connect(server_addr, "localhost")
            .await
            .expect("connect");
        let mut client = start(conn);
        // A peer sees the stream once data flows on it.
        {
            let enc = client.conn.encoder();
            let mut b = BytesMut::new();
            enc.encode_packet(&[b"hello"], &mut b).expect("encode");
            client.conn.send(b.freeze(), 1).expect("hello");
        }
        let mut server = match accepted {
            Some(mut rx) => {
                let mut s = start(rx.recv().await.expect("accepted"));
                receive_all(&mut s, 5).await;
                Some(s)
            }
            None => None,
        };
        for run in 1..=runs {
            let before = client.conn.stats();
            let drops = kernel_drops();
            let cpu0 = cpu_seconds();
            let t0 = Instant::now();
            match server.as_mut() {
                Some(server) => {
                    tokio::join!(send_all(&client, total, packet), receive_all(server, total));
                }
                None => {
                    send_all(&client, total, packet).await;
                    // Until the server says it has everything.
                    let done = tokio::time::timeout(Duration::from_secs(60), client.packets.recv())
                        .await
                        .expect("server's done in time")
                        .expect("connection alive");
                    client.conn.ack(done.channel, done.bytes);
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu0;
            let after = client.conn.stats();
            let dgrams = after.datagrams_sent - before.datagrams_sent;
            let bytes = after.udp_bytes_sent - before.udp_bytes_sent;
            let lost = after.lost_packets - before.lost_packets;
            let gb = total as f64 / 1e9;
            println!(
                "run {run}: {:.0} MB/s, {dgrams} datagrams, {} B/datagram, lost {lost} ({:.0}/GB), mtu seen {}, cpu {:.2} s/GB, {}",
                total as f64 / secs / 1e6,
                bytes / dgrams.max(1),
                lost as f64 / gb,
                MTU_SEEN.load(Relaxed),
                cpu / gb,
                drops_since(drops)
            );
        }
        print_stats("client", &client.conn.stats());
        if let Some(s) = &server {
            print_stats("server", &s.conn.stats());
        }
        client.conn.close("done");
    });
}

/// Reads the endpoint's socket whenever it is readable (the carrier's receiver process does
/// this on `enif_select` messages).
fn watch(ep: &DistEndpoint) {
    let ep = ep.clone();
    let socket = tokio::net::UdpSocket::from_std(ep.socket_handle().expect("socket handle"))
        .expect("tokio socket");
    tokio::spawn(async move {
        while socket.readable().await.is_ok() {
            let _ = socket.try_io(tokio::io::Interest::READABLE, || {
                ep.receive()?;
                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
            });
        }
    });
}
