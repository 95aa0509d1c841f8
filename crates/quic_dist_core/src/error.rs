//! Errors of the sans-IO layer.

use thiserror::Error;

/// A framing error: the peer (or the local node) broke the framing rules.
///
/// Any of these means the byte stream can no longer be trusted, so the connection must be closed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced a length above the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversize {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An ordered frame too short for the counts it announces plus a packet.
    #[error("ordered frame of {len} bytes cannot hold {counts} stream counts and a packet")]
    BadOrdered {
        /// The frame's length.
        len: usize,
        /// The number of counts it announced.
        counts: usize,
    },
    /// More data streams than an ordered frame can describe.
    #[error("{count} streams exceed the 255 an ordered frame can describe")]
    TooManyStreams {
        /// The number of streams.
        count: usize,
    },
    /// A packet's bytes did not add up to the length announced when it was begun.
    #[error("packet announced as {declared} bytes was given {given}")]
    LengthMismatch {
        /// The announced length.
        declared: usize,
        /// The bytes given.
        given: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of an unfinished frame)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
}
