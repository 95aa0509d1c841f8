//! proto_rtt: the round trip of QUIC driven by the threads that use it, without an I/O thread.
//!
//! ```text
//! cargo run --release -p quic_dist_transport --example proto_rtt -- [ROUNDS] [raw|quic] [sleep|spin]
//! ```
//!
//! Two threads in this process, each owning one UDP socket on loopback. `quic` (the default):
//! each drives its own `quinn_proto` endpoint and connection itself, the way a BEAM scheduler
//! could inside a NIF call: write to the stream, encrypt and `sendto` on the calling thread;
//! wait on the socket; `recvfrom`, decrypt and read on the woken thread. With the carrier's
//! loopback transport settings and TLS configuration, one bidirectional stream, 16-byte
//! ping-pong. `raw`: the same ping-pong with bare UDP datagrams, for the cost of the two
//! wake-ups alone. `sleep` (the default) blocks in `recvfrom` until a datagram or quinn's next
//! timer; `spin` polls the socket without sleeping.
//!
//! The carrier drives quinn-proto the same way (`quic_dist_transport::direct`), from Erlang
//! schedulers instead of plain threads.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quic_dist_transport::certs::{generate_ca, Validity};
use quic_dist_transport::TransportOptions;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, ServerConfig,
    StreamId,
};

mod support;
use support::loopback_tls;

/// How a side waits for the next datagram.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    Sleep,
    Spin,
}

/// One endpoint with at most one connection, driven by the thread that owns it.
struct Side {
    socket: UdpSocket,
    endpoint: Endpoint,
    conn: Option<(ConnectionHandle, Connection)>,
    wait: Wait,
    tx: Vec<u8>,
}

impl Side {
    fn new(server: Option<ServerConfig>, opts: &TransportOptions, wait: Wait) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_nonblocking(wait == Wait::Spin)
            .expect("socket mode");
        let endpoint = Endpoint::new(
            Arc::new(opts.quinn_endpoint()),
            server.map(Arc::new),
            false,
            None,
        );
        Self {
            socket,
            endpoint,
            conn: None,
            wait,
            tx: Vec::with_capacity(65_536),
        }
    }

    fn connect(&mut self, config: ClientConfig, to: SocketAddr) {
        let conn = self
            .endpoint
            .connect(Instant::now(), config, to, "localhost")
            .expect("connect");
        self.conn = Some(conn);
        self.flush();
    }

    /// Sends every datagram the connection has ready.
    fn flush(&mut self) {
        let Some((_, conn)) = self.conn.as_mut() else {
            return;
        };
        loop {
            self.tx.clear();
            let Some(t) = conn.poll_transmit(Instant::now(), 1, &mut self.tx) else {
                break;
            };
            let _ = self.socket.send_to(&self.tx[..t.size], t.destination);
        }
    }

    /// Waits for one datagram (or the connection's next timer) and processes it.
    fn turn(&mut self) {
        let deadline = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout());
        let mut buf = BytesMut::zeroed(65_536);
        let received = match self.wait {
            Wait::Sleep => {
                let timeout = deadline
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .map(|d| d.max(Duration::from_micros(1)));
                self.socket.set_read_timeout(timeout).expect("timeout");
                self.socket.recv_from(&mut buf).ok()
            }
            Wait::Spin => loop {
                match self.socket.recv_from(&mut buf) {
                    Ok(r) => break Some(r),
                    Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => break None,
                    Err(_) => std::hint::spin_loop(),
                }
            },
        };
        let now = Instant::now();
        match received {
            Some((n, from)) => {
                buf.truncate(n);
                let mut response = Vec::new();
                match self
                    .endpoint
                    .handle(now, from, None, None, buf, &mut response)
                {
                    Some(DatagramEvent::ConnectionEvent(_, event)) => {
                        if let Some((_, conn)) = self.conn.as_mut() {
                            conn.handle_event(event);
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        let accepted = self.endpoint.accept(incoming, now, &mut response, None);
                        self.conn = accepted.ok();
                    }
                    Some(DatagramEvent::Response(t)) => {
                        let _ = self.socket.send_to(&response[..t.size], t.destination);
                    }
                    None => {}
                }
            }
            None => {
                if let Some((_, conn)) = self.conn.as_mut() {
                    conn.handle_timeout(now);
                }
            }
        }
        if let Some((handle, conn)) = self.conn.as_mut() {
            while let Some(event) = conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(*handle, event) {
                    conn.handle_event(back);
                }
            }
        }
        self.flush();
    }

    fn conn(&mut self) -> &mut Connection {
        &mut self.conn.as_mut().expect("connection").1
    }

    /// Turns until the connection reports the handshake done.
    fn until_connected(&mut self) {
        loop {
            if self.conn.is_some() {
                while let Some(event) = self.conn().poll() {
                    if matches!(event, Event::Connected) {
                        return;
                    }
                }
            }
            self.turn();
        }
    }

    /// Turns until the peer opens a bidirectional stream; returns it.
    fn accept_stream(&mut self) -> StreamId {
        loop {
            if self.conn.is_some() {
                while self.conn().poll().is_some() {}
                if let Some(id) = self.conn().streams().accept(Dir::Bi) {
                    return id;
                }
            }
            self.turn();
        }
    }

    fn write(&mut self, id: StreamId, data: &[u8]) {
        let n = self.conn().send_stream(id).write(data).expect("write");
        assert_eq!(n, data.len(), "stream window");
        self.flush();
    }

    /// Turns until `n` bytes of the stream have arrived.
    fn read_exact(&mut self, id: StreamId, n: usize) {
        let mut got = 0;
        loop {
            let conn = self.conn();
            while conn.poll().is_some() {}
            let mut transmit = false;
            if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
                while got < n {
                    match chunks.next(n - got) {
                        Ok(Some(chunk)) => got += chunk.bytes.len(),
                        _ => break,
                    }
                }
                transmit = chunks.finalize().should_transmit();
            }
            if transmit {
                self.flush();
            }
            if got == n {
                return;
            }
            self.turn();
        }
    }
}

