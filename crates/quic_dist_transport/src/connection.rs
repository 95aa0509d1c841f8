//! A distribution connection: framed packets on QUIC streams, batched both ways, with bounded
//! queues.
//!
//! Streams: the bidirectional stream opened with the connection is the *control* stream
//! (handshake messages, ticks, and all data when one stream is used); in multi-stream data mode
//! each side also opens up to `streams` unidirectional *data* streams, and packets are spread
//! over them by ordering key ([`quic_dist_core::stream_map`]). See [`crate::send`] and
//! [`crate::recv`] for the tasks that serve them.
//!
//! Callers on BEAM scheduler threads only touch atomics, an uncontended mutex and unbounded
//! channels whose size is bounded by the high-water protocol, so no call here blocks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quic_dist_core::fragments::JoinBuffer;
use quic_dist_core::in_flight::InFlightPolicy;
use quic_dist_core::limits::{RECV_BATCH_BYTES, RECV_RESUME};
use quic_dist_core::stream_map::{StreamMapper, MAX_DATA_STREAMS};
use quic_dist_core::{FrameEncoder, Packet};
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use crate::certificate_refusal::CertificateRefusal;
use crate::config::TransportOptions;
use crate::direct::compat;
use crate::error::TransportError;
use crate::recv::{accept_data_streams, control_reader};
use crate::send::{data_writer, write_loop, Lane, Outgoing, Queued, SendBatch, StreamQueue};
use crate::tls::CIPHER_SUITE;

/// QUIC application error code for a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application error code when the peer broke the framing rules.
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;

/// Complete packets read in one go from one stream, in stream order.
#[derive(Debug, Default)]
pub struct PacketBatch {
    /// The stream they came from: 0 for the control stream, `i + 1` for data stream `i`.
    pub channel: usize,
    /// The packets, each to be given whole to `dist_ctrl_put_data/2` (in pieces as they
    /// arrived: the owner copies them once into its own buffers).
    pub packets: Vec<Packet>,
    /// Their total size; pass it back with `channel` to [`DistConnection::ack`] once consumed.
    pub bytes: usize,
    /// The receivers of the messages among them (encoded pid or registered name) and how many
    /// bytes each got, fragments included: lets the owner notice a mailbox that grows.
    pub receivers: Vec<(Bytes, usize)>,
    /// A long message copied into a buffer from [`ConnectionEvents::join_buffer`] as its
    /// fragments arrived: then the batch's only packet (`packets` is empty).
    pub joined: Option<JoinedPacket>,
}

/// A whole packet in a buffer of the owner's (see [`quic_dist_core::fragments`]).
pub struct JoinedPacket(pub Box<dyn JoinBuffer>);

impl std::fmt::Debug for JoinedPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinedPacket({} bytes)", self.0.as_slice().len())
    }
}

/// What the connection tells its owner. Called from tokio worker threads.
pub trait ConnectionEvents: Send + Sync + 'static {
    /// Packets arrived.
    fn packets(&self, batch: PacketBatch);
    /// The connection is gone (peer closed, lost, timed out or misbehaved); called once.
    fn closed(&self, reason: String);
    /// The send queue drained below the low-water mark after a [`SendStatus::Busy`].
    fn writable(&self);
    /// Data stream `stream` drained below its low-water mark after senders on it were
    /// throttled (see [`Submitted::throttle`](crate::send::Submitted::throttle)).
    fn stream_writable(&self, stream: usize) {
        let _ = stream;
    }
    /// A buffer of about `capacity` bytes to copy a long message into as its fragments arrive
    /// (any thread); `None` (the default) lets such messages pass through as fragments.
    fn join_buffer(&self, capacity: usize) -> Option<Box<dyn JoinBuffer>> {
        let _ = capacity;
        None
    }
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
    /// Current maximum UDP payload of the path (PLPMTUD), bytes.
    pub mtu: u16,
    /// Times the path MTU fell back to the minimum after suspected black holes.
    pub black_holes: u64,
    /// Streams this side sends distribution data on (the control stream when only one).
    pub streams: u32,
    /// Data streams the peer opened towards us.
    pub peer_streams: u32,
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

