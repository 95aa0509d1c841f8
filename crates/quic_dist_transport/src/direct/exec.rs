//! An inline executor: a woken task is polled by the thread that woke it, when that thread
//! calls [`Executor::run`] (at the end of a NIF call, or on the timer thread), never by a
//! thread of its own.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Tasks ready to be polled.
#[derive(Debug, Default)]
pub struct Executor {
    ready: Mutex<VecDeque<Arc<Task>>>,
    /// One thread polls at a time (tasks share connection state; one at a time keeps the order
    /// in which they were woken).
    running: Mutex<()>,
}

struct Task {
    future: Mutex<Option<BoxFuture>>,
    queued: AtomicBool,
    executor: Weak<Executor>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").finish_non_exhaustive()
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, SeqCst) {
            return;
        }
        if let Some(ex) = self.executor.upgrade() {
            lock(&ex.ready).push_back(self.clone());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Executor {
    /// A new executor.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a task; it first runs at the next [`run`](Self::run).
    pub fn spawn(self: &Arc<Self>, future: impl Future<Output = ()> + Send + 'static) {
        // Outside tokio's budget: called from a tokio task that spent it (tests drive the
        // transport from one), every tokio channel would answer "pending" and wake the task at
        // once, and `run` would poll it again forever. The executor has no budget to give back.
        let future = tokio::task::unconstrained(future);
        let task = Arc::new(Task {
            future: Mutex::new(Some(Box::pin(future))),
            queued: AtomicBool::new(false),
            executor: Arc::downgrade(self),
        });
        task.wake_by_ref();
    }

    /// Polls ready tasks until none is left. If another thread is polling, returns at once:
    /// that thread takes what this one woke.
    pub fn run(&self) {
        loop {
            {
                let Ok(_running) = self.running.try_lock() else {
                    return;
                };
                loop {
                    // Not in the `while let` scrutinee: its guard would live through the body,
                    // and a task that wakes another would deadlock on it.
                    let next = lock(&self.ready).pop_front();
                    let Some(task) = next else { break };
                    task.queued.store(false, SeqCst);
                    let waker = Waker::from(task.clone());
                    let mut cx = Context::from_waker(&waker);
                    let mut slot = lock(&task.future);
                    if let Some(f) = slot.as_mut() {
                        if let Poll::Ready(()) = f.as_mut().poll(&mut cx) {
                            *slot = None;
                        }
                    }
                }
            }
            // A task woken after our last look, by a thread that found us running, would wait
            // for the next run: look once more now that we have let go.
            if lock(&self.ready).is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that is pending until `flag` is set, then wakes nobody but completes.
    struct Gate {
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.open.load(SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn tasks_run_on_the_thread_that_runs_the_executor_and_after_a_wake() {
        let ex = Executor::new();
        let open = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicUsize::new(0));
        let (o, w, d) = (open.clone(), waker.clone(), done.clone());
        ex.spawn(async move {
            Gate { open: o, waker: w }.await;
            d.fetch_add(1, SeqCst);
        });
        assert_eq!(done.load(SeqCst), 0, "nothing runs before run()");
        ex.run();
        assert_eq!(done.load(SeqCst), 0, "pending on the gate");
        // Waking from another thread only queues the task.
        open.store(true, SeqCst);
        let w = waker.lock().unwrap().take().unwrap();
        std::thread::spawn(move || w.wake()).join().unwrap();
        assert_eq!(done.load(SeqCst), 0, "queued, not run");
        ex.run();
        assert_eq!(done.load(SeqCst), 1);
    }

    /// A waker that does nothing.
    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test]
    async fn run_from_a_tokio_task_whose_budget_is_spent_does_not_spin() {
        // Spend the budget of this tokio task without yielding.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        for i in 0..1000 {
            tx.send(i).unwrap();
            let _ = std::pin::pin!(rx.recv()).poll(&mut cx);
        }
        // A task of ours takes a message that is there: one poll, not a loop of
        // "pending, wake again" polls.
        let ex = Executor::new();
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<u32>();
        tx2.send(7).unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(AtomicUsize::new(0));
        let (p, g) = (polls.clone(), got.clone());
        ex.spawn(async move {
            let mut recv = std::pin::pin!(rx2.recv());
            let v = std::future::poll_fn(|cx| {
                // Give up after many polls, so that the test fails instead of spinning.
                if p.fetch_add(1, SeqCst) > 1000 {
                    return Poll::Ready(None);
                }
                recv.as_mut().poll(cx)
            })
            .await;
            g.store(v.map_or(0, |v| v as usize), SeqCst);
        });
        ex.run();
        assert_eq!(got.load(SeqCst), 7);
        assert_eq!(polls.load(SeqCst), 1);
    }

    #[test]
    fn a_task_woken_twice_before_a_run_is_polled_once() {
        let ex = Executor::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let (p, w) = (polls.clone(), waker.clone());
        ex.spawn(std::future::poll_fn(move |cx| {
            p.fetch_add(1, SeqCst);
            *w.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        }));
        ex.run();
        let w = waker.lock().unwrap().clone().unwrap();
        w.wake_by_ref();
        w.wake_by_ref();
        ex.run();
        assert_eq!(polls.load(SeqCst), 2);
    }
}
