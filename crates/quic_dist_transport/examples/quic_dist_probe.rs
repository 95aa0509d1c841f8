//! quic_dist_probe: a rogue client for testing that a quic_dist node refuses bad input.
//!
//! ```text
//! quic_dist_probe garbage ADDR COUNT
//!     COUNT UDP datagrams of random bytes and random sizes (1..=1500) to ADDR; a third of them
//!     dressed as QUIC v1 Initial packets (long header, version 1, 1200+ bytes) so that they
//!     reach the server's packet decryption instead of being dropped at the first byte.
//! quic_dist_probe alpn ADDR ALPN
//!     a QUIC client that offers another ALPN and verifies nothing; prints what happened.
//! quic_dist_probe nocert ADDR
//!     a QUIC client with the right ALPN but no client certificate.
//! quic_dist_probe frames ADDR CERT KEY CA SERVER_NAME oversize|garbage|notname
//!     completes QUIC with a valid client certificate (the crate's own TLS set-up), opens the
//!     distribution stream and sends
//!       oversize: a frame header announcing 0xFFFFFFFF bytes;
//!       garbage:  a well-framed handshake name message ('N') whose name length lies;
//!       notname:  a well-framed first message that is not a name message at all;
//!     then waits for the server to close the connection and prints the close reason.
//! ```
//!
//! Exit code 0: the server refused or closed as expected (garbage: every datagram was sent).
//! 1: the server accepted what it should have refused, or did not close in time.
//! 2: usage error. 3: the probe itself could not do its part (e.g. no QUIC connection in
//! `frames`). The wait for a close is `QUIC_DIST_PROBE_WAIT_MS` (default 20000) milliseconds.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quic_dist_transport::insecure::AcceptAnyPeer;
use quic_dist_transport::{TlsMaterial, TransportOptions, ALPN};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::ConnectionError;

const USAGE: &str = "usage:
  quic_dist_probe garbage ADDR COUNT
  quic_dist_probe alpn ADDR ALPN
  quic_dist_probe nocert ADDR
  quic_dist_probe frames ADDR CERT KEY CA SERVER_NAME oversize|garbage|notname";

