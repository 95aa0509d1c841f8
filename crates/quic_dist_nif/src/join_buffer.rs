//! Erlang binaries that long received messages are copied into as their fragments arrive.
//!
//! The transport copies each fragment of a message of more than 32 fragments into one of these
//! (see `quic_dist_core::fragments`), on the thread that reads the stream, and hands over the
//! whole packet with its last fragment. The binary then goes to the input handler as it is: the
//! runtime decodes the message in place instead of joining the fragments itself, a copy of the
//! whole message in one piece on the receiving process's scheduler.

use quic_dist_core::fragments::JoinBuffer;
use rustler::{Binary, Env, OwnedBinary};

/// A process-independent Erlang binary, filled from its start.
pub struct ErlangJoinBuffer {
    bin: OwnedBinary,
    len: usize,
}

impl ErlangJoinBuffer {
    /// A buffer with room for `capacity` bytes; `None` if the runtime cannot allocate it.
    pub fn new(capacity: usize) -> Option<Self> {
        Some(Self {
            bin: OwnedBinary::new(capacity)?,
            len: 0,
        })
    }

    /// The bytes written, as a binary of `env` (a sub-binary when the estimate was long: the
    /// rest is at most one fragment, and shrinking could copy it all).
    pub fn into_binary(self, env: Env<'_>) -> Binary<'_> {
        let len = self.len;
        let whole = self.bin.release(env);
        if whole.len() == len {
            return whole;
        }
        whole
            .make_subbinary(0, len)
            .expect("the bytes written lie within the binary")
    }
}

impl JoinBuffer for ErlangJoinBuffer {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end > self.bin.len() {
            // The estimate was short (a peer that cuts its fragments differently).
            self.bin.realloc_or_copy(end.max(2 * self.bin.len()));
        }
        quic_dist_core::copy::copy(&mut self.bin.as_mut_slice()[self.len..end], bytes);
        self.len = end;
    }

    fn as_slice(&self) -> &[u8] {
        &self.bin.as_slice()[..self.len]
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}
