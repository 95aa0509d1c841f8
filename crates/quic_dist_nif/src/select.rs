//! Readiness of a UDP socket as Erlang messages (`enif_select`), so that the process it wakes
//! reads the socket on its own scheduler: no thread of ours in between.
//!
//! rustler 0.37 has no safe `enif_select`, and its resource types have no `stop` callback, which
//! erts needs before a selected descriptor may be closed. So this module opens its own resource
//! type with the raw NIF API; it is the only `unsafe` code of the crate. The watch holds a
//! duplicate of the socket's descriptor: the socket itself may close at any time, the
//! duplicate is closed in `stop`, once erts no longer polls it.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering::SeqCst};

use rustler::sys::{
    enif_alloc_resource, enif_open_resource_type_x, enif_release_resource, enif_select, ErlNifEnv,
    ErlNifEvent, ErlNifResourceFlags, ErlNifResourceStop, ErlNifResourceType,
    ErlNifResourceTypeInit, ERL_NIF_SELECT_READ, ERL_NIF_SELECT_STOP,
};
use rustler::{Encoder, Env};

/// The resource type, opened at each load of the library: after `init:restart/0` the runtime
/// loads it again (the same mapping, so these statics survive) and the new load takes the type
/// over, with any watch that is still selected.
static WATCH_TYPE: AtomicPtr<ErlNifResourceType> = AtomicPtr::new(std::ptr::null_mut());

/// What a watch resource holds: the duplicated descriptor, -1 once closed.
struct WatchData {
    fd: AtomicI32,
}

unsafe extern "C" fn watch_stop(
    _env: *mut ErlNifEnv,
    obj: *mut c_void,
    _event: ErlNifEvent,
    _is_direct_call: i32,
) {
    // SAFETY: `obj` is a watch resource, initialised in `SocketWatch::new`.
    let data = unsafe { &*(obj as *const WatchData) };
    close(data);
}

unsafe extern "C" fn watch_dtor(_env: *mut ErlNifEnv, obj: *mut c_void) {
    // SAFETY: as in `watch_stop`. Never selected, or stopped already: closing is safe.
    let data = unsafe { &*(obj as *const WatchData) };
    close(data);
}

fn close(data: &WatchData) {
    let fd = data.fd.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: the descriptor was duplicated for this watch and is closed once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Opens the resource type; call from the NIF's `load`.
pub fn init(env: Env) -> bool {
    let init = ErlNifResourceTypeInit {
        dtor: watch_dtor as *const rustler::sys::ErlNifResourceDtor,
        stop: watch_stop as *const ErlNifResourceStop,
        down: std::ptr::null(),
        members: 2,
        dyncall: std::ptr::null(),
    };
    // The type is new, or left by an earlier load of the library whose watches erts still
    // holds: take it over then (rustler's flags enum cannot say both at once).
    let open = |flags| {
        // SAFETY: called during load with the load environment; the name is NUL-terminated.
        unsafe {
            enif_open_resource_type_x(
                env.as_c_arg(),
                c"quic_dist_socket_watch".as_ptr(),
                &init,
                flags,
                std::ptr::null_mut(),
            )
        }
    };
    let mut ty = open(ErlNifResourceFlags::ERL_NIF_RT_CREATE);
    if ty.is_null() {
        ty = open(ErlNifResourceFlags::ERL_NIF_RT_TAKEOVER);
    }
    WATCH_TYPE.store(ty as *mut ErlNifResourceType, SeqCst);
    !ty.is_null()
}

/// Why arming a watch failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The resource type was not opened (the library did not load through `load`).
    #[error("socket watch resource type not initialised")]
    NotInitialised,
    /// `dup` failed.
    #[error("cannot duplicate the socket: {0}")]
    Dup(#[from] std::io::Error),
    /// `enif_select` refused (code from erts).
    #[error("enif_select failed ({0})")]
    Select(i32),
}

/// A socket whose readability can be sent as a message to an Erlang process.
pub struct SocketWatch {
    obj: *const c_void,
}

// SAFETY: a resource reference may be used and released from any thread.
unsafe impl Send for SocketWatch {}
unsafe impl Sync for SocketWatch {}

impl SocketWatch {
    /// A watch on (a duplicate of) `socket`.
    pub fn new(socket: impl AsFd) -> Result<Self, WatchError> {
        let ty = WATCH_TYPE.load(SeqCst);
        if ty.is_null() {
            return Err(WatchError::NotInitialised);
        }
        let fd = socket.as_fd().try_clone_to_owned()?;
        // SAFETY: allocates room for a WatchData, written before anyone can see it.
        let obj = unsafe { enif_alloc_resource(ty, std::mem::size_of::<WatchData>()) };
        // SAFETY: `obj` points to fresh memory of the right size and alignment (erts aligns
        // resources for any type).
        unsafe {
            std::ptr::write(
                obj as *mut WatchData,
                WatchData {
                    fd: AtomicI32::new(fd.as_raw_fd()),
                },
            )
        };
        std::mem::forget(fd);
        Ok(Self { obj })
    }

    fn fd(&self) -> RawFd {
        // SAFETY: `obj` is a live watch resource (we hold a reference).
        unsafe { &*(self.obj as *const WatchData) }.fd.load(SeqCst)
    }

    /// Asks erts to send the calling process `{select, Watch, undefined, ready_input}` once the
    /// socket is readable. One message per call: arm again after reading.
    pub fn arm(&self, env: Env) -> Result<(), WatchError> {
        let undefined = rustler::types::atom::undefined().encode(env);
        // SAFETY: a process-bound env (a NIF call); pid NULL means the caller.
        let r = unsafe {
            enif_select(
                env.as_c_arg(),
                self.fd(),
                ERL_NIF_SELECT_READ,
                self.obj,
                std::ptr::null(),
                undefined.as_c_arg(),
            )
        };
        if r < 0 {
            return Err(WatchError::Select(r));
        }
        Ok(())
    }

    /// Stops watching; the duplicate descriptor closes once erts lets go of it.
    pub fn stop(&self, env: Env) {
        let undefined = rustler::types::atom::undefined().encode(env);
        // SAFETY: as in `arm`.
        unsafe {
            enif_select(
                env.as_c_arg(),
                self.fd(),
                ERL_NIF_SELECT_STOP,
                self.obj,
                std::ptr::null(),
                undefined.as_c_arg(),
            )
        };
    }
}

impl Drop for SocketWatch {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken by `enif_alloc_resource`.
        unsafe { enif_release_resource(self.obj) };
    }
}
