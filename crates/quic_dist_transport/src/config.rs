//! Transport settings: windows, timeouts, frame limits.

use std::sync::Arc;
use std::time::Duration;

use quic_dist_core::limits::DEFAULT_MAX_FRAME;
use quic_dist_core::stream_map::MAX_DATA_STREAMS;

/// Data streams per direction unless configured.
pub const DEFAULT_STREAMS: usize = 8;

/// Receive window of one stream unless configured, bytes.
pub const DEFAULT_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Settings shared by every connection of an endpoint.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Receive window of one stream, in bytes (bounds what the peer may have in flight on it).
    pub stream_window: u32,
    /// Receive window of a whole connection, in bytes. At least `streams + 1` stream windows,
    /// so that data streams stalled by a slow consumer never block the control stream.
    pub connection_window: u32,
    /// Send window of a connection, in bytes.
    pub send_window: u64,
    /// Data streams a node sends on (1: everything on the control stream, in one order).
    pub streams: usize,
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
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: (DEFAULT_STREAMS as u32 + 1) * DEFAULT_STREAM_WINDOW,
            send_window: u64::from((DEFAULT_STREAMS as u32 + 1) * DEFAULT_STREAM_WINDOW),
            streams: DEFAULT_STREAMS,
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
            // The control stream is the one bidirectional stream; data streams are
            // unidirectional, opened by their sender.
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_DATA_STREAMS as u32))
            .keep_alive_interval(None);
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::from_u32(300_000)));
        t.max_idle_timeout(Some(idle));
        Arc::new(t)
    }
}