/// Longest a graceful shutdown waits for the peer to acknowledge the end of the streams.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Longest a graceful shutdown takes in all, queued data included: then the connection closes.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// Receive-side state of one stream (a channel: 0 = control, `i + 1` = data stream `i`).
#[derive(Default)]
pub(crate) struct Channel {
    pub(crate) unacked: AtomicUsize,
    pub(crate) credit: Notify,
    pub(crate) delivered: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) control: StreamQueue,
    pub(crate) data: OnceLock<Vec<StreamQueue>>,
    pub(crate) mapper: Mutex<Option<StreamMapper>>,
    /// Narrows the send window while small messages share the connection with bulk data.
    pub(crate) in_flight: Mutex<Option<InFlightPolicy>>,
    /// Bytes queued on all streams and not yet taken by QUIC.
    pub(crate) queued: AtomicUsize,
    /// Of those, the bytes the high-water mark counts (see `Queued::counted`).
    pub(crate) counted: AtomicUsize,
    pub(crate) paused: AtomicBool,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) packets_received: AtomicU64,
    closed_reported: AtomicBool,
    peer_error_logged: AtomicBool,
    pub(crate) events: OnceLock<Arc<dyn ConnectionEvents>>,
    pub(crate) input_open: AtomicBool,
    pub(crate) input_opened: Notify,
    pub(crate) channels: Vec<Channel>,
    pub(crate) delivered_changed: Notify,
    /// Bit i: the peer opened data stream i.
    pub(crate) peer_streams: AtomicU64,
    pub(crate) data_readers: AtomicUsize,
    pub(crate) readers_changed: Notify,
}

impl Shared {
    pub(crate) fn report_closed(&self, reason: String) {
        if !self.closed_reported.swap(true, SeqCst) {
            if let Some(ev) = self.events.get() {
                ev.closed(reason);
            }
        }
    }
}