fn quic(rounds: usize, wait: Wait) {
    let ca = generate_ca("proto_rtt ca", Validity::days_from_now(1)).expect("ca");
    let opts = TransportOptions::default().for_loopback();
    let tls = loopback_tls(&ca);
    let mut server = Side::new(
        Some(tls.server_config(&opts).expect("server config")),
        &opts,
        wait,
    );
    let addr = server.socket.local_addr().expect("server address");
    let client_config = tls.client_config(&opts).expect("client config");
    let echo = std::thread::spawn(move || {
        let id = server.accept_stream();
        for _ in 0..rounds * 3 {
            server.read_exact(id, 16);
            server.write(id, &[0u8; 16]);
        }
        // Let the last reply reach the client before this side goes away.
        server.flush();
    });
    let mut client = Side::new(None, &opts, wait);
    client.connect(client_config, addr);
    client.until_connected();
    let id = client.conn().streams().open(Dir::Bi).expect("stream");
    measure(rounds, || {
        client.write(id, &[0u8; 16]);
        client.read_exact(id, 16);
    });
    echo.join().expect("echo thread");
}

fn raw(rounds: usize, wait: Wait) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for s in [&a, &b] {
        s.set_nonblocking(wait == Wait::Spin).expect("mode");
    }
    let recv = move |s: &UdpSocket, buf: &mut [u8]| loop {
        match s.recv_from(buf) {
            Ok(r) => return r,
            Err(_) => std::hint::spin_loop(),
        }
    };
    let a_addr = a.local_addr().expect("address");
    let b_addr = b.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..rounds * 3 {
            let (n, _) = recv(&b, &mut buf);
            b.send_to(&buf[..n], a_addr).expect("send");
        }
    });
    let mut buf = [0u8; 64];
    measure(rounds, || {
        a.send_to(&[0u8; 16], b_addr).expect("send");
        recv(&a, &mut buf);
    });
}

/// Runs `round` `rounds` times, three times over; prints p50 and p99 of each run.
fn measure(rounds: usize, mut round: impl FnMut()) {
    for run in 1..=3 {
        let mut us = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            round();
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us.sort_by(f64::total_cmp);
        println!(
            "run {run}: {rounds} round trips, p50 {:.0} us, p99 {:.0} us",
            us[rounds / 2],
            us[rounds * 99 / 100]
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args
        .first()
        .map(|a| a.parse().expect("numeric argument"))
        .unwrap_or(10_000);
    let wait = match args.get(2).map(String::as_str) {
        Some("spin") => Wait::Spin,
        _ => Wait::Sleep,
    };
    match args.get(1).map(String::as_str) {
        Some("raw") => raw(rounds, wait),
        _ => quic(rounds, wait),
    }
}
