//! The sending half of a connection: batches built by the caller, one queue and one writer task
//! per stream.
//!
//! During the handshake, and always with one stream, every packet goes on the control stream, in
//! order. In multi-stream data mode a [`SendBatch`] places each packet with the connection's
//! [`StreamMapper`] and hands each data stream its share; the writers then push their queues
//! into quinn independently, so a stream stuck behind bulk data (or flow control) never delays
//! the others. Ticks always take the control stream, which has priority over data.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, MutexGuard};

use bytes::{Bytes, BytesMut};
use quic_dist_core::in_flight::PathSample;
use quic_dist_core::limits::{
    SEND_QUEUE_HIGH_WATER, SEND_QUEUE_LOW_WATER, STREAM_QUEUE_HIGH_WATER, STREAM_QUEUE_LOW_WATER,
};
use quic_dist_core::stream_map::StreamMapper;
use quic_dist_core::{FrameError, FRAME_HEADER_LEN};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::connection::{
    closed_reason, DistConnection, SendStatus, Shared, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR,
    SHUTDOWN_GRACE,
};
use crate::direct::compat;
use crate::error::TransportError;

/// What a writer task receives, in order.
pub(crate) enum Outgoing {
    /// Framed packets: bytes in all, and how many of them are lent (see [`SendBatch::lend`]).
    Data(Vec<Bytes>, Queued),
    /// Data stream: end the stream after what is queued, wait (bounded) for the peer's
    /// acknowledgement, then report on the channel.
    Finish(oneshot::Sender<()>),
    /// Control stream: end every stream after what is queued, then close the connection.
    Shutdown(String),
}

/// Bytes handed to a writer: all of them, and those lent by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Queued {
    pub(crate) bytes: usize,
    pub(crate) lent: usize,
}

impl Queued {
    /// Just `bytes`, none lent.
    pub(crate) fn owned(bytes: usize) -> Self {
        Self { bytes, lent: 0 }
    }

    /// What the connection's high-water mark counts of these bytes on `lane`.
    ///
    /// On a data stream, the copies only. Lent bytes are the runtime's own binaries, and
    /// refusing them would leave them in the runtime's queue for the node, where they hold up
    /// every later packet to it, whatever its stream (a 256 MiB message ahead of a ping would
    /// delay the ping until most of it was sent); their senders wait per stream instead.
    ///
    /// On the control stream, everything: with one stream (`streams 1`) all packets take it,
    /// in order anyway, and nothing waits per sender, so lent bytes not counted meant no bound
    /// at all (600 messages of 1 MiB were taken in 3 s for a 100 Mbit/s link, 574 MiB held).
    fn counted(self, lane: Lane) -> usize {
        match lane {
            Lane::Control => self.bytes,
            Lane::Data(_) => self.bytes - self.lent,
        }
    }
}

/// The queue of one stream: the writer's channel and the bytes in it.
pub(crate) struct StreamQueue {
    pub(crate) tx: mpsc::UnboundedSender<Outgoing>,
    pub(crate) queued: std::sync::atomic::AtomicUsize,
    /// Senders on this stream were told to wait: report when it drains.
    pub(crate) throttled: std::sync::atomic::AtomicBool,
}

impl StreamQueue {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tx,
                queued: Default::default(),
                throttled: Default::default(),
            },
            rx,
        )
    }
}

/// Which queue a writer serves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lane {
    Control,
    Data(usize),
}

impl Shared {
    fn queue(&self, lane: Lane) -> Option<&StreamQueue> {
        match lane {
            Lane::Control => Some(&self.control),
            Lane::Data(i) => self.data.get().and_then(|d| d.get(i)),
        }
    }

