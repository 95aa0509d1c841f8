//! Limits that bound memory per connection. The numbers are documented in the README.

/// Largest distribution packet accepted on the wire, in bytes.
///
/// OTP 25 fragments every message above 64 KiB (the receiver joins at most 2 MiB of them, after
/// framing), so real frames stay far below this; the limit only stops a broken or hostile peer
/// from making us buffer an unbounded frame.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes queued for sending (all streams) and copied by the carrier, above which the output
/// handler is told to stop pulling packets (the runtime then suspends every sender to that node
/// with `busy_dist_port`, the idle ones too: it has one queue per connection). Bytes lent to the
/// carrier (large binaries, kept alive instead of copied) do not count: refusing them would keep
/// them in the runtime's queue, ahead of every later packet to the node. With several streams
/// this is only a safety net: the stream limit below slows down the busy senders first.
pub const SEND_QUEUE_HIGH_WATER: usize = 16 * 1024 * 1024;

/// Bytes queued for sending below which a paused output handler is woken up again.
pub const SEND_QUEUE_LOW_WATER: usize = 8 * 1024 * 1024;

/// Bytes queued on one data stream above which the processes that send on it are suspended
/// (by the output handler) until it drains below [`STREAM_QUEUE_LOW_WATER`]: a process that
/// sends faster than its stream drains waits, and the others go on. QUIC's own send buffers, up
/// to the stream's flow-control window, keep the stream busy meanwhile.
pub const STREAM_QUEUE_HIGH_WATER: usize = 1024 * 1024;

/// Bytes queued on one data stream below which its suspended senders are resumed.
pub const STREAM_QUEUE_LOW_WATER: usize = 512 * 1024;

/// Bytes delivered to the input handler from one stream and not yet consumed, above which the
/// reader stops reading that stream (QUIC flow control then stops the peer's stream). It is
/// also the most that packets of other streams can find ahead of them in the input handler's
/// mailbox, per busy stream.
pub const RECV_UNACKED_LIMIT: usize = 512 * 1024;

/// Unconsumed bytes at or below which a reader stopped at [`RECV_UNACKED_LIMIT`] reads again:
/// half the limit, so that each resumption reads a good share and not one batch.
pub const RECV_RESUME: usize = RECV_UNACKED_LIMIT / 2;

/// Most packets handed to the input handler in one message.
pub const RECV_BATCH_PACKETS: usize = 512;

/// Most bytes handed to the input handler in one message (a single larger packet still goes).
pub const RECV_BATCH_BYTES: usize = 128 * 1024;
