//! Limits that bound memory per connection. The numbers are documented in the README.

/// Largest distribution packet accepted on the wire, in bytes.
///
/// OTP 25 fragments every message above 64 KiB, so real packets stay far below this; the limit
/// only stops a broken or hostile peer from making us buffer an unbounded frame.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes queued for sending above which the output handler is told to stop pulling packets
/// (the runtime then suspends senders with `busy_dist_port`).
pub const SEND_QUEUE_HIGH_WATER: usize = 8 * 1024 * 1024;

/// Bytes queued for sending below which a paused output handler is woken up again.
pub const SEND_QUEUE_LOW_WATER: usize = 2 * 1024 * 1024;

/// Bytes delivered to the input handler and not yet consumed, above which the reader stops
/// reading the stream (QUIC flow control then stops the peer).
pub const RECV_UNACKED_LIMIT: usize = 8 * 1024 * 1024;

/// Most packets handed to the input handler in one message.
pub const RECV_BATCH_PACKETS: usize = 512;

/// Most bytes handed to the input handler in one message (a single larger packet still goes).
pub const RECV_BATCH_BYTES: usize = 1024 * 1024;
