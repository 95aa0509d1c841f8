//! The node's one QUIC endpoint: a single UDP socket for every connection, in and out.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::config::TransportOptions;
use crate::connection::DistConnection;
use crate::error::TransportError;
use crate::tls::TlsMaterial;

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

/// A quinn endpoint with the node's TLS configuration.
#[derive(Debug, Clone)]
pub struct DistEndpoint {
    endpoint: quinn::Endpoint,
    runtime: tokio::runtime::Handle,
    opts: TransportOptions,
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
        let server = if listen {
            Some(tls.server_config(&opts)?)
        } else {
            None
        };
        let socket = bind_udp(addr, opts.socket_buffer)
            .map_err(|source| TransportError::Bind { addr, source })?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| TransportError::Bind { addr, source })?;
        endpoint.set_default_client_config(tls.client_config(&opts)?);
        Ok(Self {
            endpoint,
            runtime,
            opts,
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
        self.runtime.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let remote = incoming.remote_address();
                let on_connection = on_connection.clone();
                let runtime = runtime.clone();
                let opts = opts.clone();
                runtime.clone().spawn(async move {
                    let handshake = async {
                        let conn = incoming.await?;
                        let (send, recv) = conn.accept_bi().await?;
                        Ok::<_, TransportError>(DistConnection::new(
                            conn,
                            send,
                            recv,
                            runtime,
                            opts.max_frame,
                        ))
                    };
                    match tokio::time::timeout(opts.handshake_timeout, handshake).await {
                        Ok(Ok(conn)) => {
                            debug!(%remote, "accepted quic connection");
                            on_connection(conn)
                        }
                        Ok(Err(e)) => warn!(%remote, error = %e, "refused incoming connection"),
                        Err(_) => {
                            warn!(%remote, "refused incoming connection: handshake timed out")
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
        let connecting = self.endpoint.connect(addr, server_name)?;
        let handshake = async {
            let conn = connecting.await?;
            let (send, recv) = conn.open_bi().await?;
            Ok::<_, TransportError>(DistConnection::new(
                conn,
                send,
                recv,
                self.runtime.clone(),
                self.opts.max_frame,
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
