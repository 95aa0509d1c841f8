//! `direct`: QUIC driven by its users' threads, over real UDP sockets on loopback. Each endpoint
//! has a watcher thread that waits for its socket to be readable (as `enif_select` will for the
//! carrier) and calls `receive`; the test's own thread writes and reads streams.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quic_dist_transport::certs::{generate_ca, generate_node, Validity};
use quic_dist_transport::config::LOOPBACK_UDP_PAYLOAD;
use quic_dist_transport::direct::{
    compat, Connection, Endpoint, NO_QUIC_AT_PEER, PEER_GONE, SMALL_WRITE_RESERVE,
};
use quic_dist_transport::{TlsMaterial, TransportOptions};
use quinn_proto::{Dir, StreamId};

/// Counts receives, so that a test thread can wait for the next one.
#[derive(Default)]
struct Activity {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Activity {
    fn bump(&self) {
        *self.generation.lock().unwrap() += 1;
        self.changed.notify_all();
    }

    fn current(&self) -> u64 {
        *self.generation.lock().unwrap()
    }

    /// Waits until a receive after `seen` (or a short timeout: the timer thread may have done
    /// the work instead).
    fn wait_after(&self, seen: u64) {
        let g = self.generation.lock().unwrap();
        let _ = self
            .changed
            .wait_timeout_while(g, Duration::from_millis(5), |g| *g == seen)
            .unwrap();
    }
}

/// Calls `receive` whenever the endpoint's socket is readable, until the test ends; while
/// `paused`, receives nothing (and says so once, in `parked`).
fn watch(ep: Endpoint, activity: Arc<Activity>, paused: Arc<AtomicBool>, parked: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(ep.socket_handle().unwrap()).unwrap();
            loop {
                if paused.load(SeqCst) {
                    if !parked.swap(true, SeqCst) {
                        activity.bump();
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                parked.store(false, SeqCst);
                // `enif_select` also wakes for an error report alone (an ICMP report on the
                // socket's error queue); `readable` does not: a receive every 10 ms stands in.
                match tokio::time::timeout(Duration::from_millis(10), socket.readable()).await {
                    Ok(Err(_)) => return,
                    Ok(Ok(())) => {}
                    Err(_) => {
                        let _ = ep.receive();
                        activity.bump();
                        continue;
                    }
                }
                // Everything waiting is taken; the next readiness is a new datagram.
                let _ = socket.try_io(tokio::io::Interest::READABLE, || {
                    ep.receive()?;
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
                activity.bump();
            }
        });
    });
}

struct Side {
    ep: Endpoint,
    activity: Arc<Activity>,
    paused: Arc<AtomicBool>,
    parked: Arc<AtomicBool>,
}

impl Side {
    /// Stops receiving (the peer's datagrams wait in the socket, unacknowledged) until
    /// [`resume`](Self::resume); returns once the watcher has stopped.
    fn pause(&self) {
        self.paused.store(true, SeqCst);
        wait_for(&self.activity, "the watcher to stop", || {
            self.parked.load(SeqCst).then_some(())
        });
    }

    fn resume(&self) {
        self.paused.store(false, SeqCst);
    }
}

fn tls() -> TlsMaterial {
    let ca = generate_ca("direct test ca", Validity::days_from_now(1)).unwrap();
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let node = generate_node(&ca, "node@localhost", &names, Validity::days_from_now(1)).unwrap();
    TlsMaterial::from_pem(
        node.cert_pem.as_bytes(),
        node.key_pem.as_bytes(),
        ca.cert_pem.as_bytes(),
    )
    .unwrap()
}

fn side(server: Option<quinn_proto::ServerConfig>, opts: &TransportOptions) -> Side {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ep = Endpoint::new(socket, opts.quinn_endpoint(), server).unwrap();
    let activity = Arc::new(Activity::default());
    let paused = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicBool::new(false));
    watch(ep.clone(), activity.clone(), paused.clone(), parked.clone());
    Side {
        ep,
        activity,
        paused,
        parked,
    }
}