/// One distribution connection to a peer node.
pub struct DistConnection {
    pub(crate) conn: compat::Connection,
    pub(crate) shared: Arc<Shared>,
    unstarted: Mutex<
        Option<(
            compat::SendStream,
            compat::RecvStream,
            mpsc::UnboundedReceiver<Outgoing>,
        )>,
    >,
    pub(crate) encoder: FrameEncoder,
    max_frame: usize,
    /// The configured send window, and the smallest one while traffic is mixed (see
    /// [`InFlightPolicy`]).
    send_window: u64,
    mixed_window: u64,
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
        conn: compat::Connection,
        send: compat::SendStream,
        recv: compat::RecvStream,
        opts: &TransportOptions,
    ) -> Self {
        let max_frame = opts.max_frame;
        let (control, rx) = StreamQueue::new();
        Self {
            conn,
            shared: Arc::new(Shared {
                control,
                data: OnceLock::new(),
                mapper: Mutex::new(None),
                in_flight: Mutex::new(None),
                queued: AtomicUsize::new(0),
                counted: AtomicUsize::new(0),
                paused: AtomicBool::new(false),
                packets_sent: AtomicU64::new(0),
                packets_received: AtomicU64::new(0),
                closed_reported: AtomicBool::new(false),
                peer_error_logged: AtomicBool::new(false),
                events: OnceLock::new(),
                input_open: AtomicBool::new(false),
                input_opened: Notify::new(),
                channels: (0..=MAX_DATA_STREAMS).map(|_| Channel::default()).collect(),
                delivered_changed: Notify::new(),
                peer_streams: AtomicU64::new(0),
                data_readers: AtomicUsize::new(0),
                readers_changed: Notify::new(),
            }),
            unstarted: Mutex::new(Some((send, recv, rx))),
            encoder: FrameEncoder::new(max_frame),
            max_frame,
            send_window: opts.send_window,
            // BBR keeps its own queue short (about twice the bandwidth-delay product in flight),
            // and narrowing under it made its rate estimate collapse: a ping behind a stream over
            // a 100 Mbit/s link waited 200 ms at p99 instead of 44.
            mixed_window: if opts.paces() { 0 } else { opts.mixed_window },
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
        // Handshake messages and ticks go before data.
        let _ = send.set_priority(1);
        self.conn.spawn(write_loop(
            self.conn.clone(),
            send,
            rx,
            self.shared.clone(),
            Lane::Control,
        ));
        self.conn.spawn(control_reader(
            self.conn.clone(),
            recv,
            self.shared.clone(),
            self.max_frame,
        ));
        self.conn.spawn(accept_data_streams(
            self.conn.clone(),
            self.shared.clone(),
            self.max_frame,
        ));
        self.run_tasks();
        Ok(())
    }

    /// Switches sending to data mode over `streams` data streams (the handshake is over).
    /// With one stream, packets keep going on the control stream, in one order (as the atom
    /// cache requires). Call once, before the first data packet.
    pub fn start_data_streams(&self, streams: usize) -> Result<(), TransportError> {
        let streams = streams.min(MAX_DATA_STREAMS);
        if streams <= 1 {
            return Ok(());
        }
        let mut queues = Vec::with_capacity(streams);
        for index in 0..streams {
            let (q, rx) = StreamQueue::new();
            queues.push(q);
            self.conn.spawn(data_writer(
                self.conn.clone(),
                index,
                rx,
                self.shared.clone(),
            ));
        }
        self.shared
            .data
            .set(queues)
            .map_err(|_| TransportError::Closed)?;
        *self
            .shared
            .mapper
            .lock()
            .map_err(|_| TransportError::Closed)? = Some(StreamMapper::new(streams));
        *self
            .shared
            .in_flight
            .lock()
            .map_err(|_| TransportError::Closed)? = (self.mixed_window > 0)
            .then(|| InFlightPolicy::new(streams, self.send_window, self.mixed_window));
        self.run_tasks();
        Ok(())
    }

    /// The owner is ready for data packets: the peer's data streams may be delivered from now
    /// on (before, only the control stream is, so nothing overtakes the handshake).
    pub fn open_input(&self) {
        self.shared.input_open.store(true, SeqCst);
        self.shared.input_opened.notify_waiters();
        self.run_tasks();
    }

    /// Runs the ready tasks of the endpoint's connections: those this thread's calls woke, and
    /// readers that [`ack_later`](Self::ack_later) let go on (see `direct::exec`).
    pub fn run_tasks(&self) {
        self.conn.0.run_tasks();
    }

    /// A batch of packets to frame in place and queue with one [`SendBatch::submit`].
    pub fn batch(&self) -> SendBatch<'_> {
        SendBatch::new(self)
    }

    /// The encoder whose frames [`send`](Self::send) expects.
    pub fn encoder(&self) -> FrameEncoder {
        self.encoder
    }

    /// Queues already framed packets (`packets` of them) on the control stream. Never blocks.
    pub fn send(&self, framed: Bytes, packets: u64) -> Result<SendStatus, TransportError> {
        let len = framed.len();
        self.shared
            .enqueue(Lane::Control, vec![framed], Queued::owned(len))?;
        self.shared.packets_sent.fetch_add(packets, SeqCst);
        self.run_tasks();
        Ok(self.shared.send_status())
    }

    /// Sends a tick (an empty frame) on the control stream, which goes before any data, unless
    /// the control stream already has something queued.
    pub fn tick(&self) -> Result<(), TransportError> {
        if self.shared.control.queued.load(SeqCst) > 0 {
            return Ok(());
        }
        let mut buf = BytesMut::with_capacity(4);
        self.encoder.encode_tick(&mut buf);
        // Not through `send`: the ticker runs beside the controller, and the busy/writable
        // handshake belongs to the controller alone (a tick must never consume the `writable`
        // a busy controller waits for).
        self.shared
            .enqueue(Lane::Control, vec![buf.freeze()], Queued::owned(4))?;
        self.shared.packets_sent.fetch_add(1, SeqCst);
        self.run_tasks();
        Ok(())
    }

    /// The owner consumed `bytes` of the packets delivered on `channel`: its reader may read
    /// that much more, and does so in this call.
    pub fn ack(&self, channel: usize, bytes: usize) {
        if self.ack_later(channel, bytes) {
            self.run_tasks();
        }
    }

    /// [`ack`](Self::ack), leaving the reading of small packets to another thread: true when a
    /// reader that backpressure had stopped may now go on, which it then does at the next
    /// [`run_tasks`](Self::run_tasks) of any connection of the endpoint. The
    /// caller, the one process that feeds the runtime every packet of the connection, is the
    /// first to run out of time when small packets arrive faster than the runtime takes them,
    /// and asks the process that reads the socket to do that reading. After a batch of bulk
    /// data (at least [`RECV_BATCH_BYTES`] bytes) the reader goes on in this call, as in
    /// [`ack`](Self::ack): handing over a large packet costs the caller little, and a hand-off
    /// would delay the next one.
    pub fn ack_later(&self, channel: usize, bytes: usize) -> bool {
        let Some(ch) = self.shared.channels.get(channel) else {
            return false;
        };
        let before = ch
            .unacked
            .fetch_update(SeqCst, SeqCst, |u| Some(u.saturating_sub(bytes)))
            .unwrap_or_default();
        ch.credit.notify_one();
        let resumes = before > RECV_RESUME && before.saturating_sub(bytes) <= RECV_RESUME;
        if resumes && bytes >= RECV_BATCH_BYTES {
            self.run_tasks();
            return false;
        }
        resumes
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
            unacked_bytes: self
                .shared
                .channels
                .iter()
                .map(|c| c.unacked.load(SeqCst))
                .sum(),
            rtt: s.path.rtt,
            cwnd: s.path.cwnd,
            lost_packets: s.path.lost_packets,
            quic_packets_sent: s.path.sent_packets,
            mtu: s.path.current_mtu,
            black_holes: s.path.black_holes_detected,
            streams: self.shared.data.get().map_or(1, |d| d.len() as u32),
            peer_streams: self.shared.peer_streams.load(SeqCst).count_ones(),
        }
    }

    /// Peer address, TLS parameters and peer certificates.
    pub fn info(&self) -> ConnectionInfo {
        let (alpn, server_name) = self
            .conn
            .handshake_data()
            .and_then(|h| h.downcast::<compat::crypto::rustls::HandshakeData>().ok())
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
        certs
            .first()
            .is_some_and(|leaf| crate::server_name::certificate_names_host(leaf, host))
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Closes the connection now; the peer is told at once.
    pub fn close(&self, reason: &str) {
        self.conn
            .close(compat::VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
        self.run_tasks();
    }

    /// Closes gracefully: what is queued is still sent, the streams are ended, and the
    /// connection closes once the peer has acknowledged them, or at the latest
    /// [`SHUTDOWN_LIMIT`] after this call. Never blocks.
    pub fn shutdown(&self, reason: &str) {
        if self.unstarted.lock().map(|u| u.is_some()).unwrap_or(false) {
            // No writer runs yet: nothing can be queued behind us.
            self.close(reason);
        } else if self
            .shared
            .control
            .tx
            .send(Outgoing::Shutdown(reason.to_string()))
            .is_err()
        {
            self.close(reason);
        } else {
            // The shutdown waits behind queued data, which a dead or stalled peer never takes:
            // close anyway once the grace is over, which frees the queues and buffers at once
            // instead of at QUIC's idle timeout. The task ends as soon as the connection does:
            // it holds the connection, whose memory (~90 KB) a sleep of the whole limit kept
            // for 5 s after every ordinary disconnect (90 MB after 1 000 quick reconnects).
            let conn = self.conn.clone();
            let reason = reason.as_bytes().to_vec();
            self.conn.spawn(async move {
                if conn.timeout(SHUTDOWN_LIMIT, conn.closed()).await.is_err() {
                    conn.close(compat::VarInt::from_u32(CLOSE_NORMAL), &reason);
                }
            });
            self.run_tasks();
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

/// Why the connection is gone: QUIC's close reason if it has one, else `fallback`.
///
/// A transport-level close by the peer (typically a TLS alert: the peer refused our certificate)
/// is logged, once per connection: with TLS 1.3 a client learns of it only after its own side of
/// the handshake, and the Erlang side may be gone before it could log it.
pub(crate) fn closed_reason(
    conn: &compat::Connection,
    shared: &Shared,
    fallback: String,
) -> String {
    let Some(close) = conn.close_reason() else {
        return fallback;
    };
    let reason = describe_close(&close);
    if matches!(close, compat::ConnectionError::ConnectionClosed(_))
        && !shared.peer_error_logged.swap(true, SeqCst)
    {
        warn!(remote = %conn.remote_address(), error = %reason, "peer closed the connection with an error");
    }
    reason
}

/// How a node's close reason starts when it refuses the peer after the TLS handshake
/// (`quic_dist_identity.erl`: a certificate that does not name the claimed host, a subject not
/// in `allowed_subjects`; `quic_dist_conn.erl`: a wrong cookie), followed by the refusing
/// node's name and why.
pub const REFUSAL_PREFIX: &str = "refused by ";

/// The peer's refusal of this node, if that is why the connection closed.
pub fn peer_refusal(e: &compat::ConnectionError) -> Option<String> {
    match e {
        compat::ConnectionError::ApplicationClosed(c)
            if c.reason.starts_with(REFUSAL_PREFIX.as_bytes()) =>
        {
            Some(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => None,
    }
}

/// A readable account of why a connection closed.
pub fn describe_close(e: &compat::ConnectionError) -> String {
    if let Some(refusal) = CertificateRefusal::of(e) {
        return refusal.to_string();
    }
    match e {
        compat::ConnectionError::ApplicationClosed(c) => {
            format!("closed by peer: {}", String::from_utf8_lossy(&c.reason))
        }
        compat::ConnectionError::LocallyClosed => "closed locally".to_string(),
        compat::ConnectionError::TimedOut => "idle timeout: no packet from the peer".to_string(),
        // Only this node makes this one (a peer's close is `ConnectionClosed`): it gave the
        // peer up after a probe (`direct`), and the reason says why.
        compat::ConnectionError::TransportError(t)
            if t.code == quinn_proto::TransportErrorCode::NO_VIABLE_PATH =>
        {
            t.reason.clone()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_close(reason: &str) -> compat::ConnectionError {
        compat::ConnectionError::ApplicationClosed(quinn_proto::ApplicationClose {
            error_code: compat::VarInt::from_u32(CLOSE_NORMAL),
            reason: reason.as_bytes().to_vec().into(),
        })
    }

    #[test]
    fn only_a_close_that_starts_with_the_refusal_prefix_is_a_refusal() {
        let text = "refused by v@127.0.0.1: certificate subject CN=x is not in allowed_subjects";
        assert_eq!(peer_refusal(&app_close(text)).as_deref(), Some(text));
        assert_eq!(
            describe_close(&app_close(text)),
            format!("closed by peer: {text}")
        );
        assert_eq!(
            peer_refusal(&app_close("distribution connection down: normal")),
            None
        );
        assert_eq!(peer_refusal(&compat::ConnectionError::TimedOut), None);
    }
}
