//! A distribution connection: framed packets on one QUIC stream, batched both ways, with
//! bounded queues.
//!
//! Two tokio tasks serve a connection once [`DistConnection::start`] is called:
//! - the writer drains the send queue and writes whole batches with one `write_all_chunks`;
//! - the reader reads whatever chunks are available, splits them into frames, and hands every
//!   complete packet of that read to [`ConnectionEvents::packets`] as one batch.
//!
//! Callers on BEAM scheduler threads only touch atomics and an unbounded channel whose size is
//! bounded by the high-water protocol, so no call here blocks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quic_dist_core::limits::{
    RECV_BATCH_BYTES, RECV_BATCH_PACKETS, RECV_UNACKED_LIMIT, SEND_QUEUE_HIGH_WATER,
    SEND_QUEUE_LOW_WATER,
};
use quic_dist_core::{Frame, FrameDecoder, FrameEncoder};
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use crate::error::TransportError;
use crate::tls::CIPHER_SUITE;

/// QUIC application error code for a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code when the peer broke the framing rules.
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;

/// Complete packets read in one go, in stream order.
#[derive(Debug, Default)]
pub struct PacketBatch {
    /// The packets, each to be given whole to `dist_ctrl_put_data/2`.
    pub packets: Vec<Bytes>,
    /// Their total size; pass it back to [`DistConnection::ack`] once consumed.
    pub bytes: usize,
}

/// What the connection tells its owner. Called from tokio worker threads.
pub trait ConnectionEvents: Send + Sync + 'static {
    /// Packets arrived.
    fn packets(&self, batch: PacketBatch);
    /// The connection is gone (peer closed, lost, timed out or misbehaved); called once.
    fn closed(&self, reason: String);
    /// The send queue drained below the low-water mark after a [`SendStatus::Busy`].
    fn writable(&self);
}

/// Answer of [`DistConnection::send`]: the batch is always queued; `Busy` asks the caller to stop
/// sending until [`ConnectionEvents::writable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Keep sending.
    Ready,
    /// Queue above the high-water mark: wait for `writable`.
    Busy,
}

/// Counters of a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    /// UDP datagrams received: any sign of life from the peer, data, acks or ticks.
    pub datagrams_received: u64,
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// UDP payload bytes received and sent.
    pub udp_bytes_received: u64,
    /// UDP payload bytes sent.
    pub udp_bytes_sent: u64,
    /// Distribution packets (and ticks) queued for sending since the start.
    pub packets_sent: u64,
    /// Distribution packets (and ticks) received since the start.
    pub packets_received: u64,
    /// Bytes queued and not yet taken by QUIC.
    pub queued_bytes: usize,
    /// Bytes delivered to the owner and not yet acknowledged.
    pub unacked_bytes: usize,
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// QUIC packets declared lost.
    pub lost_packets: u64,
    /// QUIC packets sent.
    pub quic_packets_sent: u64,
    /// Streams carrying distribution data.
    pub streams: u32,
}

/// What a connection is: peer, TLS parameters and identity.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's UDP address.
    pub remote: SocketAddr,
    /// The negotiated TLS cipher suite.
    pub cipher_suite: &'static str,
    /// The TLS version.
    pub tls_version: &'static str,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The peer's certificate chain, leaf first, DER.
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

/// What the writer task receives, in order.
enum Outgoing {
    /// Framed packets.
    Data(Bytes),
    /// Send what is queued, end the stream, wait (bounded) for the peer to acknowledge it, close.
    Shutdown(String),
}

/// Longest a graceful shutdown waits for the peer to acknowledge the end of the stream.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct Shared {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: AtomicUsize,
    paused: AtomicBool,
    unacked: AtomicUsize,
    credit: Notify,
    packets_sent: AtomicU64,
    packets_received: AtomicU64,
    closed_reported: AtomicBool,
    peer_error_logged: AtomicBool,
    events: OnceLock<Arc<dyn ConnectionEvents>>,
}

impl Shared {
    fn report_closed(&self, reason: String) {
        if !self.closed_reported.swap(true, SeqCst) {
            if let Some(ev) = self.events.get() {
                ev.closed(reason);
            }
        }
    }
}