/// Waits (bounded) until `cond` holds, looking after each receive.
fn wait_for<T>(activity: &Activity, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = activity.current();
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        activity.wait_after(seen);
    }
}

fn connected_pair(opts: &TransportOptions) -> (Side, Arc<Connection>, Side, Arc<Connection>) {
    let tls = tls();
    let server = side(Some(tls.server_config(opts).unwrap()), opts);
    let client = side(None, opts);
    let addr: SocketAddr = server.ep.local_addr().unwrap();
    let c = client
        .ep
        .connect(tls.client_config(opts).unwrap(), addr, "localhost")
        .unwrap();
    wait_for(&client.activity, "the handshake", || {
        c.is_connected().then_some(())
    });
    let s = wait_for(&server.activity, "the accepted connection", || {
        server.ep.accept()
    });
    (client, c, server, s)
}

/// Reads everything available on `id` into `out`; true once the stream has ended.
fn read_available(conn: &Arc<Connection>, id: StreamId, out: &mut Vec<u8>) -> bool {
    conn.with(|c| {
        let mut stream = c.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            return false;
        };
        let mut finished = false;
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => out.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = chunks.finalize();
        finished
    })
}

#[test]
fn handshake_and_echo_over_one_stream() {
    let opts = TransportOptions::default().for_loopback();
    let (client, c, server, s) = connected_pair(&opts);
    let id = c.with(|c| c.streams().open(Dir::Bi)).expect("stream");
    for round in 0..200u32 {
        let msg = round.to_be_bytes();
        let n = c.with(|c| c.send_stream(id).write(&msg)).unwrap();
        assert_eq!(n, 4);
        // The server accepts the stream once, then echoes what it reads.
        let mut got = Vec::new();
        wait_for(&server.activity, "the message at the server", || {
            let sid = s.with(|c| c.streams().accept(Dir::Bi)).or(Some(id))?;
            read_available(&s, sid, &mut got);
            (got.len() >= 4).then_some(())
        });
        assert_eq!(got, msg);
        s.with(|c| c.send_stream(id).write(&got)).unwrap();
        let mut back = Vec::new();
        wait_for(&client.activity, "the echo", || {
            read_available(&c, id, &mut back);
            (back.len() >= 4).then_some(())
        });
        assert_eq!(back, msg);
    }
}

#[test]
fn a_transfer_larger_than_the_windows_arrives_whole_and_in_order() {
    let opts = TransportOptions {
        stream_window: 256 * 1024,
        connection_window: 512 * 1024,
        ..TransportOptions::default()
    }
    .for_loopback();
    let (client, c, server, s) = connected_pair(&opts);
    let id = c.with(|c| c.streams().open(Dir::Uni)).expect("stream");
    let total = 8 * 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::with_capacity(total);
    let mut sid = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < total {
        assert!(
            Instant::now() < deadline,
            "transfer stalled at {} bytes",
            got.len()
        );
        let seen = (client.activity.current(), server.activity.current());
        if sent < total {
            sent += c
                .with(|c| c.send_stream(id).write(&data[sent..]))
                .unwrap_or(0);
            if sent == total {
                c.with(|c| c.send_stream(id).finish()).unwrap();
            }
        }
        if sid.is_none() {
            sid = s.with(|c| c.streams().accept(Dir::Uni));
        }
        if let Some(sid) = sid {
            read_available(&s, sid, &mut got);
        }
        // Flow control: the receiver's reads open the window; wait for either side to move.
        if seen == (client.activity.current(), server.activity.current()) {
            server.activity.wait_after(seen.1);
        }
    }
    assert_eq!(got.len(), total);
    assert!(got == data, "bytes differ");
    assert!(s.lost().is_none(), "connection lost: {:?}", s.lost());
}

