//! The receiving half of a connection: one reader task per stream.
//!
//! - The control stream's reader delivers handshake messages (and, with one stream, all data)
//!   and reports the end of the connection.
//! - Data streams are opened by the peer, one per direction and index; each starts with its
//!   index (one byte). Their readers wait until the owner opened its input
//!   ([`DistConnection::open_input`](crate::DistConnection::open_input)), so that no data packet
//!   can overtake the last handshake message, which travels on the control stream.
//! - Every reader delivers batches of whole packets with its channel number (0 = control, i + 1
//!   = data stream i) and stops reading while its channel has too many unacknowledged bytes, so
//!   a stalled consumer of one stream does not stop the others.
//! - An ordered packet waits until the other streams have delivered what it names.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use bytes::Bytes;
use quic_dist_core::dist_header::{is_fragment, receiver, route, Route};
use quic_dist_core::fragments::FragmentJoiner;
use quic_dist_core::limits::{
    RECV_BATCH_BYTES, RECV_BATCH_PACKETS, RECV_RESUME, RECV_UNACKED_LIMIT,
};
use quic_dist_core::stream_map::{ordered_ready, MAX_DATA_STREAMS};
use quic_dist_core::{Frame, FrameDecoder, Packet};
use tracing::{debug, warn};

use crate::connection::{
    closed_reason, describe_close, JoinedPacket, PacketBatch, Shared, CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR, SHUTDOWN_GRACE,
};
use crate::direct::compat;
use crate::send::Outgoing;

/// Largest chunk a stream read returns: the stream data of one datagram (at most 64 KiB).
const MAX_CHUNK: usize = 64 * 1024;

/// Why a reader stopped.
enum ReadEnd {
    /// The stream ended cleanly.
    Finished,
    /// The connection is being closed; the reason is reported (or is to be reported) elsewhere.
    Gone,
}

/// Reads the control stream; reports the end of the connection.
pub(crate) async fn control_reader(
    conn: compat::Connection,
    mut recv: compat::RecvStream,
    shared: Arc<Shared>,
    max_frame: usize,
) {
    let mut decoder = FrameDecoder::new(max_frame);
    match read_frames(&conn, &mut recv, &shared, &mut decoder, 0).await {
        ReadEnd::Gone => {}
        ReadEnd::Finished => {
            let reason = match decoder.finish() {
                Ok(()) => {
                    // End our control stream at once, as a TCP close answers a FIN: the packet
                    // with our FIN carries the acknowledgement now. Otherwise QUIC delays it (up
                    // to max_ack_delay, 25 ms), and all that time this node still counts the
                    // peer as connected: a new connection from the peer in that window is taken
                    // for a replacement of this one ("alive"), and the two nodes end up
                    // connected again right after the peer's disconnect_node/1.
                    let (done, _) = tokio::sync::oneshot::channel();
                    let _ = shared.control.tx.send(Outgoing::Finish(done));
                    // A graceful shutdown ends the data streams first: let their readers deliver
                    // what they still have, then wait (bounded) for the peer to close with its
                    // reason, once it has our acknowledgement of the end of the stream.
                    let _ = conn
                        .timeout(SHUTDOWN_GRACE, data_readers_done(&shared))
                        .await;
                    match conn.timeout(SHUTDOWN_GRACE, conn.closed()).await {
                        Ok(e) => describe_close(&e),
                        Err(_) => "peer finished its stream".to_string(),
                    }
                }
                Err(e) => format!("peer finished its stream mid-frame: {e}"),
            };
            conn.close(compat::VarInt::from_u32(CLOSE_NORMAL), b"stream finished");
            shared.report_closed(reason);
        }
    }
}

async fn data_readers_done(shared: &Shared) {
    loop {
        let changed = shared.readers_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.data_readers.load(SeqCst) == 0 {
            return;
        }
        changed.await;
    }
}