/// Outcome of a probe, mapped to the exit code.
enum Outcome {
    /// The server refused or closed as expected.
    Refused(String),
    /// The server accepted something it should not have, or stayed silent.
    Accepted(String),
    /// The probe could not do its part.
    ProbeFailed(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::from(3);
        }
    };
    let outcome = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["garbage", addr, count] => match (resolve(addr), count.parse::<usize>()) {
            (Ok(a), Ok(n)) => garbage(a, n),
            _ => return usage(),
        },
        ["alpn", addr, alpn] => match resolve(addr) {
            Ok(a) => runtime.block_on(alpn_probe(a, alpn.as_bytes().to_vec())),
            Err(_) => return usage(),
        },
        ["nocert", addr] => match resolve(addr) {
            Ok(a) => runtime.block_on(nocert(a)),
            Err(_) => return usage(),
        },
        ["frames", addr, cert, key, ca, server_name, mode]
            if matches!(*mode, "oversize" | "garbage" | "notname") =>
        {
            match resolve(addr) {
                Ok(a) => runtime.block_on(frames(a, cert, key, ca, server_name, mode)),
                Err(_) => return usage(),
            }
        }
        _ => return usage(),
    };
    // Do not wait for lingering connection tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Outcome::Refused(msg) => {
            println!("REFUSED {msg}");
            ExitCode::SUCCESS
        }
        Outcome::Accepted(msg) => {
            println!("ACCEPTED {msg}");
            ExitCode::from(1)
        }
        Outcome::ProbeFailed(msg) => {
            println!("PROBE_FAILED {msg}");
            ExitCode::from(3)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn resolve(addr: &str) -> Result<SocketAddr, ()> {
    addr.to_socket_addrs().map_err(|_| ())?.next().ok_or(())
}

fn wait_limit() -> Duration {
    let ms = std::env::var("QUIC_DIST_PROBE_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    Duration::from_millis(ms)
}

/// xorshift64*, seeded from the clock and the process id: random enough for junk bytes.
struct Junk(u64);

impl Junk {
    fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self(t ^ (u64::from(std::process::id()) << 32) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = (self.next() >> 24) as u8;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// garbage

fn garbage(addr: SocketAddr, count: usize) -> Outcome {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("addr")
    } else {
        "0.0.0.0:0".parse().expect("addr")
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return Outcome::ProbeFailed(format!("cannot bind: {e}")),
    };
    let _ = socket.set_nonblocking(true);
    let mut junk = Junk::new();
    let mut buf = vec![0u8; 1500];
    let (mut sent, mut bytes, mut replies, mut dropped_sends) = (0usize, 0usize, 0usize, 0usize);
    let mut reply = [0u8; 2048];
    let started = Instant::now();
    for i in 0..count {
        let len = if i % 3 == 0 {
            // A well-formed QUIC v1 Initial header (long header, type Initial, version 1,
            // 8-byte connection ids, no token, a correct length) over a random payload that
            // cannot decrypt, padded to >= 1200 bytes: it gets as far as packet decryption.
            let len = 1200 + junk.below(301) as usize;
            junk.fill(&mut buf[..len]);
            buf[0] = 0xc0 | (buf[0] & 0x03);
            buf[1..5].copy_from_slice(&1u32.to_be_bytes());
            buf[5] = 8;
            buf[14] = 8;
            buf[23] = 0; // token length
            let rest = (len - 26) as u16; // 2-byte varint length of packet number + payload
            buf[24..26].copy_from_slice(&(0x4000 | rest).to_be_bytes());
            len
        } else {
            let len = 1 + junk.below(1500) as usize;
            junk.fill(&mut buf[..len]);
            len
        };
        // A full kernel buffer is not an error worth stopping for: retry a little, then count.
        let mut tries = 0;
        loop {
            match socket.send_to(&buf[..len], addr) {
                Ok(n) => {
                    sent += 1;
                    bytes += n;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => {
                    dropped_sends += 1;
                    break;
                }
            }
        }
        while let Ok((_, _)) = socket.recv_from(&mut reply) {
            replies += 1;
        }
        if i % 256 == 255 {
            // Loopback drops what the receiver cannot take; pace a little so most arrive.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Collect late answers (version negotiation, stateless resets) for a moment.
    let _ = socket.set_nonblocking(false);
    let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
    while let Ok((_, _)) = socket.recv_from(&mut reply) {
        replies += 1;
    }
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let msg = format!(
        "garbage local={local}: sent {sent} datagrams ({bytes} bytes) in {} ms, {dropped_sends} send errors, {replies} datagrams came back",
        started.elapsed().as_millis()
    );
    if sent == count {
        Outcome::Refused(msg)
    } else {
        Outcome::ProbeFailed(msg)
    }
}

// ---------------------------------------------------------------------------------------------
// QUIC clients

/// A client that verifies nothing and presents no certificate.
fn unverified_client(alpn: Vec<u8>) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(AcceptAnyPeer::new(provider))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

fn client_endpoint(addr: SocketAddr) -> Result<quinn::Endpoint, String> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("addr")
    } else {
        "0.0.0.0:0".parse().expect("addr")
    };
    quinn::Endpoint::client(bind).map_err(|e| format!("cannot bind: {e}"))
}

fn local_addr(endpoint: &quinn::Endpoint) -> String {
    endpoint
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn server_name_for(addr: SocketAddr) -> String {
    addr.ip().to_string()
}

/// Waits for the server to close an established connection.
async fn wait_for_close(conn: &quinn::Connection, what: &str) -> Outcome {
    match tokio::time::timeout(wait_limit(), conn.closed()).await {
        Ok(
            e @ (ConnectionError::ApplicationClosed(_)
            | ConnectionError::ConnectionClosed(_)
            | ConnectionError::TransportError(_)
            | ConnectionError::Reset),
        ) => Outcome::Refused(format!("{what}: {}", describe(&e))),
        Ok(e) => Outcome::Accepted(format!(
            "{what}: connection ended without a refusal from the server: {}",
            describe(&e)
        )),
        Err(_) => Outcome::Accepted(format!(
            "{what}: the server kept the connection open for {} ms",
            wait_limit().as_millis()
        )),
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => format!(
            "closed by the server: application error code {} reason {:?}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        ConnectionError::ConnectionClosed(c) => format!(
            "closed by the server: transport error {} reason {:?}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        ConnectionError::TransportError(t) => format!("local transport error: {t}"),
        other => other.to_string(),
    }
}

async fn alpn_probe(addr: SocketAddr, alpn: Vec<u8>) -> Outcome {
    let endpoint = match client_endpoint(addr) {
        Ok(e) => e,
        Err(e) => return Outcome::ProbeFailed(e),
    };
    let config = match unverified_client(alpn.clone()) {
        Ok(c) => c,
        Err(e) => return Outcome::ProbeFailed(e),
    };
    let label = format!(
        "alpn {:?} local={}",
        String::from_utf8_lossy(&alpn),
        local_addr(&endpoint)
    );
    let connecting = match endpoint.connect_with(config, addr, &server_name_for(addr)) {
        Ok(c) => c,
        Err(e) => return Outcome::ProbeFailed(format!("{label}: {e}")),
    };
    let result = match tokio::time::timeout(wait_limit(), connecting).await {
        Err(_) => Outcome::Accepted(format!("{label}: no answer from the server")),
        Ok(Err(e)) => Outcome::Refused(format!("{label}: handshake failed: {}", describe(&e))),
        Ok(Ok(conn)) => {
            let negotiated = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.protocol);
            // The server cannot take back a completed handshake; but if it closes at once,
            // the result still is a refusal.
            match wait_for_close(&conn, &label).await {
                Outcome::Refused(m) => Outcome::Refused(m),
                _ => Outcome::Accepted(format!(
                    "{label}: handshake completed, negotiated alpn {:?}",
                    negotiated.map(|p| String::from_utf8_lossy(&p).into_owned())
                )),
            }
        }
    };
    endpoint.close(0u32.into(), b"probe done");
    result
}

async fn nocert(addr: SocketAddr) -> Outcome {
    let endpoint = match client_endpoint(addr) {
        Ok(e) => e,
        Err(e) => return Outcome::ProbeFailed(e),
    };
    let config = match unverified_client(ALPN.to_vec()) {
        Ok(c) => c,
        Err(e) => return Outcome::ProbeFailed(e),
    };
    let label = format!("nocert local={}", local_addr(&endpoint));
    let connecting = match endpoint.connect_with(config, addr, &server_name_for(addr)) {
        Ok(c) => c,
        Err(e) => return Outcome::ProbeFailed(format!("{label}: {e}")),
    };
    let result = match tokio::time::timeout(wait_limit(), connecting).await {
        Err(_) => Outcome::Accepted(format!("{label}: no answer from the server")),
        Ok(Err(e)) => Outcome::Refused(format!("{label}: handshake failed: {}", describe(&e))),
        Ok(Ok(conn)) => {
            // TLS 1.3: the client finishes before the server has checked its (absent)
            // certificate. Open the stream as a real node would, then see what the server does.
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                let _ = send.write_all(&0u32.to_be_bytes()).await;
            }
            wait_for_close(&conn, &label).await
        }
    };
    endpoint.close(0u32.into(), b"probe done");
    result
}

/// The first handshake message of the distribution protocol, deliberately broken.
fn handshake_payload(mode: &str) -> Vec<u8> {
    match mode {
        // 'N', flags (8), creation (4), name length 200, but only 5 bytes of name follow.
        "garbage" => {
            let mut m = vec![b'N'];
            m.extend_from_slice(&0x0000_0000_0d07_df7du64.to_be_bytes());
            m.extend_from_slice(&1u32.to_be_bytes());
            m.extend_from_slice(&200u16.to_be_bytes());
            m.extend_from_slice(b"x@127");
            m
        }
        // Not a name message at all.
        _ => {
            let mut m = b"Xthis is not a distribution handshake message".to_vec();
            let mut junk = Junk::new();
            let mut tail = [0u8; 64];
            junk.fill(&mut tail);
            m.extend_from_slice(&tail);
            m
        }
    }
}

async fn frames(
    addr: SocketAddr,
    cert: &str,
    key: &str,
    ca: &str,
    server_name: &str,
    mode: &str,
) -> Outcome {
    let material = match TlsMaterial::from_pem_files(Path::new(cert), Path::new(key), Path::new(ca))
    {
        Ok(m) => m,
        Err(e) => return Outcome::ProbeFailed(format!("frames: {e}")),
    };
    let config = match material.client_config(&TransportOptions::default()) {
        Ok(c) => c,
        Err(e) => return Outcome::ProbeFailed(format!("frames: {e}")),
    };
    let endpoint = match client_endpoint(addr) {
        Ok(e) => e,
        Err(e) => return Outcome::ProbeFailed(e),
    };
    let label = format!("frames {mode} local={}", local_addr(&endpoint));
    let connecting = match endpoint.connect_with(config, addr, server_name) {
        Ok(c) => c,
        Err(e) => return Outcome::ProbeFailed(format!("frames: {e}")),
    };
    let conn = match tokio::time::timeout(wait_limit(), connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Outcome::ProbeFailed(format!(
                "frames: could not complete QUIC: {}",
                describe(&e)
            ))
        }
        Err(_) => return Outcome::ProbeFailed("frames: no answer from the server".into()),
    };
    let (mut send, _recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Outcome::ProbeFailed(format!("frames: cannot open the stream: {e}")),
    };
    let mut bytes = Vec::new();
    match mode {
        "oversize" => {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
            bytes.extend_from_slice(&[0u8; 1024]);
        }
        _ => {
            let payload = handshake_payload(mode);
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&payload);
        }
    }
    if let Err(e) = send.write_all(&bytes).await {
        // The server may already have closed: that is the refusal we look for.
        if let Some(reason) = conn.close_reason() {
            endpoint.close(0u32.into(), b"probe done");
            return Outcome::Refused(format!("{label}: {}", describe(&reason)));
        }
        return Outcome::ProbeFailed(format!("{label}: write failed: {e}"));
    }
    let started = Instant::now();
    let result = match wait_for_close(&conn, &label).await {
        Outcome::Refused(m) => {
            Outcome::Refused(format!("{m} after {} ms", started.elapsed().as_millis()))
        }
        other => other,
    };
    endpoint.close(0u32.into(), b"probe done");
    result
}