#[test]
fn tasks_on_the_inline_executor_echo_over_async_streams() {
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, _server, s) = connected_pair(&opts);
    let (tx, rx) = std::sync::mpsc::channel();
    let server_conn = s.clone();
    s.spawn(async move {
        let id = server_conn.accept(Dir::Bi).await.expect("accept");
        while let Ok(Some(chunk)) = server_conn.read_chunk(id, usize::MAX).await {
            server_conn
                .write_all_chunks(id, &mut [chunk])
                .await
                .expect("echo");
        }
    });
    let client_conn = c.clone();
    c.spawn(async move {
        let id = client_conn.open(Dir::Bi).await.expect("open");
        for round in 0..100u32 {
            let msg = bytes::Bytes::copy_from_slice(&round.to_be_bytes());
            client_conn
                .write_all_chunks(id, &mut [msg.clone()])
                .await
                .expect("write");
            let mut got = Vec::new();
            while got.len() < 4 {
                let chunk = client_conn
                    .read_chunk(id, 4 - got.len())
                    .await
                    .expect("read")
                    .expect("not finished");
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, msg);
        }
        client_conn.finish(id).expect("finish");
        tx.send(()).unwrap();
    });
    // Start both tasks; from then on the watcher threads' receives run them.
    c.run_tasks();
    s.run_tasks();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("100 round trips through tasks on the inline executor");
}

#[test]
fn a_task_polled_again_and_again_without_events_waits_once() {
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, _server, _s) = connected_pair(&opts);
    let polls = Arc::new(Mutex::new(0usize));
    let counted = polls.clone();
    let conn = c.clone();
    // Waits for a stream the peer never opens, and wakes itself 100 times meanwhile, as a
    // writer woken by its queue would, with no event from the connection in between.
    c.spawn(async move {
        let mut accept = std::pin::pin!(conn.accept(Dir::Uni));
        std::future::poll_fn(|cx| {
            let mut n = counted.lock().unwrap();
            *n += 1;
            if accept.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
            if *n < 100 {
                cx.waker().wake_by_ref();
            }
            std::task::Poll::Pending
        })
        .await
    });
    c.run_tasks();
    assert_eq!(*polls.lock().unwrap(), 100);
    assert_eq!(c.waiting_tasks(), 1);
}

