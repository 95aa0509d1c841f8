//! quinn_rtt: the round trip of plain quinn on loopback, for comparison with the carrier's.
//!
//! ```text
//! cargo run --release -p quic_dist_transport --example quinn_rtt -- [ROUNDS]
//! ```
//!
//! Two endpoints in this process, each on its own tokio runtime built as the NIF builds it
//! (`QD_THREADS`, default 1: one thread busy-polling `QD_BUSY_POLL_US` microseconds after work,
//! default 100, 0 to sleep at once; more threads: a multi-thread runtime), with the carrier's
//! loopback transport settings and TLS configuration, one bidirectional stream: the client
//! writes 16 bytes, the server echoes them, `ROUNDS` times (default 10 000), three times. Prints
//! p50 and p99 per run. No BEAM, no framing, no thread hand-off other than quinn's own: a floor
//! for quic_dist's ping-pong on the same machine.
//!
//! On the 2-core benchmark VM: 121-132 us p50 with threads that sleep when idle, 26-28 us with
//! busy polling (see `examples/wake_cost.rs` for why).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quic_dist_transport::certs::{generate_ca, Validity};
use quic_dist_transport::{busy_poll, TransportOptions};

mod support;
use support::loopback_tls;

/// A runtime on its own thread, as the NIF starts it; returns its handle.
fn runtime(threads: usize, busy_poll: Duration) -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        }
        .enable_all()
        .build()
        .expect("tokio runtime");
        tx.send(rt.handle().clone()).expect("handle");
        if threads <= 1 {
            rt.block_on(busy_poll::run(busy_poll));
        } else {
            rt.block_on(std::future::pending::<()>());
        }
    });
    rx.recv().expect("runtime started")
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("numeric argument"))
        .unwrap_or(10_000);
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let threads = env("QD_THREADS", 1) as usize;
    let busy_poll = Duration::from_micros(env("QD_BUSY_POLL_US", 100));
    let (client_rt, server_rt) = (runtime(threads, busy_poll), runtime(threads, busy_poll));
    let ca = generate_ca("quinn_rtt ca", Validity::days_from_now(1)).expect("ca");
    let opts = TransportOptions::default().for_loopback();
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));

    let server = {
        let _guard = server_rt.enter();
        let config = loopback_tls(&ca)
            .server_config(&opts)
            .expect("server config");
        quinn::Endpoint::server(config, lo).expect("server endpoint")
    };
    let addr = server.local_addr().expect("server address");
    server_rt.spawn(async move {
        let conn = server.accept().await?.await.ok()?;
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let mut buf = [0u8; 16];
        while recv.read_exact(&mut buf).await.is_ok() {
            // What the carrier's readers and writers do: keep the runtime's thread polling.
            busy_poll::note_activity();
            send.write_all(&buf).await.ok()?;
        }
        Some(())
    });

    // The client runs as a task on its runtime's thread, like the server; this thread only waits.
    let client = client_rt.spawn(async move {
        let mut client = quinn::Endpoint::client(lo).expect("client endpoint");
        client.set_default_client_config(
            loopback_tls(&ca)
                .client_config(&opts)
                .expect("client config"),
        );
        let conn = client
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let mut buf = [0u8; 16];
        for run in 1..=3 {
            let mut us = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                send.write_all(&buf).await.expect("write");
                recv.read_exact(&mut buf).await.expect("read");
                busy_poll::note_activity();
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            us.sort_by(f64::total_cmp);
            println!(
                "run {run}: {rounds} round trips, p50 {:.0} us, p99 {:.0} us ({threads} thread(s) \
                 per side, busy poll {} us)",
                us[rounds / 2],
                us[rounds * 99 / 100],
                busy_poll.as_micros()
            );
        }
        conn.close(0u32.into(), b"done");
    });
    client_rt.block_on(client).expect("client task");
}
