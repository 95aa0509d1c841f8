//! The tokio runtime shared by every endpoint and connection of the node.
//!
//! One thread by default: a current-thread runtime that busy-polls for a short while after
//! work (see [`quic_dist_transport::busy_poll`]), so that a message crossing from a BEAM
//! scheduler to QUIC and back rarely has to wake a sleeping thread. With more threads, a
//! multi-thread runtime spreads the QUIC work of many busy connections over cores, but its
//! workers sleep as soon as they are idle.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};

static RUNTIME: OnceLock<Handle> = OnceLock::new();

/// Starts the runtime on first call (`threads` workers, busy polling `busy_poll` long after work
/// when there is one); later calls keep the first one.
pub fn init(threads: usize, busy_poll: Duration) -> Result<(), String> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("quic_dist".into())
        .spawn(move || {
            let built = if threads <= 1 {
                Builder::new_current_thread().enable_all().build()
            } else {
                Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("quic_dist")
                    .enable_all()
                    .build()
            };
            let rt = match built {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start tokio runtime: {e}")));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            if threads <= 1 {
                rt.block_on(quic_dist_transport::busy_poll::run(busy_poll));
            } else {
                rt.block_on(std::future::pending::<()>());
            }
        })
        .map_err(|e| format!("cannot start the runtime thread: {e}"))?;
    let handle = rx
        .recv()
        .map_err(|_| "the runtime thread died at start".to_string())??;
    // Another caller may have won the race; its runtime is the one used, ours idles.
    let _ = RUNTIME.set(handle);
    Ok(())
}

/// A handle on the runtime, started with defaults if nobody did.
pub fn handle() -> Handle {
    if RUNTIME.get().is_none() {
        let _ = init(1, DEFAULT_BUSY_POLL);
    }
    RUNTIME.get().expect("runtime initialised").clone()
}

/// Busy-polling window when nobody chose one (the Erlang side passes its own default).
const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(500);
