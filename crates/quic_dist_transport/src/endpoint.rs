//! The node's one QUIC endpoint: a single UDP socket for every connection, in and out.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::certificate_refusal::{CertificateRefusal, Refused};
use crate::config::TransportOptions;
use crate::connection::{describe_close, peer_refusal, DistConnection};
use crate::error::TransportError;
use crate::tls::TlsMaterial;

/// The server configurations for peers on the network and on loopback addresses.
fn server_configs(
    tls: &TlsMaterial,
    opts: &TransportOptions,
) -> Result<(quinn::ServerConfig, Arc<quinn::ServerConfig>), TransportError> {
    Ok((
        tls.server_config(opts)?,
        Arc::new(tls.server_config(&opts.for_loopback())?),
    ))
}

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

/// Waits for the QUIC handshake, then opens (`initiator`) or accepts the control stream.
async fn establish(
    conn: &crate::direct::compat::Connection,
    opts: &TransportOptions,
    initiator: bool,
) -> Result<DistConnection, crate::direct::StreamError> {
    conn.0.connected().await?;
    let (send, recv) = if initiator {
        conn.open_bi().await?
    } else {
        conn.accept_bi().await?
    };
    Ok(DistConnection::new(conn.clone(), send, recv, opts))
}

/// Whether the peer's application closed the connection: with a reason once the handshake is
/// done, or, during the QUIC handshake (when the reason cannot be sent yet), as a transport
/// close with the APPLICATION_ERROR code. A TLS alert (a refused certificate) is neither.
fn peer_gave_up(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(_) => true,
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn_proto::TransportErrorCode::APPLICATION_ERROR
        }
        _ => false,
    }
}

/// Called with each incoming connection that completed the handshakes.
type OnConnection = Arc<dyn Fn(DistConnection) + Send + Sync>;

/// Called when incoming connections start waiting for [`DistEndpoint::admit_held`].
type OnHeld = Arc<dyn Fn() + Send + Sync>;

/// The TLS identity and trust a node connects with: client configurations for peers on the
/// network and on loopback addresses (see [`TransportOptions::for_loopback`]).
#[derive(Clone)]
pub struct ClientConfigs {
    network: quinn::ClientConfig,
    loopback: quinn::ClientConfig,
}

impl std::fmt::Debug for ClientConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfigs").finish_non_exhaustive()
    }
}

impl ClientConfigs {
    fn new(tls: &TlsMaterial, opts: &TransportOptions) -> Result<Self, TransportError> {
        Ok(Self {
            network: tls.client_config(opts)?,
            loopback: tls.client_config(&opts.for_loopback())?,
        })
    }

    /// The configuration for a peer at `addr`.
    fn for_peer(&self, addr: SocketAddr) -> quinn::ClientConfig {
        if is_loopback(addr) {
            self.loopback.clone()
        } else {
            self.network.clone()
        }
    }
}

/// The node's QUIC endpoint with its TLS configuration.
///
/// Driven by its users: [`receive`](Self::receive) when the socket is readable (see
/// [`socket_handle`](Self::socket_handle)), connections by the calls on them, QUIC timers by
/// the endpoint's timer thread.
#[derive(Clone)]
pub struct DistEndpoint {
    endpoint: crate::direct::Endpoint,
    opts: TransportOptions,
    /// For loopback peers path MTU discovery may go up to `max_udp_payload` (see
    /// [`TransportOptions::for_loopback`]). Replaced by [`set_tls`](Self::set_tls).
    clients: Arc<std::sync::Mutex<ClientConfigs>>,
    listening: bool,
    on_connection: Arc<std::sync::Mutex<Option<OnConnection>>>,
    on_held: Arc<std::sync::Mutex<Option<OnHeld>>>,
    refusal_log: Arc<RateLimit>,
}