/// Accepts the peer's data streams for the life of the connection.
pub(crate) async fn accept_data_streams(
    conn: compat::Connection,
    shared: Arc<Shared>,
    max_frame: usize,
) {
    while let Ok(recv) = conn.accept_uni().await {
        shared.data_readers.fetch_add(1, SeqCst);
        conn.spawn(data_reader(conn.clone(), recv, shared.clone(), max_frame));
    }
}

/// Counts a data reader out when it ends, however it ends.
struct ReaderGuard(Arc<Shared>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.data_readers.fetch_sub(1, SeqCst);
        self.0.readers_changed.notify_waiters();
    }
}

async fn data_reader(
    conn: compat::Connection,
    mut recv: compat::RecvStream,
    shared: Arc<Shared>,
    max_frame: usize,
) {
    let _guard = ReaderGuard(shared.clone());
    let mut index = [0u8; 1];
    if recv.read_exact(&mut index).await.is_err() {
        return;
    }
    let index = usize::from(index[0]);
    let bit = 1u64 << (index % 64);
    if index >= MAX_DATA_STREAMS || shared.peer_streams.fetch_or(bit, SeqCst) & bit != 0 {
        protocol_error(
            &conn,
            &shared,
            format!("bad or repeated data stream index {index}"),
        );
        return;
    }
    // No data before the owner is ready for it (see the module documentation).
    loop {
        let opened = shared.input_opened.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        if shared.input_open.load(SeqCst) {
            break;
        }
        tokio::select! {
            () = opened => {}
            _ = conn.closed() => return,
        }
    }
    let mut decoder = FrameDecoder::new(max_frame);
    if let ReadEnd::Finished = read_frames(&conn, &mut recv, &shared, &mut decoder, index + 1).await
    {
        if let Err(e) = decoder.finish() {
            protocol_error(
                &conn,
                &shared,
                format!("data stream {index} ended mid-frame: {e}"),
            );
        }
    }
}

fn protocol_error(conn: &compat::Connection, shared: &Shared, why: String) {
    warn!(remote = %conn.remote_address(), error = %why, "closing connection: peer broke the protocol");
    conn.close(
        compat::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
        b"protocol error",
    );
    shared.report_closed(format!("protocol error from peer: {why}"));
}

