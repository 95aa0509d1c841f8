//! The NIF's allocator: jemalloc, counting the NIF's own heap memory (quinn, rustls, tokio and
//! the carrier's buffers), so that `quic_dist:nif_memory/0` can show it next to
//! `erlang:memory/0`, which does not see it.
//!
//! Why not the C library's malloc: quinn copies every received datagram into a fresh buffer of
//! up to 64 KiB, freed once the packet is copied into Erlang. glibc's thread arenas gave those
//! pages back to the kernel and faulted them in again for the next datagrams: 39 000 page
//! faults per second on the receiving node of a bulk transfer, about a fifth of its QUIC thread's
//! time. jemalloc keeps freed pages for reuse a while (a second, see [`JEMALLOC_CONF`]): 1 000
//! per second, and 1 MiB messages moved about 1.3x faster in the same runs. (mimalloc did as
//! well on bulk, but it asks for transparent huge pages on its first arena, which it reserves
//! before the NIF can configure it: fresh nodes then connected in 17-69 ms instead of 9-17 when
//! several started together, the kernel zeroing and compacting 2 MiB pages.)
#![allow(unsafe_code)] // A global allocator is an unsafe trait; this one only forwards.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use tikv_jemallocator::Jemalloc as Inner;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// jemalloc, counting.
pub struct Counting;

fn grew(n: usize) {
    let now = ALLOCATED.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(n: usize) {
    ALLOCATED.fetch_sub(n, Relaxed);
}

// SAFETY: every call is forwarded unchanged to jemalloc, which upholds the contract; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = Inner.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = Inner.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Inner.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = Inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes the NIF has allocated now, and at most since it was loaded.
pub fn allocated() -> (usize, usize) {
    (ALLOCATED.load(Relaxed), PEAK.load(Relaxed))
}

/// `#{allocated => Bytes, peak => Bytes}`: the NIF's own heap memory.
#[rustler::nif]
fn nif_memory(env: rustler::Env) -> rustler::NifResult<rustler::Term> {
    use rustler::Encoder;
    let (now, peak) = allocated();
    rustler::Term::map_from_pairs(
        env,
        &[
            (crate::atoms::allocated().encode(env), now.encode(env)),
            (crate::atoms::peak().encode(env), peak.encode(env)),
        ],
    )
}

/// jemalloc's options, read by jemalloc itself when it starts (its `malloc_conf`). Freed pages go
/// back to the kernel a second after the last use instead of ten (so a node's memory falls back
/// soon after a peer with large messages in flight went away), by jemalloc's own thread, since an
/// idle node does not allocate and would not otherwise get to it.
#[export_name = "_rjem_malloc_conf"]
pub static JEMALLOC_CONF: &[u8; 85] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
