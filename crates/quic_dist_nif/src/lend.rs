//! Lending Erlang binaries to the transport without copying them.
//!
//! The payload of a large message reaches the controller as sub-binaries of the sender's binary
//! (64 KiB fragments). Copying them into the NIF cost about 200 us per 1 MiB batch on the
//! controller's scheduler: the largest share of the sending node's scheduler time during bulk
//! transfers, and the time a small message behind an 8 MiB one waited in the runtime's queue.
//! Instead, each conn_send call copies the terms of its large binaries (a reference, not their
//! bytes) into one process-independent environment, and hands QUIC `Bytes` that point into the
//! binaries and keep that environment alive. quinn drops them once the peer has acknowledged
//! the data; the last one frees the environment, and with it the references.
#![allow(unsafe_code)] // Raw views of binary data whose lifetime an environment guarantees.

use std::sync::Arc;

use bytes::Bytes;
use rustler::{Binary, OwnedEnv, Term};

/// Binaries at least this large are lent; smaller ones are cheaper to copy than to track.
pub const LEND_MIN: usize = 8 * 1024;

/// The environment holding the lent binaries of one call.
struct Keeper {
    env: OwnedEnv,
}

// SAFETY: after construction the environment is only read (never run, cleared or sent from), and
// freeing it (`enif_free_env`) is allowed on any thread; `OwnedEnv` is `Send` already.
unsafe impl Sync for Keeper {}

/// A view of a binary's bytes that keeps the binary alive.
struct Lent {
    _keeper: Arc<Keeper>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are immutable (an Erlang binary's data never changes while referenced: the
// runtime copies instead of growing a binary that has other references) and stay allocated as
// long as `_keeper` holds a reference to the binary.
unsafe impl Send for Lent {}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the `Send` impl: `ptr`/`len` describe live, immutable binary data.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Lends binaries for the duration of their use by the transport; one per NIF call.
#[derive(Default)]
pub struct Lender {
    keeper: Option<Arc<Keeper>>,
}

impl Lender {
    /// `Bytes` viewing the data of `binary` (the term `term`), kept alive by this lender's
    /// environment.
    pub fn lend(&mut self, term: Term, binary: &Binary) -> Bytes {
        let keeper = self.keeper.get_or_insert_with(|| {
            Arc::new(Keeper {
                env: OwnedEnv::new(),
            })
        });
        // A copy of the term in our environment references the same binary data: refc binaries
        // and their sub-binaries are shared, never copied, by enif_make_copy.
        let _ = keeper.env.save(term);
        Bytes::from_owner(Lent {
            _keeper: keeper.clone(),
            ptr: binary.as_slice().as_ptr(),
            len: binary.len(),
        })
    }
}