/// Reads frames from one stream and delivers them on `channel` until the stream ends.
async fn read_frames(
    conn: &compat::Connection,
    recv: &mut compat::RecvStream,
    shared: &Arc<Shared>,
    decoder: &mut FrameDecoder,
    channel: usize,
) -> ReadEnd {
    let mut chunks = vec![Bytes::new(); 32];
    let mut batch = PacketBatch {
        channel,
        ..PacketBatch::default()
    };
    let ch = &shared.channels[channel];
    let mut receivers = Receivers::default();
    let mut joiner = FragmentJoiner::new();
    // Packets taken off the stream since the last delivery, fragments held by the joiner
    // included: other streams' ordered packets count on them (see `deliver`).
    let mut consumed = 0u64;
    loop {
        // Backpressure: stop reading while the owner has too much of this channel unconsumed,
        // but still notice a close: otherwise a stalled owner is never told, and a dropped one
        // leaks this task (and the connection state it holds) forever.
        // Once stopped, it waits until half the limit is consumed, so that it reads a good
        // share at each resumption (see `DistConnection::ack_later`).
        if ch.unacked.load(SeqCst) >= RECV_UNACKED_LIMIT {
            while ch.unacked.load(SeqCst) > RECV_RESUME {
                tokio::select! {
                    () = ch.credit.notified() => {}
                    e = conn.closed() => {
                        shared.report_closed(describe_close(&e));
                        return ReadEnd::Gone;
                    }
                }
            }
        }
        // At most about the room left under the limit: a chunk is part of one datagram.
        let room = RECV_UNACKED_LIMIT.saturating_sub(ch.unacked.load(SeqCst));
        let slots = (room / MAX_CHUNK).clamp(1, chunks.len());
        let n = match recv.read_chunks(&mut chunks[..slots]).await {
            Ok(Some(n)) => n,
            Ok(None) => return ReadEnd::Finished,
            Err(e) => {
                if channel == 0 {
                    let reason = closed_reason(conn, shared, format!("read failed: {e}"));
                    conn.close(
                        compat::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                        b"distribution stream failed",
                    );
                    shared.report_closed(reason);
                } else if conn.close_reason().is_none() {
                    protocol_error(conn, shared, format!("data stream read failed: {e}"));
                } else {
                    debug!(error = %e, channel, "data reader stops: connection closed");
                }
                return ReadEnd::Gone;
            }
        };
        for chunk in &mut chunks[..n] {
            decoder.push(std::mem::take(chunk));
        }
        loop {
            let packet = match decoder.next_frame() {
                Ok(Some(Frame::Tick)) => {
                    shared.packets_received.fetch_add(1, SeqCst);
                    continue;
                }
                Ok(Some(Frame::Packet(p))) => p,
                Ok(Some(Frame::Ordered { after, packet })) => {
                    deliver(shared, &mut batch, &mut consumed);
                    if channel > 0 && !wait_for_streams(conn, shared, &after, channel - 1).await {
                        return ReadEnd::Gone;
                    }
                    packet
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(remote = %conn.remote_address(), error = %e, "closing connection: peer broke the framing");
                    conn.close(
                        compat::VarInt::from_u32(CLOSE_PROTOCOL_ERROR),
                        b"framing error",
                    );
                    shared.report_closed(format!("protocol error from peer: {e}"));
                    return ReadEnd::Gone;
                }
            };
            shared.packets_received.fetch_add(1, SeqCst);
            consumed += 1;
            let ready_from = batch.packets.len();
            let copied = joiner.push_copying(packet, &mut batch.packets, &mut |capacity| {
                shared.events.get().and_then(|ev| ev.join_buffer(capacity))
            });
            for packet in &batch.packets[ready_from..] {
                receivers.note(packet, &mut batch.receivers);
                batch.bytes += packet.len();
            }
            if let Some(whole) = copied {
                // What came before it goes first, in a batch of its own; the message's
                // fragments count as delivered with it.
                deliver(shared, &mut batch, &mut 0);
                Receivers::note_whole(whole.as_slice(), &mut batch.receivers);
                batch.bytes = whole.as_slice().len();
                batch.joined = Some(JoinedPacket(whole));
                deliver(shared, &mut batch, &mut consumed);
            }
            if batch.packets.len() >= RECV_BATCH_PACKETS || batch.bytes >= RECV_BATCH_BYTES {
                deliver(shared, &mut batch, &mut consumed);
            }
        }
        deliver(shared, &mut batch, &mut consumed);
    }
}

/// Waits until every other data stream delivered what an ordered packet names; false if the
/// connection closed meanwhile.
async fn wait_for_streams(
    conn: &compat::Connection,
    shared: &Shared,
    after: &[u64],
    own: usize,
) -> bool {
    let delivered = |i: usize| {
        shared
            .channels
            .get(i + 1)
            .map_or(0, |c| c.delivered.load(SeqCst))
    };
    loop {
        let changed = shared.delivered_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if ordered_ready(after, own, delivered) {
            return true;
        }
        tokio::select! {
            () = changed => {}
            _ = conn.closed() => return false,
        }
    }
}

/// Who the messages of a stream are for, fragments included.
#[derive(Default)]
struct Receivers {
    /// Receiver of each fragmented message still arriving, by sequence.
    fragments: std::collections::HashMap<u64, Bytes>,
}

/// Fragmented messages followed at once per stream; more are forgotten (not counted).
const MAX_FOLLOWED_FRAGMENTS: usize = 4096;

