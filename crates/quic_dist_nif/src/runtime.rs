//! The tokio runtime shared by every endpoint and connection of the node.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Creates the runtime with `threads` workers on first call; later calls keep the first one.
pub fn init(threads: usize) -> Result<(), String> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("quic_dist")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio runtime: {e}"))?;
    // Another caller may have won the race; dropping ours then is harmless.
    let _ = RUNTIME.set(rt);
    Ok(())
}

/// A handle on the runtime, started with defaults if nobody did.
pub fn handle() -> Handle {
    if RUNTIME.get().is_none() {
        let _ = init(2);
    }
    RUNTIME.get().expect("runtime initialised").handle().clone()
}