#[test]
fn connections_opened_while_others_drain_all_complete_their_handshake() {
    // quinn-proto hands a drained connection's handle to the next connection at once. Two
    // distribution nodes that reconnect often (simultaneous connects, disconnects) open new
    // connections on one thread while the timer thread drains closed ones: the new one must
    // still get its datagrams (it once lost them when the drained connection's table entry
    // was removed after the handle had been handed out again, and its handshake stalled).
    let opts = TransportOptions::default().for_loopback();
    let tls = tls();
    let server = side(Some(tls.server_config(&opts).unwrap()), &opts);
    let addr: SocketAddr = server.ep.local_addr().unwrap();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let client = side(None, &opts);
            let config = tls.client_config(&opts).unwrap();
            let server_ep = server.ep.clone();
            std::thread::spawn(move || {
                for round in 0..2000 {
                    let c = client
                        .ep
                        .connect(config.clone(), addr, "localhost")
                        .unwrap();
                    wait_for(&client.activity, &format!("handshake {round}"), || {
                        c.is_connected().then_some(())
                    });
                    // Closing at once leaves the connection draining (on the timer thread)
                    // while the next one starts.
                    c.close(0u32.into(), b"next round");
                    while let Some(s) = server_ep.accept() {
                        s.close(0u32.into(), b"next round");
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("every connection completed its handshake");
    }
}

#[test]
fn a_stream_read_in_batches_ends_once_its_last_chunks_and_its_end_came_together() {
    // read_chunks takes what is there after the first chunk; when that includes the end of the
    // stream, quinn-proto forgets the stream, so the end must be remembered and returned by the
    // next call (a read would fail with "closed stream", which the carrier took for a broken
    // peer and closed the connection in the middle of a graceful shutdown).
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, _server, s) = connected_pair(&opts);
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let writer = compat::Connection::from(c.clone());
    c.spawn(async move {
        let mut send = writer.open_uni().await.expect("open");
        send.write_all(&[7u8; 20_000]).await.expect("write");
        send.finish().expect("finish");
        // Acknowledged: the data and the end are all at the server, unread.
        send.stopped().await.expect("stopped");
        sent_tx.send(()).unwrap();
    });
    c.run_tasks();
    sent_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream is acknowledged");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = compat::Connection::from(s.clone());
    s.spawn(async move {
        let mut recv = reader.accept_uni().await.expect("accept");
        let mut bufs = vec![bytes::Bytes::new(); 32];
        let mut got = 0;
        let result = loop {
            match recv.read_chunks(&mut bufs).await {
                Ok(Some(n)) => got += bufs[..n].iter().map(|b| b.len()).sum::<usize>(),
                Ok(None) => break Ok(got),
                Err(e) => break Err(e.to_string()),
            }
        };
        tx.send(result).unwrap();
    });
    s.run_tasks();
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the reader ends");
    assert_eq!(result, Ok(20_000));
}

#[test]
fn what_the_peer_sent_before_closing_is_still_read_after_the_close() {
    // The peer's last packets (a `nok` handshake status, the final messages of a graceful
    // shutdown) are acknowledged by QUIC before the reader task runs; the peer may then close
    // at once. As with quinn, and TCP's data before a close, they must still be read.
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, server, s) = connected_pair(&opts);
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let writer = compat::Connection::from(c.clone());
    c.spawn(async move {
        let mut send = writer.open_uni().await.expect("open");
        send.write_all(b"the last words").await.expect("write");
        send.finish().expect("finish");
        send.stopped().await.expect("acknowledged");
        writer.close(0u32.into(), b"done");
        sent_tx.send(()).unwrap();
    });
    c.run_tasks();
    sent_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stream is acknowledged and the connection closed");
    wait_for(&server.activity, "the close at the server", || s.lost());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = compat::Connection::from(s.clone());
    s.spawn(async move {
        let result = async {
            let mut recv = reader.accept_uni().await?;
            let mut bufs = vec![bytes::Bytes::new(); 8];
            let mut got = Vec::new();
            while let Some(n) = recv.read_chunks(&mut bufs).await? {
                bufs[..n].iter().for_each(|b| got.extend_from_slice(b));
            }
            Ok::<_, quic_dist_transport::direct::StreamError>(got)
        }
        .await;
        tx.send(result.map_err(|e| e.to_string())).unwrap();
    });
    s.run_tasks();
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the reader ends");
    assert_eq!(result, Ok(b"the last words".to_vec()));
}

/// Forwards datagrams between one client and `server` from a port of its own, until stopped:
/// stopping it closes that port, as a node's death closes its own. Datagrams larger than
/// `drop_above` (0: none) are dropped, as a path with a smaller MTU would.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    drop_above: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Relay {
    fn start(server: SocketAddr) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), server)
    }

    fn start_on(bind: SocketAddr, server: SocketAddr) -> Self {
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let drop_above = Arc::new(AtomicUsize::new(0));
        let limit = drop_above.clone();
        let thread = std::thread::spawn(move || {
            let mut client = None;
            let mut buf = vec![0u8; 65536];
            while !stopped.load(SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let max = limit.load(SeqCst);
                if max != 0 && n > max {
                    continue;
                }
                if from == server {
                    if let Some(c) = client {
                        let _ = socket.send_to(&buf[..n], c);
                    }
                } else {
                    client = Some(from);
                    let _ = socket.send_to(&buf[..n], server);
                }
            }
        });
        Self {
            addr,
            stop,
            drop_above,
            thread,
        }
    }

    /// Stops forwarding and closes the port; returns its address.
    fn stop(self) -> SocketAddr {
        self.stop.store(true, SeqCst);
        self.thread.join().unwrap();
        self.addr
    }
}

/// A client connected to the server through a relay.
fn connected_through_relay(opts: &TransportOptions) -> (Side, Arc<Connection>, Side, Relay) {
    let tls = tls();
    let server = side(Some(tls.server_config(opts).unwrap()), opts);
    let client = side(None, opts);
    let relay = Relay::start(server.ep.local_addr().unwrap());
    let c = client
        .ep
        .connect(tls.client_config(opts).unwrap(), relay.addr, "localhost")
        .unwrap();
    wait_for(&client.activity, "the handshake", || {
        c.is_connected().then_some(())
    });
    (client, c, server, relay)
}