impl Receivers {
    /// Adds `packet`'s bytes to its receiver's share of the batch.
    fn note(&mut self, packet: &Packet, batch: &mut Vec<(Bytes, usize)>) {
        // The header is nearly always in the first piece; if that piece is short enough to
        // have cut it, read a copy of the start of the packet instead.
        let to = match self.receiver_of(packet.first_part()) {
            None if packet.is_split() && packet.first_part().len() < SHORT_FIRST_PART => {
                let head = Bytes::copy_from_slice(&packet.head(HEADER_LIMIT));
                self.receiver_of(&head)
            }
            to => to,
        };
        if let Some(to) = to {
            add(batch, to, packet.len());
        }
    }

    /// Adds a whole packet copied from fragments (`bytes`, in the owner's buffer) to its
    /// receiver's share. A whole packet needs no following of fragments: the receiver is read
    /// straight out of it and copied, the buffer being the owner's.
    fn note_whole(bytes: &[u8], batch: &mut Vec<(Bytes, usize)>) {
        if let Some(to) = receiver(bytes) {
            add(batch, Bytes::copy_from_slice(to), bytes.len());
        }
    }

    /// The receiver of the message `start` (the start of a packet) belongs to, following
    /// fragments; `None` for anything else or if `start` is too short to tell.
    fn receiver_of(&mut self, start: &Bytes) -> Option<Bytes> {
        // Whole packets (nearly all) need only the receiver; fragments also their sequence.
        if !is_fragment(start) {
            return receiver(start).map(|r| start.slice_ref(r));
        }
        match route(start) {
            Ok(Route::FirstFragment { seq, frag, .. }) => {
                let to = receiver(start).map(|r| start.slice_ref(r));
                if let (Some(to), true) = (&to, frag > 1) {
                    if self.fragments.len() >= MAX_FOLLOWED_FRAGMENTS {
                        self.fragments.clear();
                    }
                    // A copy: a slice would keep the whole receive buffer alive meanwhile.
                    self.fragments.insert(seq, Bytes::copy_from_slice(to));
                }
                to
            }
            Ok(Route::NextFragment { seq, frag }) => {
                if frag > 1 {
                    self.fragments.get(&seq).cloned()
                } else {
                    self.fragments.remove(&seq)
                }
            }
            Ok(Route::Packet { .. }) | Err(_) => None,
        }
    }
}

/// Counts `bytes` for receiver `to` in a batch's shares.
fn add(batch: &mut Vec<(Bytes, usize)>, to: Bytes, bytes: usize) {
    match batch.iter_mut().find(|(r, _)| *r == to) {
        Some((_, n)) => *n += bytes,
        None => batch.push((to, bytes)),
    }
}

/// A first piece shorter than this may hold only part of the distribution header.
const SHORT_FIRST_PART: usize = 4096;
/// Most bytes of a packet read to find its receiver when the header is cut between pieces.
const HEADER_LIMIT: usize = 64 * 1024;

/// Hands `batch` to the owner and counts the `consumed` packets of the stream as delivered.
///
/// Fragments the joiner holds count too: the runtime would not have let their message be seen
/// before its last fragment either, so an ordered packet of another stream that the sender
/// sent after them may go first, as it would have arrived first.
fn deliver(shared: &Shared, batch: &mut PacketBatch, consumed: &mut u64) {
    let channel = batch.channel;
    let ch = &shared.channels[channel];
    if !batch.packets.is_empty() || batch.joined.is_some() {
        let b = std::mem::replace(
            batch,
            PacketBatch {
                channel,
                ..PacketBatch::default()
            },
        );
        ch.unacked.fetch_add(b.bytes, SeqCst);
        if let Some(ev) = shared.events.get() {
            ev.packets(b);
        }
    }
    // Counted once handed over: an ordered packet of another stream, delivered after this
    // count changes, reaches the owner after these packets.
    let count = std::mem::take(consumed);
    if count > 0 {
        ch.delivered.fetch_add(count, SeqCst);
        shared.delivered_changed.notify_waiters();
    }
}