    /// Queues chunks on one lane; counts them before the writer can uncount them.
    pub(crate) fn enqueue(
        &self,
        lane: Lane,
        chunks: Vec<Bytes>,
        queued: Queued,
    ) -> Result<(), TransportError> {
        let q = self.queue(lane).ok_or(TransportError::Closed)?;
        q.queued.fetch_add(queued.bytes, SeqCst);
        self.queued.fetch_add(queued.bytes, SeqCst);
        self.counted.fetch_add(queued.counted(lane), SeqCst);
        if q.tx.send(Outgoing::Data(chunks, queued)).is_err() {
            q.queued.fetch_sub(queued.bytes, SeqCst);
            self.queued.fetch_sub(queued.bytes, SeqCst);
            self.counted.fetch_sub(queued.counted(lane), SeqCst);
            return Err(TransportError::Closed);
        }
        Ok(())
    }

    /// `Busy` when the bytes counted (see [`Queued::counted`]) are above the high-water mark
    /// (and remembers that `writable` is owed).
    pub(crate) fn send_status(&self) -> SendStatus {
        if self.counted.load(SeqCst) <= SEND_QUEUE_HIGH_WATER {
            return SendStatus::Ready;
        }
        self.paused.store(true, SeqCst);
        // A writer may have drained the queue between our add and the store above; it then did
        // not see `paused` and will never call `writable`, so undo it here.
        if self.counted.load(SeqCst) < SEND_QUEUE_LOW_WATER && self.paused.swap(false, SeqCst) {
            return SendStatus::Ready;
        }
        SendStatus::Busy
    }

    fn dequeued(&self, lane: Lane, queued: Queued) {
        let bytes = queued.bytes;
        if let Some(q) = self.queue(lane) {
            let left = q.queued.fetch_sub(bytes, SeqCst) - bytes;
            if let Lane::Data(i) = lane {
                if left < STREAM_QUEUE_LOW_WATER && q.throttled.swap(false, SeqCst) {
                    if let Some(ev) = self.events.get() {
                        ev.stream_writable(i);
                    }
                }
            }
        }
        self.queued.fetch_sub(bytes, SeqCst);
        let counted = queued.counted(lane);
        let left = self.counted.fetch_sub(counted, SeqCst) - counted;
        if left < SEND_QUEUE_LOW_WATER && self.paused.swap(false, SeqCst) {
            if let Some(ev) = self.events.get() {
                ev.writable();
            }
        }
    }
}

/// The staging buffer's first allocation, and each one after it fills: room for dozens of small
/// frames, which then stay adjacent (see `SendBatch::end_packet`), within the allocator's small
/// sizes. It was 64 KiB: a large allocation (an extent of its own in jemalloc) for every
/// `conn_send`, a single ping's included, held until QUIC had the frame acknowledged.
const STAGING_CAPACITY: usize = 8 * 1024;

/// What [`SendBatch::submit`] did.
#[derive(Debug)]
pub struct Submitted {
    /// Whether the caller may keep sending.
    pub status: SendStatus,
    /// Senders (data stream, encoded pid) whose stream is above its high-water mark: the caller
    /// should suspend them until [`ConnectionEvents::stream_writable`] for that stream.
    pub throttle: Vec<(usize, Bytes)>,
}

/// Packets being framed for one submit; see [`DistConnection::batch`].
///
/// A packet's bytes are either copied into the batch's staging buffer ([`copy`](Self::copy)) or
/// lent ([`lend`](Self::lend)): large pieces the caller can keep alive go to QUIC as they are,
/// without a copy. A frame is then a list of pieces.
pub struct SendBatch<'c> {
    conn: &'c DistConnection,
    mapper: Option<MutexGuard<'c, Option<StreamMapper>>>,
    staging: BytesMut,
    /// The packet begun last: its announced length, the bytes given so far, and the pieces that
    /// left `staging` (lent ones, and the staged bytes before them).
    declared: usize,
    given: usize,
    pieces: Vec<Bytes>,
    /// Bytes lent for the packet begun last.
    packet_lent: usize,
    /// One ordered stream: everything that left `staging`, in order, and the bytes lent.
    out: Vec<Bytes>,
    out_lent: usize,
    /// Per data stream: chunks ready, a frame being extended in place, and the bytes.
    lanes: Vec<(Vec<Bytes>, Option<BytesMut>, Queued)>,
    /// Bytes queued per data stream when the batch began, plus this batch's: steers new keys.
    queued_hint: Vec<usize>,
    throttle: Vec<(usize, Bytes)>,
    packets: u64,
    bytes: usize,
}

