//! The node's one QUIC endpoint: a single UDP socket for every connection, in and out.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::config::TransportOptions;
use crate::connection::DistConnection;
use crate::error::TransportError;
use crate::tls::TlsMaterial;
use crate::udp_socket::SizedReceives;

/// Binds the UDP socket with large kernel buffers: bursts of full-size datagrams overflow
/// the default ones on loopback, and every drop costs a QUIC loss recovery. The kernel caps the
/// sizes at `net.core.rmem_max`/`wmem_max`.
fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        debug!(error = %e, "cannot enlarge the udp receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        debug!(error = %e, "cannot enlarge the udp send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Refused connections logged per second: at most this many per remote address, and
/// [`REFUSALS_LOGGED_PER_SECOND`] in all, so a flood of forged packets cannot flood the log while
/// a single bad client among them is still reported. The next line logged says how many were left
/// out.
const REFUSALS_LOGGED_PER_ADDRESS: u32 = 3;
/// See [`REFUSALS_LOGGED_PER_ADDRESS`].
const REFUSALS_LOGGED_PER_SECOND: u32 = 50;

/// Admits a bounded number of log events per second, overall and per remote address.
#[derive(Debug)]
struct RateLimit {
    window: std::sync::Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: std::time::Instant,
    total: u32,
    per_address: std::collections::HashMap<SocketAddr, u32>,
    suppressed: u64,
}

impl RateLimit {
    fn new() -> Self {
        Self {
            window: std::sync::Mutex::new(Window {
                start: std::time::Instant::now(),
                total: 0,
                per_address: std::collections::HashMap::new(),
                suppressed: 0,
            }),
        }
    }

    /// `Some(suppressed so far)` if this event may be logged, `None` if it is suppressed.
    fn admit(&self, remote: SocketAddr) -> Option<u64> {
        let mut w = self.window.lock().ok()?;
        let now = std::time::Instant::now();
        if now.duration_since(w.start) >= std::time::Duration::from_secs(1) {
            w.start = now;
            w.total = 0;
            w.per_address.clear();
        }
        // The map holds at most REFUSALS_LOGGED_PER_SECOND entries: bounded memory.
        let seen = w.per_address.get(&remote).copied().unwrap_or(0);
        if w.total < REFUSALS_LOGGED_PER_SECOND && seen < REFUSALS_LOGGED_PER_ADDRESS {
            w.total += 1;
            w.per_address.insert(remote, seen + 1);
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// True for addresses whose path is the `lo` interface (including IPv4-mapped IPv6 ones).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// The settings a connection to or from `peer` runs with.
fn opts_for_peer(opts: &TransportOptions, peer: SocketAddr) -> TransportOptions {
    if is_loopback(peer) {
        opts.for_loopback()
    } else {
        opts.clone()
    }
}

/// A quinn endpoint with the node's TLS configuration.
#[derive(Debug, Clone)]
pub struct DistEndpoint {
    endpoint: quinn::Endpoint,
    runtime: tokio::runtime::Handle,
    opts: TransportOptions,
    /// Client and server configurations for loopback peers: path MTU discovery may go up to
    /// `max_udp_payload` there (see [`TransportOptions::for_loopback`]).
    loopback_client: quinn::ClientConfig,
    loopback_server: Option<Arc<quinn::ServerConfig>>,
}

impl DistEndpoint {
    /// Binds the UDP socket. With `listen`, the endpoint also accepts connections.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsMaterial,
        listen: bool,
        opts: TransportOptions,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, TransportError> {
        let _guard = runtime.enter();
        let (server, loopback_server) = if listen {
            (
                Some(tls.server_config(&opts)?),
                Some(Arc::new(tls.server_config(&opts.for_loopback())?)),
            )
        } else {
            (None, None)
        };
        let socket = bind_udp(addr, opts.socket_buffer)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let udp = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let endpoint_config = opts.quinn_endpoint();
        let udp = SizedReceives::new(udp, endpoint_config.get_max_udp_payload_size() as usize);
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            server,
            Arc::new(udp),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        endpoint.set_default_client_config(tls.client_config(&opts)?);
        let loopback_client = tls.client_config(&opts.for_loopback())?;
        Ok(Self {
            endpoint,
            runtime,
            opts,
            loopback_client,
            loopback_server,
        })
    }

    /// The bound UDP address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })
    }

    /// Accepts connections until the endpoint closes. Each peer that completes the QUIC
    /// handshake and opens its stream is passed to `on_connection`; failures are logged with
    /// the peer address and never stop the loop.
    pub fn accept_loop<F>(&self, on_connection: F)
    where
        F: Fn(DistConnection) + Send + Sync + 'static,
    {
        let endpoint = self.endpoint.clone();
        let runtime = self.runtime.clone();
        let opts = self.opts.clone();
        let on_connection = Arc::new(on_connection);
        let refusal_log = Arc::new(RateLimit::new());
        let loopback_server = self.loopback_server.clone();
        self.runtime.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let remote = incoming.remote_address();
                let on_connection = on_connection.clone();
                let runtime = runtime.clone();
                let opts = opts_for_peer(&opts, remote);
                let refusal_log = refusal_log.clone();
                let loopback_server = loopback_server.clone().filter(|_| is_loopback(remote));
                runtime.clone().spawn(async move {
                    let handshake = async {
                        let conn = match loopback_server {
                            Some(config) => incoming.accept_with(config)?.await?,
                            None => incoming.await?,
                        };
                        let (send, recv) = conn.accept_bi().await?;
                        Ok::<_, TransportError>(DistConnection::new(
                            conn,
                            send,
                            recv,
                            runtime,
                            &opts,
                        ))
                    };
                    match tokio::time::timeout(opts.handshake_timeout, handshake).await {
                        Ok(Ok(conn)) => {
                            debug!(%remote, "accepted quic connection");
                            on_connection(conn)
                        }
                        Ok(Err(e)) => {
                            if let Some(suppressed) = refusal_log.admit(remote) {
                                warn!(%remote, error = %e, suppressed, "refused incoming connection")
                            }
                        }
                        Err(_) => {
                            if let Some(suppressed) = refusal_log.admit(remote) {
                                warn!(%remote, suppressed, "refused incoming connection: handshake timed out")
                            }
                        }
                    }
                });
            }
            info!("endpoint closed; accept loop ends");
        });
    }

    /// Connects to a node at `addr`, verifying that its certificate names `server_name`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<DistConnection, TransportError> {
        let connecting = if is_loopback(addr) {
            self.endpoint
                .connect_with(self.loopback_client.clone(), addr, server_name)?
        } else {
            self.endpoint.connect(addr, server_name)?
        };
        let handshake = async {
            let conn = connecting.await?;
            let (send, recv) = conn.open_bi().await?;
            let opts = opts_for_peer(&self.opts, addr);
            Ok::<_, TransportError>(DistConnection::new(
                conn,
                send,
                recv,
                self.runtime.clone(),
                &opts,
            ))
        };
        tokio::time::timeout(self.opts.handshake_timeout, handshake)
            .await
            .map_err(|_| TransportError::Timeout("quic handshake"))?
    }

    /// Starts [`connect`](Self::connect) on the runtime and calls `done` with the result.
    pub fn spawn_connect<F>(&self, addr: SocketAddr, server_name: String, done: F)
    where
        F: FnOnce(Result<DistConnection, TransportError>) + Send + 'static,
    {
        let this = self.clone();
        self.runtime.spawn(async move {
            let result = this.connect(addr, &server_name).await;
            if let Err(e) = &result {
                warn!(%addr, %server_name, error = %e, "outgoing connection failed");
            }
            done(result)
        });
    }

    /// True if both handles are the same endpoint (the same UDP socket).
    pub fn same_endpoint(&self, other: &DistEndpoint) -> bool {
        match (self.endpoint.local_addr(), other.endpoint.local_addr()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// Closes every connection (peers are told at once) and stops accepting.
    pub fn close(&self, reason: &str) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), reason.as_bytes());
    }

    /// Waits until close notifications have been sent, at most `limit`.
    pub fn wait_idle_blocking(&self, limit: std::time::Duration) {
        let endpoint = self.endpoint.clone();
        let _ = self
            .runtime
            .block_on(async move { tokio::time::timeout(limit, endpoint.wait_idle()).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.0.0.1:1",
            "[::ffff:10.0.0.1]:1",
            "[2001:db8::1]:1",
            "0.0.0.0:1",
        ] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn refusal_logging_is_bounded_per_address_and_overall_and_counts_the_rest() {
        let limit = RateLimit::new();
        let flood: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        for _ in 0..REFUSALS_LOGGED_PER_ADDRESS {
            assert_eq!(limit.admit(flood), Some(0));
        }
        assert_eq!(limit.admit(flood), None);
        assert_eq!(limit.admit(flood), None);
        // Another client is still reported, with the count of what was left out.
        let other: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        assert_eq!(limit.admit(other), Some(2));
        // Forged source addresses: the overall bound holds.
        let admitted = (0..1000u16)
            .filter(|p| limit.admit(SocketAddr::from(([10, 0, 0, 1], *p))).is_some())
            .count() as u32;
        assert_eq!(
            admitted,
            REFUSALS_LOGGED_PER_SECOND - REFUSALS_LOGGED_PER_ADDRESS - 1
        );
    }
}