impl std::fmt::Debug for DistEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistEndpoint")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl DistEndpoint {
    /// Binds the UDP socket. With `listen`, the endpoint also accepts connections.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsMaterial,
        listen: bool,
        opts: TransportOptions,
    ) -> Result<Self, TransportError> {
        let (server, loopback_server) = if listen {
            let (server, loopback) = server_configs(tls, &opts)?;
            (Some(server), Some(loopback))
        } else {
            (None, None)
        };
        let socket = bind_udp(addr, opts.socket_buffer)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let endpoint = crate::direct::Endpoint::with_loopback_server(
            socket,
            opts.quinn_endpoint(),
            server,
            loopback_server,
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        Ok(Self {
            endpoint,
            clients: Arc::new(std::sync::Mutex::new(ClientConfigs::new(tls, &opts)?)),
            listening: listen,
            opts,
            on_connection: Arc::default(),
            on_held: Arc::default(),
            refusal_log: Arc::new(RateLimit::new()),
        })
    }

    /// Uses `tls` for the connections made or accepted from now on (held ones included);
    /// established connections keep theirs. For a node whose identity changes while it runs
    /// (a new cookie in cookie mode, renewed certificate files). Session tickets issued under
    /// the old configuration are not used.
    pub fn set_tls(&self, tls: &TlsMaterial) -> Result<(), TransportError> {
        let clients = ClientConfigs::new(tls, &self.opts)?;
        if self.listening {
            let (server, loopback) = server_configs(tls, &self.opts)?;
            self.endpoint.set_server_configs(server, Some(loopback));
        }
        if let Ok(mut slot) = self.clients.lock() {
            *slot = clients;
        }
        Ok(())
    }

    /// From now on, incoming connections wait before their TLS handshake until
    /// [`admit_held`](Self::admit_held); `on_held` is called (on the receiving thread) when
    /// some start waiting. This lets the node settle its identity first ([`set_tls`]).
    ///
    /// [`set_tls`]: Self::set_tls
    pub fn hold_incoming<F>(&self, on_held: F)
    where
        F: Fn() + Send + Sync + 'static,
    {
        if let Ok(mut slot) = self.on_held.lock() {
            *slot = Some(Arc::new(on_held));
        }
        self.endpoint.hold_incoming();
    }

    /// Starts the handshakes of the incoming connections held so far (see
    /// [`hold_incoming`](Self::hold_incoming)), on this thread.
    pub fn admit_held(&self) {
        self.endpoint.admit_held();
        self.start_all_accepted();
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

    /// Another handle on the UDP socket (a duplicate descriptor), to learn when it is readable.
    pub fn socket_handle(&self) -> std::io::Result<std::net::UdpSocket> {
        self.endpoint.socket_handle()
    }

    /// From now on, each peer that completes the QUIC handshake and opens its stream is passed
    /// to `on_connection`; failures are logged with the peer address.
    pub fn accept_loop<F>(&self, on_connection: F)
    where
        F: Fn(DistConnection) + Send + Sync + 'static,
    {
        if let Ok(mut slot) = self.on_connection.lock() {
            *slot = Some(Arc::new(on_connection));
        }
    }

    /// Reads what waits on the socket and does what follows from it on this thread: QUIC,
    /// deliveries, new connections. Call it whenever the socket is readable.
    pub fn receive(&self) -> std::io::Result<usize> {
        self.receive_some(usize::MAX)
    }

    /// [`receive`](Self::receive), reading at most `max_batches` batches of datagrams (a
    /// socket with more waiting stays readable). Returns the datagrams read.
    pub fn receive_some(&self, max_batches: usize) -> std::io::Result<usize> {
        self.after_receive(self.endpoint.receive_batches(max_batches))
    }

    /// [`receive_some`](Self::receive_some) for a poller, which reads whether or not the
    /// socket is readable (see `direct::Endpoint::poll_batches`).
    pub fn poll_some(&self, max_batches: usize) -> std::io::Result<usize> {
        self.after_receive(self.endpoint.poll_batches(max_batches))
    }

    /// After a successful read (`received`, passed on): logs refusals, admits held
    /// connections and starts accepted ones.
    fn after_receive(&self, received: std::io::Result<usize>) -> std::io::Result<usize> {
        let received = received?;
        for (remote, error) in self.endpoint.take_refused() {
            if let Some(suppressed) = self.refusal_log.admit(remote) {
                let error = describe_close(&error);
                warn!(%remote, %error, suppressed, "refused incoming connection");
            }
        }
        if self.endpoint.take_admission_due() {
            if let Some(on_held) = self.on_held.lock().ok().and_then(|s| s.clone()) {
                on_held();
            }
        }
        self.start_all_accepted();
        Ok(received)
    }

    fn start_all_accepted(&self) {
        while let Some(conn) = self.endpoint.accept() {
            self.start_accepted(crate::direct::compat::Connection(conn));
        }
        self.endpoint.run_tasks();
    }

    fn start_accepted(&self, conn: crate::direct::compat::Connection) {
        let on_connection = self.on_connection.lock().ok().and_then(|s| s.clone());
        let refusal_log = self.refusal_log.clone();
        let remote = conn.remote_address();
        let opts = opts_for_peer(&self.opts, remote);
        let task_conn = conn.clone();
        conn.spawn(async move {
            let conn = task_conn;
            match conn
                .timeout(opts.handshake_timeout, establish(&conn, &opts, false))
                .await
            {
                Ok(Ok(dist)) => {
                    debug!(%remote, "accepted quic connection");
                    match on_connection {
                        Some(f) => f(dist),
                        None => dist.close("not accepting connections"),
                    }
                }
                // The peer's application gave up on the connection (a node that lost a
                // simultaneous connect, or stopped): nothing was refused here. Or, as the
                // connecting side, it refused this node's identity, and its reason says why.
                Ok(Err(crate::direct::StreamError::ConnectionLost(e))) if peer_gave_up(&e) => {
                    if let Some(suppressed) = refusal_log.admit(remote) {
                        if let Some(refusal) = peer_refusal(&e) {
                            warn!(%remote, reason = %refusal, suppressed,
                                  "quic_dist handshake failed: the peer refused this node")
                        } else {
                            info!(%remote, reason = %e, suppressed,
                                  "incoming connection closed by the peer during its set-up")
                        }
                    }
                }
                Ok(Err(crate::direct::StreamError::ConnectionLost(e))) => {
                    if let Some(suppressed) = refusal_log.admit(remote) {
                        // The peer refused this node's certificate: nothing was refused here.
                        let what = match CertificateRefusal::of(&e) {
                            Some(r) if r.refused == Refused::OwnCertificate => {
                                "incoming connection failed"
                            }
                            _ => "refused incoming connection",
                        };
                        warn!(%remote, error = %describe_close(&e), suppressed, "{what}")
                    }
                }
                Ok(Err(e)) => {
                    if let Some(suppressed) = refusal_log.admit(remote) {
                        warn!(%remote, error = %e, suppressed, "refused incoming connection")
                    }
                }
                Err(_) => {
                    conn.close(quinn::VarInt::from_u32(0), b"handshake timeout");
                    if let Some(suppressed) = refusal_log.admit(remote) {
                        warn!(%remote, suppressed, "refused incoming connection: handshake timed out")
                    }
                }
            }
        });
    }

    /// Connects to a node at `addr`, verifying that its certificate names `server_name`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<DistConnection, TransportError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn_connect(addr, server_name.to_string(), move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or(Err(TransportError::Closed))
    }

    /// Client configurations with the identity and trust `tls`, made with this endpoint's
    /// options, for [`spawn_connect_as`](Self::spawn_connect_as).
    pub fn client_configs(&self, tls: &TlsMaterial) -> Result<ClientConfigs, TransportError> {
        ClientConfigs::new(tls, &self.opts)
    }

    /// Connects to a node at `addr`, verifying that its certificate names `server_name`, and
    /// calls `done` with the result (on whichever thread completes it).
    pub fn spawn_connect<F>(&self, addr: SocketAddr, server_name: String, done: F)
    where
        F: FnOnce(Result<DistConnection, TransportError>) + Send + 'static,
    {
        self.spawn_connect_as(addr, server_name, None, done)
    }

    /// [`spawn_connect`](Self::spawn_connect) with the identity and trust of `clients`
    /// instead of the endpoint's own (see [`client_configs`](Self::client_configs)).
    pub fn spawn_connect_as<F>(
        &self,
        addr: SocketAddr,
        server_name: String,
        clients: Option<&ClientConfigs>,
        done: F,
    ) where
        F: FnOnce(Result<DistConnection, TransportError>) + Send + 'static,
    {
        let config = match clients {
            Some(c) => c.for_peer(addr),
            None => match self.clients.lock() {
                Ok(c) => c.for_peer(addr),
                Err(_) => {
                    done(Err(TransportError::Closed));
                    return;
                }
            },
        };
        let conn = match self.endpoint.connect(config, addr, &server_name) {
            Ok(c) => crate::direct::compat::Connection(c),
            Err(e) => {
                debug!(%addr, %server_name, error = %e, "outgoing connection failed");
                done(Err(TransportError::Connect(e)));
                return;
            }
        };
        let opts = opts_for_peer(&self.opts, addr);
        let task_conn = conn.clone();
        conn.spawn(async move {
            let conn = task_conn;
            let result = match conn
                .timeout(opts.handshake_timeout, establish(&conn, &opts, true))
                .await
            {
                Ok(Ok(dist)) => Ok(dist),
                Ok(Err(crate::direct::StreamError::ConnectionLost(e))) => {
                    Err(TransportError::Connection(e))
                }
                Ok(Err(e)) => Err(TransportError::Stream(e)),
                Err(_) => {
                    conn.close(quinn::VarInt::from_u32(0), b"handshake timeout");
                    Err(TransportError::Timeout("quic handshake"))
                }
            };
            // At debug only: the caller has the error, and quic_dist logs it with the node's
            // name (a warning from here too doubled every failed attempt in the log).
            if let Err(e) = &result {
                debug!(%addr, %server_name, error = %e, "outgoing connection failed");
            }
            done(result)
        });
        self.endpoint.run_tasks();
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
        if let Ok(mut slot) = self.on_connection.lock() {
            *slot = None;
        }
        self.endpoint
            .close_all(quinn::VarInt::from_u32(0), reason.as_bytes());
        info!("endpoint closed");
    }

    /// Waits until close notifications have been sent, at most `limit`.
    pub fn wait_idle_blocking(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self.endpoint.is_idle() && std::time::Instant::now() < deadline {
            // The timer thread drains closing connections; look again shortly.
            std::thread::sleep(std::time::Duration::from_millis(5));
            let _ = self.endpoint.receive();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_giving_up_is_told_from_a_refusal() {
        use quinn_proto::{ApplicationClose, ConnectionClose, TransportErrorCode, VarInt};
        let transport = |error_code| {
            quinn::ConnectionError::ConnectionClosed(ConnectionClose {
                error_code,
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        let app = quinn::ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(0),
            reason: bytes::Bytes::from_static(b"connection dropped"),
        });
        assert!(peer_gave_up(&app));
        assert!(peer_gave_up(&transport(
            TransportErrorCode::APPLICATION_ERROR
        )));
        // TLS alert 42 (bad certificate): the peer refused us, worth a warning.
        assert!(!peer_gave_up(&transport(TransportErrorCode::crypto(42))));
        assert!(!peer_gave_up(&quinn::ConnectionError::TimedOut));
    }

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