/// One distribution connection to a peer node.
pub struct DistConnection {
    conn: quinn::Connection,
    shared: Arc<Shared>,
    unstarted: Mutex<
        Option<(
            quinn::SendStream,
            quinn::RecvStream,
            mpsc::UnboundedReceiver<Outgoing>,
        )>,
    >,
    runtime: tokio::runtime::Handle,
    encoder: FrameEncoder,
    max_frame: usize,
}

impl std::fmt::Debug for DistConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistConnection")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl DistConnection {
    pub(crate) fn new(
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        runtime: tokio::runtime::Handle,
        max_frame: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            conn,
            shared: Arc::new(Shared {
                tx,
                queued: AtomicUsize::new(0),
                paused: AtomicBool::new(false),
                unacked: AtomicUsize::new(0),
                credit: Notify::new(),
                packets_sent: AtomicU64::new(0),
                packets_received: AtomicU64::new(0),
                closed_reported: AtomicBool::new(false),
                peer_error_logged: AtomicBool::new(false),
                events: OnceLock::new(),
            }),
            unstarted: Mutex::new(Some((send, recv, rx))),
            runtime,
            encoder: FrameEncoder::new(max_frame),
            max_frame,
        }
    }

    /// Starts reading and writing; `events` receives packets and notifications from now on.
    pub fn start(&self, events: Arc<dyn ConnectionEvents>) -> Result<(), TransportError> {
        let Some((send, recv, rx)) = self
            .unstarted
            .lock()
            .map_err(|_| TransportError::Closed)?
            .take()
        else {
            return Err(TransportError::Closed);
        };
        let _ = self.shared.events.set(events);
        self.runtime
            .spawn(write_loop(self.conn.clone(), send, rx, self.shared.clone()));
        self.runtime.spawn(read_loop(
            self.conn.clone(),
            recv,
            self.shared.clone(),
            self.max_frame,
        ));
        Ok(())
    }

    /// The encoder whose frames [`send`](Self::send) expects.
    pub fn encoder(&self) -> FrameEncoder {
        self.encoder
    }

    /// Queues already framed packets (`packets` of them) for sending. Never blocks.
    pub fn send(&self, framed: Bytes, packets: u64) -> Result<SendStatus, TransportError> {
        let len = framed.len();
        let queued = self.shared.queued.fetch_add(len, SeqCst) + len;
        if self.shared.tx.send(Outgoing::Data(framed)).is_err() {
            self.shared.queued.fetch_sub(len, SeqCst);
            return Err(TransportError::Closed);
        }
        self.shared.packets_sent.fetch_add(packets, SeqCst);
        if queued <= SEND_QUEUE_HIGH_WATER {
            return Ok(SendStatus::Ready);
        }
        self.shared.paused.store(true, SeqCst);
        // The writer may have drained the queue between our add and the store above; in that
        // case it did not see `paused` and will never call `writable`, so undo it here.
        if self.shared.queued.load(SeqCst) < SEND_QUEUE_LOW_WATER
            && self.shared.paused.swap(false, SeqCst)
        {
            return Ok(SendStatus::Ready);
        }
        Ok(SendStatus::Busy)
    }

    /// Sends a tick (an empty frame) unless data is already queued, which proves liveness too.
    pub fn tick(&self) -> Result<(), TransportError> {
        if self.shared.queued.load(SeqCst) > 0 {
            return Ok(());
        }
        let mut buf = BytesMut::with_capacity(4);
        self.encoder.encode_tick(&mut buf);
        self.send(buf.freeze(), 1).map(|_| ())
    }

    /// The owner consumed `bytes` of delivered packets: the reader may read that much more.
    pub fn ack(&self, bytes: usize) {
        let _ = self
            .shared
            .unacked
            .fetch_update(SeqCst, SeqCst, |u| Some(u.saturating_sub(bytes)));
        self.shared.credit.notify_one();
    }

    /// Current counters.
    pub fn stats(&self) -> ConnectionStats {
        let s = self.conn.stats();
        ConnectionStats {
            datagrams_received: s.udp_rx.datagrams,
            datagrams_sent: s.udp_tx.datagrams,
            udp_bytes_received: s.udp_rx.bytes,
            udp_bytes_sent: s.udp_tx.bytes,
            packets_sent: self.shared.packets_sent.load(SeqCst),
            packets_received: self.shared.packets_received.load(SeqCst),
            queued_bytes: self.shared.queued.load(SeqCst),
            unacked_bytes: self.shared.unacked.load(SeqCst),
            rtt: s.path.rtt,
            cwnd: s.path.cwnd,
            lost_packets: s.path.lost_packets,
            quic_packets_sent: s.path.sent_packets,
            streams: 1,
        }
    }

    /// Peer address, TLS parameters and peer certificates.
    pub fn info(&self) -> ConnectionInfo {
        let (alpn, server_name) = self
            .conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .map(|h| (h.protocol, h.server_name))
            .unwrap_or((None, None));
        let peer_certificates = self
            .conn
            .peer_identity()
            .and_then(|p| p.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        ConnectionInfo {
            remote: self.conn.remote_address(),
            cipher_suite: CIPHER_SUITE,
            tls_version: "TLSv1.3",
            alpn,
            server_name,
            peer_certificates,
        }
    }

    /// True if the peer's certificate is valid for `host` (a DNS name or an IP address), by
    /// the same rules TLS uses for server names (webpki). False without a peer certificate.
    pub fn peer_certificate_names(&self, host: &str) -> bool {
        let Some(certs) = self
            .conn
            .peer_identity()
            .and_then(|p| p.downcast::<Vec<CertificateDer<'static>>>().ok())
        else {
            return false;
        };
        let Some(leaf) = certs.first() else {
            return false;
        };
        let Ok(name) = rustls_pki_types::ServerName::try_from(host) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
            .is_ok()
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Closes the connection now; the peer is told at once.
    pub fn close(&self, reason: &str) {
        self.conn
            .close(quinn::VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
    }

    /// Closes gracefully: what is queued is still sent, the stream is ended, and the connection
    /// closes once the peer has acknowledged it (at most [`SHUTDOWN_GRACE`] later). Never blocks.
    pub fn shutdown(&self, reason: &str) {
        if self.unstarted.lock().map(|u| u.is_some()).unwrap_or(false) {
            // No writer runs yet: nothing can be queued behind us.
            self.close(reason);
        } else if self
            .shared
            .tx
            .send(Outgoing::Shutdown(reason.to_string()))
            .is_err()
        {
            self.close(reason);
        }
    }
}

impl Drop for DistConnection {
    fn drop(&mut self) {
        // The tasks hold clones of the quinn connection, so end it explicitly, but gracefully:
        // what the owner queued last (e.g. a handshake refusal) must still reach the peer.
        self.shutdown("connection dropped");
    }
}

async fn write_loop(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut bufs: Vec<Bytes> = Vec::with_capacity(64);
    let mut shutdown = None;
    loop {
        let first = tokio::select! {
            b = rx.recv() => b,
            e = conn.closed() => { debug!(error = %e, "writer stops: connection closed"); return; }
        };
        match first {
            None => return,
            Some(Outgoing::Data(b)) => bufs.push(b),
            Some(Outgoing::Shutdown(reason)) => shutdown = Some(reason),
        }
        while bufs.len() < 64 && shutdown.is_none() {
            match rx.try_recv() {
                Ok(Outgoing::Data(b)) => bufs.push(b),
                Ok(Outgoing::Shutdown(reason)) => shutdown = Some(reason),
                Err(_) => break,
            }
        }
        let n: usize = bufs.iter().map(Bytes::len).sum();
        if let Err(e) = send.write_all_chunks(&mut bufs).await {
            let reason = closed_reason(&conn, &shared, format!("write failed: {e}"));
            // A stopped stream leaves the connection open: close it, the stream is the link.
            conn.close(
                quinn::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                b"distribution stream failed",
            );
            shared.report_closed(reason);
            return;
        }
        bufs.clear();
        let left = shared.queued.fetch_sub(n, SeqCst) - n;
        if left < SEND_QUEUE_LOW_WATER && shared.paused.swap(false, SeqCst) {
            if let Some(ev) = shared.events.get() {
                ev.writable();
            }
        }
        if let Some(reason) = shutdown.take() {
            finish_and_close(&conn, &mut send, &reason).await;
            return;
        }
    }
}

/// Ends the stream after everything written so far, waits until the peer has acknowledged
/// it (or closed, or [`SHUTDOWN_GRACE`] passed), then closes the connection. Like a TCP close,
/// the last packets (a `nok` handshake status, the final messages) reach the peer.
async fn finish_and_close(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: &str) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, send.stopped()).await;
    }
    conn.close(quinn::VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
}

async fn read_loop(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    max_frame: usize,
) {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut chunks = vec![Bytes::new(); 32];
    let mut batch = PacketBatch::default();
    loop {
        // Backpressure: stop reading while the owner has too much unconsumed data, but still
        // notice a close: otherwise a stalled owner is never told, and a dropped one leaks
        // this task (and the connection state it holds) forever.
        while shared.unacked.load(SeqCst) >= RECV_UNACKED_LIMIT {
            tokio::select! {
                () = shared.credit.notified() => {}
                e = conn.closed() => {
                    shared.report_closed(describe_close(&e));
                    return;
                }
            }
        }
        let n = match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                let reason = match decoder.finish() {
                    Ok(()) => {
                        // A graceful shutdown: the peer closes once we acknowledged the end of
                        // the stream, with its reason; wait for it (bounded) to report that.
                        match tokio::time::timeout(SHUTDOWN_GRACE, conn.closed()).await {
                            Ok(e) => describe_close(&e),
                            Err(_) => "peer finished its stream".to_string(),
                        }
                    }
                    Err(e) => format!("peer finished its stream mid-frame: {e}"),
                };
                conn.close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"stream finished");
                shared.report_closed(reason);
                return;
            }
            Err(e) => {
                let reason = closed_reason(&conn, &shared, format!("read failed: {e}"));
                conn.close(
                    quinn::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                    b"distribution stream failed",
                );
                shared.report_closed(reason);
                return;
            }
        };
        for chunk in &mut chunks[..n] {
            decoder.push(chunk);
            *chunk = Bytes::new();
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(Frame::Tick)) => {
                    shared.packets_received.fetch_add(1, SeqCst);
                }
                Ok(Some(Frame::Packet(p))) => {
                    shared.packets_received.fetch_add(1, SeqCst);
                    batch.bytes += p.len();
                    batch.packets.push(p);
                    if batch.packets.len() >= RECV_BATCH_PACKETS || batch.bytes >= RECV_BATCH_BYTES
                    {
                        deliver(&shared, &mut batch);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(remote = %conn.remote_address(), error = %e, "closing connection: peer broke the framing");
                    conn.close(
                        quinn::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                        b"framing error",
                    );
                    shared.report_closed(format!("protocol error from peer: {e}"));
                    return;
                }
            }
        }
        deliver(&shared, &mut batch);
    }
}

