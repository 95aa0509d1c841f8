//! Busy polling: the runtime's thread stays awake for a short while after work instead of
//! sleeping in the kernel.
//!
//! Waking a sleeping thread costs tens of microseconds on a virtual machine (a halted virtual
//! CPU must be rescheduled by the host), and a round trip between two nodes crosses several
//! threads: that, not QUIC, made quic_dist's round trip 2-3x TCP distribution's. The Erlang
//! schedulers already spin a little before sleeping; [`run`] does the same for the tokio thread:
//! after any sign of work ([`note_activity`]) it keeps polling (its tasks and, through tokio's
//! driver, the UDP socket) for a short window, giving the CPU away between polls
//! (`sched_yield`), so threads with real work are not held up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

// Process-wide: a node has one runtime (tests and examples may run several, each with its
// poller; activity anywhere then keeps them all polling).
static ACTIVITY: AtomicU64 = AtomicU64::new(0);
/// Pollers asleep until the next activity.
static PARKED: AtomicUsize = AtomicUsize::new(0);
static WAKE: Notify = Notify::const_new();

/// Records that work was handed to the runtime or done by it: a poller in [`run`] keeps
/// polling (or starts again).
pub fn note_activity() {
    ACTIVITY.fetch_add(1, SeqCst);
    if PARKED.load(SeqCst) > 0 {
        WAKE.notify_waiters();
    }
}

/// Spins for `window` after the last activity, then sleeps until the next; never returns.
/// Meant as the `block_on` future of a current-thread runtime, whose other tasks (and I/O
/// driver) run between its polls. A zero window never spins.
pub async fn run(window: Duration) {
    let mut seen = ACTIVITY.load(Relaxed);
    let mut last = Instant::now();
    loop {
        let now = ACTIVITY.load(Relaxed);
        if now != seen {
            seen = now;
            last = Instant::now();
        } else if last.elapsed() >= window {
            let woken = WAKE.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            PARKED.fetch_add(1, SeqCst);
            // Activity between our last look and the registration above would be missed.
            if ACTIVITY.load(SeqCst) == seen {
                woken.await;
            }
            PARKED.fetch_sub(1, SeqCst);
            seen = ACTIVITY.load(Relaxed);
            last = Instant::now();
            continue;
        }
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Waits (bounded) until the poller is parked (or not).
    fn wait_parked(parked: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if (PARKED.load(SeqCst) > 0) == parked {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn runs_tasks_while_spinning_parks_when_idle_and_wakes_on_activity() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tx.send(rt.handle().clone()).unwrap();
            rt.block_on(run(Duration::from_millis(20)));
        });
        let handle = rx.recv().unwrap();
        // Idle: it parks once the window is over.
        assert!(wait_parked(true), "the poller never parked");
        // Work from another thread wakes it and its tasks run.
        let (done_tx, done_rx) = mpsc::channel();
        note_activity();
        handle.spawn(async move {
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("task ran");
        // And it parks again after the window.
        assert!(wait_parked(true), "the poller kept spinning");
        // A task spawned while it spins runs too.
        note_activity();
        let (tx2, rx2) = mpsc::channel();
        handle.spawn(async move {
            tx2.send(()).unwrap();
        });
        rx2.recv_timeout(Duration::from_secs(5)).expect("task ran");
    }
}
