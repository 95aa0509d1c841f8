//! Transport settings: windows, timeouts, frame limits.

use std::sync::Arc;
use std::time::Duration;

use quic_dist_core::limits::DEFAULT_MAX_FRAME;

/// Settings shared by every connection of an endpoint.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Receive window of one stream, in bytes (bounds what the peer may have in flight on it).
    pub stream_window: u32,
    /// Receive window of a whole connection, in bytes.
    pub connection_window: u32,
    /// Send window of a connection, in bytes.
    pub send_window: u64,
    /// A connection with no packet received for this long is closed by QUIC itself.
    /// Distribution ticks normally notice a dead peer first.
    pub idle_timeout: Duration,
    /// Time allowed for the QUIC handshake and the first stream of an incoming connection.
    pub handshake_timeout: Duration,
    /// Largest distribution packet accepted.
    pub max_frame: usize,
    /// Kernel buffer asked for the UDP socket, each direction, in bytes.
    pub socket_buffer: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            stream_window: 16 * 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            send_window: 32 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            socket_buffer: 4 * 1024 * 1024,
        }
    }
}

impl TransportOptions {
    /// The quinn transport configuration these settings describe.
    pub fn quinn_transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window))
            .receive_window(quinn::VarInt::from_u32(self.connection_window))
            .send_window(self.send_window)
            // One stream carries the connection; extra streams from a peer would only eat the
            // connection window.
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .keep_alive_interval(None);
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(300_000)));
        t.max_idle_timeout(Some(idle));
        Arc::new(t)
    }
}