fn deliver(shared: &Shared, batch: &mut PacketBatch) {
    if batch.packets.is_empty() {
        return;
    }
    let b = std::mem::take(batch);
    shared.unacked.fetch_add(b.bytes, SeqCst);
    if let Some(ev) = shared.events.get() {
        ev.packets(b);
    }
}

/// Why the connection is gone: QUIC's close reason if it has one, else `fallback`.
///
/// A transport-level close by the peer (typically a TLS alert: the peer refused our certificate)
/// is logged, once per connection: with TLS 1.3 a client learns of it only after its own side of
/// the handshake, and the Erlang side may be gone before it could log it.
fn closed_reason(conn: &quinn::Connection, shared: &Shared, fallback: String) -> String {
    let Some(close) = conn.close_reason() else {
        return fallback;
    };
    let reason = describe_close(&close);
    if matches!(close, quinn::ConnectionError::ConnectionClosed(_))
        && !shared.peer_error_logged.swap(true, SeqCst)
    {
        warn!(remote = %conn.remote_address(), error = %reason, "peer closed the connection with an error");
    }
    reason
}

/// A readable account of why a connection closed.
pub fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!("closed by peer: {}", String::from_utf8_lossy(&c.reason))
        }
        quinn::ConnectionError::LocallyClosed => "closed locally".to_string(),
        quinn::ConnectionError::TimedOut => "idle timeout: no packet from the peer".to_string(),
        other => other.to_string(),
    }
}