/// [`connected_through_relay`], with the server's side of the connection accepted.
fn accepted_through_relay(
    opts: &TransportOptions,
) -> (Side, Arc<Connection>, Side, Arc<Connection>, Relay) {
    let (client, c, server, relay) = connected_through_relay(opts);
    let s = wait_for(&server.activity, "the accepted connection", || {
        server.ep.accept()
    });
    (client, c, server, s, relay)
}

#[test]
fn a_peer_whose_port_closed_is_given_up_after_a_probe() {
    // A QUIC peer that dies says nothing; the kernel answers the next datagram sent to its
    // closed port with an ICMP port unreachable. Without that report the connection would
    // last until its idle timeout (minutes), and the node until its ticks stop.
    let opts = TransportOptions::default().for_loopback();
    let (client, c, _server, relay) = connected_through_relay(&opts);
    relay.stop();
    let sent = Instant::now();
    c.with(|c| c.ping());
    wait_for(&client.activity, "the probe", || {
        c.is_probing().then_some(())
    });
    let lost = wait_for(&client.activity, "the connection given up", || c.lost());
    assert!(
        matches!(&lost, quinn_proto::ConnectionError::TransportError(t) if t.reason == PEER_GONE),
        "{lost:?}"
    );
    assert!(!c.is_probing());
    eprintln!(
        "given up {:?} after the first datagram to the closed port",
        sent.elapsed()
    );
}

#[test]
fn a_poller_finds_a_closed_port_that_only_the_error_queue_reports() {
    // A node's poller reads the socket in a loop and looks at the error queue only now and
    // then. The report of a closed port must still be found when a send took its error (so no
    // read fails with it) and the select, which the queue would wake, is not armed meanwhile.
    let opts = TransportOptions::default().for_loopback();
    let (client, c, _server, relay) = connected_through_relay(&opts);
    client.pause();
    relay.stop();
    let socket = client.ep.socket_handle().unwrap();
    c.with(|c| c.ping());
    // The report came back: take its error as a send would, so only the queue holds it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.take_error().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no port unreachable report");
        std::thread::yield_now();
    }
    let mut polls = 0;
    let mut read = 0;
    while !c.is_probing() && c.lost().is_none() {
        // What the server sent after the handshake may still wait, unread since the pause:
        // reading it is fine. Only empty reads look at the error queue.
        match client.ep.poll_batches(1).unwrap() {
            0 => polls += 1,
            n => read += n,
        }
        assert!(polls <= 64, "64 empty polls and the report is not found");
        assert!(read <= 64, "datagrams keep coming from a stopped relay");
    }
    eprintln!("closed port found after {polls} empty polls ({read} datagrams read)");
}

#[test]
fn a_connection_to_a_port_where_nothing_answers_quic_says_so() {
    // A node that does not run quic_dist registers a TCP port in epmd; the same port number
    // over UDP is closed. The handshake gives up after a probe, saying what is likely wrong.
    let opts = TransportOptions::default().for_loopback();
    let client = side(None, &opts);
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = client
        .ep
        .connect(tls().client_config(&opts).unwrap(), closed, "localhost")
        .unwrap();
    let lost = wait_for(&client.activity, "the connection given up", || c.lost());
    assert!(
        matches!(&lost, quinn_proto::ConnectionError::TransportError(t) if t.reason == NO_QUIC_AT_PEER),
        "{lost:?}"
    );
}