impl std::fmt::Debug for SendBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("packets", &self.packets)
            .field("streams", &self.lanes.len().max(1))
            .finish_non_exhaustive()
    }
}

impl<'c> SendBatch<'c> {
    pub(crate) fn new(conn: &'c DistConnection) -> Self {
        let guard = conn.shared.mapper.lock().ok();
        let multi = guard.as_ref().is_some_and(|g| g.is_some());
        let (lanes, queued_hint) = match (multi, conn.shared.data.get()) {
            (true, Some(data)) => (
                (0..data.len())
                    .map(|_| (Vec::new(), None, Queued::default()))
                    .collect(),
                data.iter().map(|q| q.queued.load(SeqCst)).collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        Self {
            conn,
            mapper: if multi { guard } else { None },
            staging: BytesMut::with_capacity(if multi { STAGING_CAPACITY } else { 0 }),
            declared: 0,
            given: 0,
            pieces: Vec::new(),
            packet_lent: 0,
            out: Vec::new(),
            out_lent: 0,
            lanes,
            queued_hint,
            throttle: Vec::new(),
            packets: 0,
            bytes: 0,
        }
    }

    /// Bytes framed so far (frame headers included).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Starts a packet of `len` bytes: give them with [`copy`](Self::copy) and
    /// [`lend`](Self::lend), in order, then call [`end_packet`](Self::end_packet). Nothing is
    /// framed if `len` is above the maximum.
    pub fn begin_packet(&mut self, len: usize) -> Result<(), FrameError> {
        self.conn.encoder.begin_sized(len, &mut self.staging)?;
        self.declared = len;
        self.given = 0;
        self.packet_lent = 0;
        Ok(())
    }

    /// Appends bytes of the packet begun last, copying them.
    pub fn copy(&mut self, bytes: &[u8]) {
        quic_dist_core::copy::extend(&mut self.staging, bytes);
        self.given += bytes.len();
    }

    /// Appends bytes of the packet begun last without copying them. Not for the packet's first
    /// bytes: the distribution header must stay in one piece with the frame header.
    pub fn lend(&mut self, bytes: Bytes) {
        self.given += bytes.len();
        self.packet_lent += bytes.len();
        let staged = self.staging.split().freeze();
        let moved = if self.mapper.is_some() {
            &mut self.pieces
        } else {
            &mut self.out
        };
        moved.push(staged);
        moved.push(bytes);
    }

    /// Completes the packet begun last and places it on its stream.
    pub fn end_packet(&mut self) -> Result<(), FrameError> {
        if self.given != self.declared {
            return Err(FrameError::LengthMismatch {
                declared: self.declared,
                given: self.given,
            });
        }
        let frame_len = FRAME_HEADER_LEN + self.declared;
        self.packets += 1;
        self.bytes += frame_len;
        let Some(mapper) = self.mapper.as_mut().and_then(|g| g.as_mut()) else {
            // One ordered stream: the frames stay together in `staging` (and `out`).
            self.out_lent += self.packet_lent;
            return Ok(());
        };
        let tail = self.staging.split();
        let mut pieces = std::mem::take(&mut self.pieces);
        // The frame header and the distribution header: in the first piece (never lent).
        let head: &[u8] = match pieces.first() {
            Some(first) => first,
            None => &tail,
        };
        let placement = mapper.place(&head[FRAME_HEADER_LEN..], &self.queued_hint);
        self.queued_hint[placement.stream] += frame_len;
        if let Some(range) = placement.sender.as_ref() {
            if self.queued_hint[placement.stream] > STREAM_QUEUE_HIGH_WATER {
                let key = &head[FRAME_HEADER_LEN + range.start..FRAME_HEADER_LEN + range.end];
                if !self
                    .throttle
                    .iter()
                    .any(|(s, k)| *s == placement.stream && &k[..] == key)
                {
                    self.throttle
                        .push((placement.stream, Bytes::copy_from_slice(key)));
                }
            }
        }
        let (chunks, pending, queued) = &mut self.lanes[placement.stream];
        queued.bytes += frame_len;
        queued.lent += self.packet_lent;
        if pieces.is_empty() {
            match placement.after {
                Some(after) => {
                    if let Some(p) = pending.take() {
                        chunks.push(p.freeze());
                    }
                    let body = tail.freeze().slice(FRAME_HEADER_LEN..);
                    let header = self.conn.encoder.ordered_header(&after, body.len())?;
                    queued.bytes += header.len() - FRAME_HEADER_LEN;
                    chunks.push(header);
                    chunks.push(body);
                }
                None => match pending {
                    // Consecutive frames of one stream are usually adjacent in `staging`: join
                    // them without copying, so quinn gets few large chunks.
                    Some(p) if p.as_ptr().wrapping_add(p.len()) == tail.as_ptr() => p.unsplit(tail),
                    Some(_) => {
                        let done = pending.replace(tail).map(BytesMut::freeze);
                        chunks.extend(done);
                    }
                    None => *pending = Some(tail),
                },
            }
            return Ok(());
        }
        // A frame in pieces (some lent).
        pieces.push(tail.freeze());
        if let Some(p) = pending.take() {
            chunks.push(p.freeze());
        }
        if let Some(after) = placement.after {
            let header = self.conn.encoder.ordered_header(&after, self.declared)?;
            queued.bytes += header.len() - FRAME_HEADER_LEN;
            chunks.push(header);
            pieces[0] = pieces[0].slice(FRAME_HEADER_LEN..);
        }
        chunks.extend(pieces.into_iter().filter(|p| !p.is_empty()));
        Ok(())
    }

    /// Narrows or widens the connection's send window from what this batch puts on each data
    /// stream (see [`InFlightPolicy`](quic_dist_core::in_flight::InFlightPolicy)).
    fn steer_in_flight(&self) {
        let Ok(mut guard) = self.conn.shared.in_flight.lock() else {
            return;
        };
        let Some(policy) = guard.as_mut() else {
            return;
        };
        let now = std::time::Instant::now();
        let path = policy.wants_sample(now).then(|| {
            let stats = self.conn.conn.stats();
            PathSample {
                sent_bytes: stats.udp_tx.bytes,
                rtt: stats.path.rtt,
                min_rtt: stats.path.min_rtt,
                lost_packets: stats.path.lost_packets,
            }
        });
        let per_stream: Vec<usize> = self.lanes.iter().map(|(_, _, q)| q.bytes).collect();
        if let Some(window) = policy.observe(now, &per_stream, path) {
            debug!(
                window,
                "send window changed: small messages beside bulk data, or no more"
            );
            self.conn.conn.set_send_window(window);
        }
    }

    /// Queues everything framed so far. Never blocks.
    pub fn submit(mut self) -> Result<Submitted, TransportError> {
        let shared = &self.conn.shared;
        if self.packets == 0 {
            return Ok(Submitted {
                status: SendStatus::Ready,
                throttle: Vec::new(),
            });
        }
        shared.packets_sent.fetch_add(self.packets, SeqCst);
        if self.mapper.is_none() {
            let mut chunks = std::mem::take(&mut self.out);
            chunks.push(std::mem::take(&mut self.staging).freeze());
            chunks.retain(|c| !c.is_empty());
            let bytes = chunks.iter().map(Bytes::len).sum();
            let queued = Queued {
                bytes,
                lent: self.out_lent,
            };
            shared.enqueue(Lane::Control, chunks, queued)?;
        } else {
            self.steer_in_flight();
            for (i, (mut chunks, pending, queued)) in
                std::mem::take(&mut self.lanes).into_iter().enumerate()
            {
                chunks.extend(pending.map(BytesMut::freeze));
                if !chunks.is_empty() {
                    shared.enqueue(Lane::Data(i), chunks, queued)?;
                }
            }
            if let Some(data) = shared.data.get() {
                // Owe a `stream_writable` for each throttled stream, unless it drained already
                // (its writer then did not see the flag): then nobody needs to wait.
                self.throttle.retain(|(i, _)| {
                    let q = &data[*i];
                    q.throttled.store(true, SeqCst);
                    !(q.queued.load(SeqCst) < STREAM_QUEUE_LOW_WATER
                        && q.throttled.swap(false, SeqCst))
                });
            }
        }
        // The writers run now, on this thread; they must not find the mapper locked.
        drop(self.mapper.take());
        self.conn.run_tasks();
        Ok(Submitted {
            status: shared.send_status(),
            throttle: self.throttle,
        })
    }
}

/// A data stream's writer: opens the stream, names it by its index, then writes its queue.
pub(crate) async fn data_writer(
    conn: compat::Connection,
    index: usize,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut send = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, index, "data stream not opened: connection closed");
            return;
        }
    };
    // Below the control stream (priority 1): ticks and handshake messages go first.
    let _ = send.set_priority(0);
    if send.write_all(&[index as u8]).await.is_err() {
        return;
    }
    write_loop(conn, send, rx, shared, Lane::Data(index)).await;
}

