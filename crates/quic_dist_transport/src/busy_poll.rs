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

/// Idle gaps shorter than this are pauses within one burst of work, not waits for the peer.
const BURST_GAP: Duration = Duration::from_micros(20);
/// Idle gaps remembered to predict the next.
const GAPS: usize = 4;
/// Shortest polling window: covers the hand-offs within one burst (a writer task after the
/// scheduler queued a batch, an acknowledgement after a delivery).
const MIN_WINDOW: Duration = Duration::from_micros(50);

/// How long to keep polling after activity, from the idle gaps seen lately.
///
/// Polling pays when the next activity comes soon: the answer to a request a round trip later.
/// It is waste when traffic trickles in at longer intervals, where polling until the next
/// message would cost a whole core for a few tens of microseconds saved per message. So the
/// window covers twice the longest of the last few idle gaps, as long as that is within `cap`;
/// when the gaps are longer than `cap`, only the short [`MIN_WINDOW`].
#[derive(Debug, Clone)]
pub(crate) struct SpinPolicy {
    cap: Duration,
    gaps: [Duration; GAPS],
    next: usize,
}

impl SpinPolicy {
    /// A policy polling at most `cap` after activity.
    pub(crate) fn new(cap: Duration) -> Self {
        Self {
            cap,
            // Until gaps are known: poll as long as allowed.
            gaps: [Duration::ZERO; GAPS],
            next: 0,
        }
    }

    /// Activity came `gap` after the previous activity.
    pub(crate) fn record(&mut self, gap: Duration) {
        if gap >= BURST_GAP {
            self.gaps[self.next] = gap;
            self.next = (self.next + 1) % GAPS;
        }
    }

    /// How long to keep polling after the latest activity.
    pub(crate) fn window(&self) -> Duration {
        let floor = MIN_WINDOW.min(self.cap);
        let longest = self.gaps.iter().copied().max().unwrap_or_default();
        if longest.is_zero() {
            return self.cap;
        }
        if longest > self.cap {
            return floor;
        }
        (longest * 2 + BURST_GAP).clamp(floor, self.cap)
    }
}

/// Polls for a while after each activity (at most `cap`, see [`SpinPolicy`]), then sleeps until
/// the next; never returns. Meant as the `block_on` future of a current-thread runtime, whose
/// other tasks (and I/O driver) run between its polls. A zero `cap` never polls.
pub async fn run(cap: Duration) {
    let mut policy = SpinPolicy::new(cap);
    let mut seen = ACTIVITY.load(Relaxed);
    let mut last = Instant::now();
    let mut window = policy.window();
    loop {
        let now = ACTIVITY.load(Relaxed);
        if now != seen {
            seen = now;
            let t = Instant::now();
            policy.record(t - last);
            window = policy.window();
            last = t;
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

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn polls_through_short_gaps_and_not_through_long_ones() {
        let mut p = SpinPolicy::new(us(1000));
        assert_eq!(p.window(), us(1000), "nothing known yet: the cap");
        // A ping-pong: the peer answers about 100 us after we sent.
        for _ in 0..GAPS {
            p.record(us(5)); // within a burst: ignored
            p.record(us(100));
        }
        assert_eq!(p.window(), us(220));
        // Traffic now trickles in every 2 ms: polling until then would cost a core.
        for _ in 0..GAPS {
            p.record(us(2000));
        }
        assert_eq!(p.window(), MIN_WINDOW);
        // One short gap among long ones does not bring polling back; all short ones do.
        p.record(us(100));
        assert_eq!(p.window(), MIN_WINDOW);
        for _ in 0..GAPS {
            p.record(us(400));
        }
        assert_eq!(p.window(), us(820).min(us(1000)));
        // Never beyond the cap, never below the floor (or the cap, if smaller).
        for _ in 0..GAPS {
            p.record(us(900));
        }
        assert_eq!(p.window(), us(1000));
        let mut tight = SpinPolicy::new(us(10));
        tight.record(us(100));
        assert_eq!(tight.window(), us(10));
        let off = SpinPolicy::new(Duration::ZERO);
        assert_eq!(off.window(), Duration::ZERO);
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