#[test]
fn a_loopback_connection_taken_for_a_black_hole_searches_back_up() {
    // Loopback connections send 65 000-byte datagrams from the start, with nothing to
    // discover. quinn's black-hole detector still takes bursts of lost large datagrams (a
    // receive buffer overflowing under load) for a smaller path and falls back to 1200 bytes;
    // with discovery off the connection stayed there for good, its bulk data 15 times slower.
    // With discovery on it searches back up after the cooldown.
    let opts = TransportOptions::default().for_loopback();
    let (client, c, _server, s, relay) = accepted_through_relay(&opts);
    let mtu = || c.with(|c| c.stats().path.current_mtu);
    assert_eq!(mtu(), LOOPBACK_UDP_PAYLOAD);
    let id = c.with(|c| c.streams().open(Dir::Uni)).expect("stream");
    let mut sid = None;
    let mut got = Vec::new();
    // The server reads what arrives, so that flow control never holds the writes back.
    let mut drain = |sid: Option<StreamId>| {
        if let Some(sid) = sid {
            got.clear();
            read_available(&s, sid, &mut got);
        }
    };
    let bulk = vec![1u8; 128 * 1024];
    let deadline = Instant::now() + Duration::from_secs(40);
    // Large datagrams vanish while small ones pass: bulk data is lost, a small write after it
    // is acknowledged, and that acknowledgement declares the bulk data's datagrams lost.
    relay.drop_above.store(1500, SeqCst);
    while mtu() > 1500 {
        assert!(Instant::now() < deadline, "no black hole detected");
        let _ = c.with(|c| c.send_stream(id).write(&bulk));
        let seen = client.activity.current();
        let _ = c.with(|c| c.send_stream(id).write(b"small"));
        client.activity.wait_after(seen);
        sid = sid.or_else(|| s.with(|c| c.streams().accept(Dir::Uni)));
        drain(sid);
    }
    let fell_back = Instant::now();
    relay.drop_above.store(0, SeqCst);
    // The path carries large datagrams again; a trickle of writes keeps the connection
    // sending, so discovery gets its turn once the cooldown is over.
    while mtu() <= 1500 {
        assert!(
            Instant::now() < deadline,
            "still at {} bytes {:?} after the fallback",
            mtu(),
            fell_back.elapsed()
        );
        let _ = c.with(|c| c.send_stream(id).write(b"tick"));
        std::thread::sleep(Duration::from_millis(20));
        drain(sid);
    }
    eprintln!(
        "back to {} bytes {:?} after the fallback",
        mtu(),
        fell_back.elapsed()
    );
    assert!(mtu() > 1500);
    assert!(c.lost().is_none(), "connection lost: {:?}", c.lost());
}

#[test]
fn a_peer_that_answers_the_probe_keeps_its_connection() {
    // A report is not authenticated (and a port may be reopened): a peer that answers the
    // probe is alive, and nothing is lost.
    let opts = TransportOptions::default().for_loopback();
    let (client, c, server, s, relay) = accepted_through_relay(&opts);
    let server_addr = server.ep.local_addr().unwrap();
    let addr = relay.stop();
    c.with(|c| c.ping());
    wait_for(&client.activity, "the probe", || {
        c.is_probing().then_some(())
    });
    let _relay = Relay::start_on(addr, server_addr);
    wait_for(&client.activity, "the answer to the probe", || {
        (!c.is_probing()).then_some(())
    });
    assert!(c.lost().is_none(), "{:?}", c.lost());
    // And the connection still carries data.
    let id = c.with(|c| c.streams().open(Dir::Uni)).expect("stream");
    c.with(|c| c.send_stream(id).write(b"still here")).unwrap();
    let mut got = Vec::new();
    wait_for(&server.activity, "the data at the server", || {
        let sid = s.with(|c| c.streams().accept(Dir::Uni)).or(Some(id))?;
        read_available(&s, sid, &mut got);
        (got.len() >= 10).then_some(())
    });
    assert_eq!(got, b"still here");
    assert!(c.lost().is_none());
}

/// Polls `fut` once, with a waker that does nothing.
fn poll_once<F: Future>(fut: F) -> std::task::Poll<F::Output> {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let mut cx = std::task::Context::from_waker(&waker);
    std::pin::pin!(fut).poll(&mut cx)
}