/// Writes a lane's queue in batches of chunks, one `write_all_chunks` per batch.
pub(crate) async fn write_loop(
    conn: compat::Connection,
    mut send: compat::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
    lane: Lane,
) {
    let mut bufs: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        let first = tokio::select! {
            b = rx.recv() => b,
            e = conn.closed() => { debug!(error = %e, ?lane, "writer stops: connection closed"); return; }
        };
        let mut n = Queued::default();
        let mut take = |msg, bufs: &mut Vec<Bytes>| match msg {
            Outgoing::Data(chunks, queued) => {
                bufs.extend(chunks);
                n.bytes += queued.bytes;
                n.lent += queued.lent;
                None
            }
            other => Some(other),
        };
        let mut end = match first {
            None => return,
            Some(msg) => take(msg, &mut bufs),
        };
        while bufs.len() < 256 && end.is_none() {
            match rx.try_recv() {
                Ok(msg) => end = take(msg, &mut bufs),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all_chunks(&mut bufs).await {
            let reason = closed_reason(&conn, &shared, format!("write failed: {e}"));
            // A stopped stream leaves the connection open: close it, the streams are the link.
            conn.close(
                compat::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                b"distribution stream failed",
            );
            shared.report_closed(reason);
            return;
        }
        bufs.clear();
        shared.dequeued(lane, n);
        match end.take() {
            None => {}
            Some(Outgoing::Finish(done)) => {
                if send.finish().is_ok() {
                    let _ = conn.timeout(SHUTDOWN_GRACE, send.stopped()).await;
                }
                let _ = done.send(());
                return;
            }
            Some(Outgoing::Shutdown(reason)) => {
                finish_data_streams(&conn, &shared).await;
                finish_and_close(&conn, &mut send, &reason).await;
                return;
            }
            Some(Outgoing::Data(..)) => unreachable!("data is taken above"),
        }
    }
}

/// Ends every data stream after what is queued on it, waiting (bounded) for the peer to
/// acknowledge them, so the control stream ends last.
async fn finish_data_streams(conn: &compat::Connection, shared: &Shared) {
    let Some(data) = shared.data.get() else {
        return;
    };
    let mut waits = Vec::with_capacity(data.len());
    for q in data {
        let (tx, rx) = oneshot::channel();
        if q.tx.send(Outgoing::Finish(tx)).is_ok() {
            waits.push(rx);
        }
    }
    let _ = conn
        .timeout(SHUTDOWN_GRACE, async {
            for w in waits {
                let _ = w.await;
            }
        })
        .await;
}

/// Ends the control stream after everything written so far, waits until the peer has
/// acknowledged it (or closed, or [`SHUTDOWN_GRACE`] passed), then closes the connection. Like a
/// TCP close, the last packets (a `nok` handshake status, the final messages) reach the peer.
async fn finish_and_close(conn: &compat::Connection, send: &mut compat::SendStream, reason: &str) {
    if send.finish().is_ok() {
        let _ = conn.timeout(SHUTDOWN_GRACE, send.stopped()).await;
    }
    conn.close(compat::VarInt::from_u32(CLOSE_NORMAL), reason.as_bytes());
}
