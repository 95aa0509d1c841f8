//! quinn_rtt: the round trip of plain quinn on loopback, for comparison with the carrier's.
//!
//! ```text
//! cargo run --release -p quic_dist_transport --example quinn_rtt -- [ROUNDS]
//! ```
//!
//! Two endpoints in this process, each on its own tokio runtime (`QD_THREADS` workers, default
//! 2, as the NIF's), with the carrier's loopback transport settings and TLS configuration, one
//! bidirectional stream: the client writes 16 bytes, the server echoes them, `ROUNDS` times
//! (default 10 000), three times. Prints p50 and p99 per run. No BEAM, no framing, no thread
//! hand-off other than quinn's own: a floor for quic_dist's ping-pong on the same machine.

use std::net::SocketAddr;
use std::time::Instant;

use quic_dist_transport::certs::{generate_ca, Validity};
use quic_dist_transport::TransportOptions;

mod support;
use support::loopback_tls;

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("numeric argument"))
        .unwrap_or(10_000);
    let threads = std::env::var("QD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (client_rt, server_rt) = (runtime(threads), runtime(threads));
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
            send.write_all(&buf).await.ok()?;
        }
        Some(())
    });

    client_rt.block_on(async move {
        let mut client = quinn::Endpoint::client(lo).expect("client endpoint");
        client.set_default_client_config(loopback_tls(&ca).client_config(&opts).expect("client config"));
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
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            us.sort_by(f64::total_cmp);
            println!(
                "run {run}: {rounds} round trips, p50 {:.0} us, p99 {:.0} us ({threads} workers per side)",
                us[rounds / 2],
                us[rounds * 99 / 100]
            );
        }
        conn.close(0u32.into(), b"done");
    });
}
