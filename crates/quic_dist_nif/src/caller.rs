//! Sending messages to Erlang processes from wherever the transport calls back.
//!
//! The transport runs its work on the thread that caused it: inside a NIF call on a scheduler
//! (a send, the endpoint's receive), or on the endpoint's timer thread. erts allows `enif_send`
//! on a scheduler only with the calling process's environment, so each NIF that drives the
//! transport marks its thread with [`enter`] for the length of the call; [`send`] then uses
//! that environment, a process-independent one on our own threads, and a postman thread in
//! the rare case left (a scheduler outside a NIF call: a resource destructor).
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use rustler::sys::{enif_send, ErlNifEnv};
use rustler::{Env, LocalPid, OwnedEnv, Term};

/// Builds a message in the environment it is given.
pub type Build = Box<dyn for<'a> FnOnce(Env<'a>) -> Term<'a> + Send>;

thread_local! {
    /// The environment of the NIF call running on this thread, if any.
    static CALLER: Cell<*mut ErlNifEnv> = const { Cell::new(std::ptr::null_mut()) };
    /// Messages are built here, then moved (not copied) into the receiver by `enif_send`.
    static MESSAGE_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

/// Marks the thread as inside a NIF call of `env`'s process until dropped.
#[must_use]
pub struct CallerGuard {
    previous: *mut ErlNifEnv,
}

/// Lets [`send`] use `env` on this thread until the guard drops (at the end of the NIF call).
pub fn enter(env: Env) -> CallerGuard {
    let previous = CALLER.with(|c| c.replace(env.as_c_arg()));
    CallerGuard { previous }
}

impl Drop for CallerGuard {
    fn drop(&mut self) {
        CALLER.with(|c| c.set(self.previous));
    }
}

/// Sends the message `build` makes to `pid`, from any thread. A dead `pid` drops it.
pub fn send<F>(pid: &LocalPid, build: F)
where
    F: for<'a> FnOnce(Env<'a>) -> Term<'a> + Send + 'static,
{
    let caller = CALLER.with(|c| c.get());
    if !caller.is_null() {
        MESSAGE_ENV.with(|cell| {
            let mut owned = cell.borrow_mut();
            let (msg_env, msg) = owned.run(|env| (env.as_c_arg(), build(env).as_c_arg()));
            // SAFETY: `caller` is the environment of the NIF call running on this thread (set
            // by `enter`, reset when the call returns); the message lives in `msg_env`, a
            // process-independent environment, as `enif_send` requires.
            unsafe { enif_send(caller, pid.as_c_arg(), msg_env, msg) };
            owned.clear();
        });
    } else if !rustler::thread::is_scheduler_thread() {
        MESSAGE_ENV.with(|cell| {
            let _ = cell.borrow_mut().send_and_clear(pid, build);
        });
    } else {
        let _ = postman().lock().map(|tx| tx.send((*pid, Box::new(build))));
    }
}

/// A thread that sends what schedulers outside NIF calls hand it.
fn postman() -> &'static Mutex<Sender<(LocalPid, Build)>> {
    static POSTMAN: OnceLock<Mutex<Sender<(LocalPid, Build)>>> = OnceLock::new();
    POSTMAN.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(LocalPid, Build)>();
        let _ = std::thread::Builder::new()
            .name("quic_dist_postman".into())
            .spawn(move || {
                let mut env = OwnedEnv::new();
                for (pid, build) in rx {
                    let _ = env.send_and_clear(&pid, build);
                }
            });
        Mutex::new(tx)
    })
}
