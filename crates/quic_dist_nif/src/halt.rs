//! Telling peers when the VM halts.
//!
//! `erlang:halt/0,1` (the end of every `elixir script.exs`, `bin/app rpc`, a crash) stops the VM
//! without stopping distribution, so no connection is closed and peers would only notice at
//! their tick timeout (up to a minute), where TCP peers see the socket close at once. The C
//! runtime's `atexit` handlers still run on halt: one here closes every open endpoint, which
//! sends each peer a CONNECTION_CLOSE, and waits briefly for those datagrams to leave.

use std::sync::{Mutex, Once};
use std::time::Duration;

use quic_dist_transport::DistEndpoint;

static OPEN: Mutex<Vec<DistEndpoint>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

/// Longest the halting VM waits for close notifications to be sent.
const HALT_GRACE: Duration = Duration::from_millis(100);

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn close_all_on_exit() {
    let endpoints = match OPEN.lock() {
        Ok(mut open) => std::mem::take(&mut *open),
        Err(_) => return,
    };
    if endpoints.is_empty() {
        return;
    }
    // The exiting thread may be a scheduler whose thread-locals are already destroyed, and
    // tokio needs them: do the work on a fresh thread, and never wait past the grace period.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("quic_dist_halt".into())
        .spawn(move || {
            // A panic here ends this thread only; the halting thread stops waiting.
            for ep in &endpoints {
                ep.close("node halted");
            }
            for ep in &endpoints {
                ep.wait_idle_blocking(HALT_GRACE);
            }
            let _ = done_tx.send(());
        });
    if spawned.is_ok() {
        let _ = done_rx.recv_timeout(HALT_GRACE * 2);
    }
}

/// Registers an endpoint to be closed at VM exit (and installs the hook once).
pub fn register(ep: &DistEndpoint) {
    HOOK.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function with no arguments is what atexit
        // expects; the function only touches statics that live for the whole process.
        #[allow(unsafe_code)]
        unsafe {
            atexit(close_all_on_exit);
        }
    });
    if let Ok(mut open) = OPEN.lock() {
        open.push(ep.clone());
    }
}

/// Forgets an endpoint closed by the node itself.
pub fn unregister(ep: &DistEndpoint) {
    if let Ok(mut open) = OPEN.lock() {
        open.retain(|e| !e.same_endpoint(ep));
    }
}
