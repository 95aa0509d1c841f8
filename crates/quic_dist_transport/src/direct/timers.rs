//! QUIC's timers (loss detection, acknowledgement delay, idle timeout) for connections that
//! no thread waits on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Instant;

use super::endpoint::Connection;
use super::exec::Executor;

/// A thread that drives each connection when its QUIC timer is due. Off the fast path: data
/// and acknowledgements arrive and leave on their users' threads; this thread only wakes for
/// retransmissions, delayed acknowledgements and timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Timers {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Runs the tasks the timers woke.
    executor: Arc<Executor>,
}

/// An entry in the timer queue, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerId(u64);

/// Cancelled entries the heap may hold beyond its live ones before it is rebuilt.
const PRUNE_SLACK: usize = 64;

/// What is due at a time.
#[derive(Debug)]
enum Due {
    /// A connection's QUIC timer.
    Conn(Weak<Connection>),
    /// A task's sleep or timeout.
    Task(std::task::Waker),
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    due: std::collections::HashMap<u64, Due>,
    next_id: u64,
    stopped: bool,
}

impl Timers {
    /// Starts the thread; it ends when the last handle is dropped.
    pub(crate) fn start(executor: Arc<Executor>) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            changed: Condvar::new(),
            executor,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("quic_dist_timers".into())
            .spawn(move || run(weak))
            .expect("timer thread");
        Self { shared }
    }

    /// Drives `conn` at `at` (if it still wants that time then, see `Connection::on_timer`).
    /// The entry can be taken back with [`Timers::cancel`].
    pub(crate) fn arm(&self, at: Instant, conn: Weak<Connection>) -> TimerId {
        self.push(at, Due::Conn(conn))
    }

    /// Takes back an entry that has not fired: one superseded by an earlier deadline, or that
    /// of a connection that is gone. Without this such entries stayed until their time, up to
    /// the idle timeout (300 s), each keeping a closed connection's memory allocated through
    /// its weak reference: 1.5 KB per reconnect.
    pub(crate) fn cancel(&self, id: TimerId) {
        self.lock().cancel(id);
    }

    /// [`cancel`](Self::cancel) of `old` and [`arm`](Self::arm) at `at` under one lock: for a
    /// connection whose deadline moved earlier.
    pub(crate) fn rearm(&self, old: TimerId, at: Instant, conn: Weak<Connection>) -> TimerId {
        let mut q = self.lock();
        q.cancel(old);
        self.push_locked(&mut q, at, Due::Conn(conn))
    }

    /// Wakes `waker` at `at` (and runs the tasks it woke).
    pub(crate) fn wake_at(&self, at: Instant, waker: std::task::Waker) {
        self.push(at, Due::Task(waker));
    }

    fn push(&self, at: Instant, due: Due) -> TimerId {
        let mut q = self.lock();
        self.push_locked(&mut q, at, due)
    }

    fn push_locked(&self, q: &mut Queue, at: Instant, due: Due) -> TimerId {
        let id = q.next_id;
        q.next_id += 1;
        let earliest = q.heap.peek().map(|Reverse((t, _))| *t);
        q.heap.push(Reverse((at, id)));
        q.due.insert(id, due);
        if earliest.map_or(true, |t| at < t) {
            self.shared.changed.notify_one();
        }
        TimerId(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Queue {
    /// Drops entry `id` if it has not fired.
    fn cancel(&mut self, id: TimerId) {
        if self.due.remove(&id.0).is_some() && self.heap.len() > 2 * self.due.len() + PRUNE_SLACK {
            // The heap cannot drop one entry; rebuild it when most of it is stale.
            let Queue { heap, due, .. } = self;
            heap.retain(|Reverse((_, id))| due.contains_key(id));
        }
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        // The thread holds a weak reference only; the last handle stops it.
        if Arc::strong_count(&self.shared) == 1 {
            self.shared
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stopped = true;
            self.shared.changed.notify_one();
        }
    }
}

fn run(shared: Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        loop {
            if q.stopped {
                return;
            }
            let now = Instant::now();
            match q.heap.peek() {
                Some(Reverse((t, _))) if *t <= now => {
                    let Reverse((t, id)) = q.heap.pop().expect("peeked");
                    if let Some(d) = q.due.remove(&id) {
                        due.push((t, d));
                    }
                }
                Some(Reverse((t, _))) => {
                    if !due.is_empty() {
                        break;
                    }
                    let wait = *t - now;
                    q = s
                        .changed
                        .wait_timeout(q, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => {
                    if !due.is_empty() {
                        break;
                    }
                    // Wake now and then to notice that the endpoint is gone.
                    q = s
                        .changed
                        .wait_timeout(q, std::time::Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if Arc::strong_count(&s) == 1 {
                        return;
                    }
                }
            }
        }
        drop(q);
        for (t, due) in due {
            match due {
                Due::Conn(conn) => {
                    if let Some(conn) = conn.upgrade() {
                        conn.on_timer(t);
                    }
                }
                Due::Task(waker) => waker.wake(),
            }
        }
        s.executor.run();
        drop(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn len(timers: &Timers) -> (usize, usize) {
        let q = timers.shared.queue.lock().unwrap();
        (q.heap.len(), q.due.len())
    }

    #[test]
    fn cancelled_entries_leave_the_queue() {
        let timers = Timers::start(Executor::new());
        let far = Instant::now() + Duration::from_secs(300);
        let ids: Vec<TimerId> = (0..1000)
            .map(|i| {
                timers.push(
                    far + Duration::from_millis(i),
                    Due::Task(std::task::Waker::noop().clone()),
                )
            })
            .collect();
        assert_eq!(len(&timers), (1000, 1000));
        for id in &ids[..999] {
            timers.cancel(*id);
        }
        let (heap, due) = len(&timers);
        assert_eq!(due, 1);
        assert!(heap <= 2 + PRUNE_SLACK, "heap of {heap} for one live entry");
        // Cancelling twice, or an entry that fired, changes nothing.
        timers.cancel(ids[0]);
        assert_eq!(len(&timers).1, 1);
    }

    #[test]
    fn a_cancelled_entry_does_not_wake() {
        let timers = Timers::start(Executor::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let waker = std::task::Waker::from(Arc::new(SendOnWake(Mutex::new(tx))));
        // Both due at the same time, well after the cancel.
        let at = Instant::now() + Duration::from_millis(200);
        let cancelled = timers.push(at, Due::Task(waker.clone()));
        timers.push(at, Due::Task(waker));
        timers.cancel(cancelled);
        rx.recv_timeout(Duration::from_secs(10)).expect("woken");
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "woken twice"
        );
    }

    #[test]
    fn a_rearmed_entry_replaces_the_old_one() {
        let timers = Timers::start(Executor::new());
        let far = Instant::now() + Duration::from_secs(300);
        let old = timers.arm(far, Weak::new());
        let new = timers.rearm(old, far - Duration::from_secs(1), Weak::new());
        assert_ne!(old, new);
        let q = timers.shared.queue.lock().unwrap();
        assert_eq!(q.due.len(), 1, "one live entry");
        assert!(q.due.contains_key(&new.0) && !q.due.contains_key(&old.0));
    }

    struct SendOnWake(Mutex<std::sync::mpsc::Sender<()>>);

    impl std::task::Wake for SendOnWake {
        fn wake(self: Arc<Self>) {
            let _ = self.0.lock().unwrap().send(());
        }
    }
}