#[test]
fn a_small_write_goes_beyond_a_send_window_that_bulk_data_keeps_full() {
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, server, s) = connected_pair(&opts);
    let open = || c.with(|c| c.streams().open(Dir::Uni)).expect("stream");
    let (bulk, other_bulk, small) = (open(), open(), open());
    let window = 64 * 1024;
    c.set_send_window(window);
    // From here the server acknowledges nothing: the window stays full once filled.
    server.pause();
    let mut first = [Bytes::from(vec![1u8; window as usize])];
    assert!(poll_once(c.write_all_chunks(bulk, &mut first)).is_ready());
    // More bulk data waits for the window...
    let above_reserve = SMALL_WRITE_RESERVE as usize + 1;
    let mut more = [Bytes::from(vec![2u8; above_reserve])];
    assert!(poll_once(c.write_all_chunks(other_bulk, &mut more)).is_pending());
    // ...a small message does not.
    let ping = Bytes::from_static(b"a ping beside bulk data");
    assert!(poll_once(c.write_all_chunks(small, &mut [ping.clone()])).is_ready());
    server.resume();
    let mut got = Vec::new();
    wait_for(&server.activity, "the small message", || {
        while let Some(id) = s.with(|c| c.streams().accept(Dir::Uni)) {
            assert!(
                id == bulk || id == small || id == other_bulk,
                "unknown stream"
            );
        }
        read_available(&s, small, &mut got);
        (got.len() >= ping.len()).then_some(())
    });
    assert_eq!(got, ping);
}

#[test]
fn a_reader_is_woken_by_its_own_stream_alone() {
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, server, s) = connected_pair(&opts);
    let open = || c.with(|c| c.streams().open(Dir::Uni)).expect("stream");
    let (idle, busy) = (open(), open());
    // The server learns of both streams from a first byte on each.
    for id in [idle, busy] {
        c.with(|c| c.send_stream(id).write(&[0])).unwrap();
    }
    let mut accepted = Vec::new();
    wait_for(&server.activity, "both streams", || {
        while let Some(id) = s.with(|c| c.streams().accept(Dir::Uni)) {
            accepted.push(id);
        }
        (accepted.len() == 2).then_some(())
    });
    // A task reads the idle stream's byte, then waits for more that never comes.
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = polls.clone();
    let conn = s.clone();
    s.spawn(async move {
        let mut read = std::pin::pin!(async {
            let _ = conn.read_chunk(idle, usize::MAX).await;
            conn.read_chunk(idle, usize::MAX).await
        });
        std::future::poll_fn(|cx| {
            counted.fetch_add(1, SeqCst);
            read.as_mut().poll(cx).map(|_| ())
        })
        .await
    });
    s.run_tasks();
    let before = polls.load(SeqCst);
    // Fifty messages on the other stream, each received before the next is sent.
    let mut got = Vec::new();
    for round in 1..=50u8 {
        c.with(|c| c.send_stream(busy).write(&[round])).unwrap();
        wait_for(&server.activity, "the message", || {
            read_available(&s, busy, &mut got);
            (got.last() == Some(&round)).then_some(())
        });
    }
    // One more receive: the wakes of the last one have run.
    let seen = server.activity.current();
    wait_for(&server.activity, "another receive", || {
        (server.activity.current() > seen).then_some(())
    });
    assert!(
        polls.load(SeqCst) <= before + 1,
        "the idle stream's reader was polled {} times for the other stream's data",
        polls.load(SeqCst) - before
    );
}

#[test]
fn a_receive_says_how_many_datagrams_it_read() {
    let opts = TransportOptions::default().for_loopback();
    let (_client, c, server, _s) = connected_pair(&opts);
    // The server's watcher stops reading: this test reads its socket itself.
    server.pause();
    let id = c.with(|c| c.streams().open(Dir::Uni)).expect("stream");
    // Written and sent in this call: on loopback the datagram is in the server's socket when
    // it returns.
    c.with(|c| c.send_stream(id).write(b"ping")).unwrap();
    assert!(server.ep.receive().unwrap() >= 1, "the datagram was read");
    // Whatever else was on its way (an acknowledgement) is read within a few calls; then the
    // socket is empty and a receive says so.
    let empty = (0..10).any(|_| server.ep.receive().unwrap() == 0);
    assert!(empty, "an empty socket reads 0 datagrams");
    server.resume();
}
