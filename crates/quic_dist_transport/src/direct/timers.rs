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
    pub(crate) fn arm(&self, at: Instant, conn: Weak<Connection>) {
        self.push(at, Due::Conn(conn));
    }

    /// Wakes `waker` at `at` (and runs the tasks it woke).
    pub(crate) fn wake_at(&self, at: Instant, waker: std::task::Waker) {
        self.push(at, Due::Task(waker));
    }

    fn push(&self, at: Instant, due: Due) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let id = q.next_id;
        q.next_id += 1;
        let earliest = q.heap.peek().map(|Reverse((t, _))| *t);
        q.heap.push(Reverse((at, id)));
        q.due.insert(id, due);
        if earliest.map_or(true, |t| at < t) {
            self.shared.changed.notify_one();
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
