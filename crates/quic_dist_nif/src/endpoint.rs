//! NIFs for the node's endpoint: open, accept, connect, close.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use quic_dist_transport::cookie_trust::cookie_material;
use quic_dist_transport::{
    ClientConfigs, DistEndpoint, TlsMaterial, TransportError, TransportOptions,
};

use rustler::{
    Atom, Decoder, Encoder, Env, LocalPid, NifResult, OwnedEnv, Resource, ResourceArc, Term,
};

use crate::atoms;
use crate::caller;
use crate::connection::ConnRes;
use crate::select::SocketWatch;
use crate::terms::{decode_ip, error_tuple};
use crate::{halt, logging};

/// Receive batches (up to 8 datagrams each) one `endpoint_receive` call handles before it
/// returns, so that a flood of datagrams cannot hold a scheduler: the watch, armed again, says
/// at once that more is waiting. One: the receiver then yields between batches and the input
/// handlers it fed run beside it (bulk between two nodes, 32-datagram batches: 1.4 GB/s with
/// one per call, 1.15 with 16; with 8-datagram batches and one per call, 1.4-1.8).
const RECEIVE_BATCHES_PER_CALL: usize = 1;

/// The node's QUIC endpoint, held by the Erlang side as a resource.
pub struct EndpointRes {
    pub ep: DistEndpoint,
    /// Readiness of the endpoint's socket, as messages to the process that reads it.
    watch: SocketWatch,
}

#[rustler::resource_impl]
impl Resource for EndpointRes {}

/// A TLS identity and trust to connect with, other than the endpoint's own (`endpoint_client/2`).
pub struct ClientRes {
    configs: ClientConfigs,
}

#[rustler::resource_impl]
impl Resource for ClientRes {}

fn get<'a, T: Decoder<'a>>(map: Term<'a>, key: Atom) -> NifResult<Option<T>> {
    match map.map_get(key) {
        Ok(v) => v.decode().map(Some),
        Err(_) => Ok(None),
    }
}

fn tls_material(tls: Term) -> NifResult<Result<TlsMaterial, String>> {
    let insecure = get::<bool>(tls, atoms::insecure())?.unwrap_or(false);
    Ok(select_material(tls)?.map(|mut m| {
        m.verify_peer = !insecure;
        m
    }))
}

fn select_material(tls: Term) -> NifResult<Result<TlsMaterial, String>> {
    if let (Some(c), Some(k), Some(a)) = (
        get::<String>(tls, atoms::certfile())?,
        get::<String>(tls, atoms::keyfile())?,
        get::<String>(tls, atoms::cacertfile())?,
    ) {
        return Ok(
            TlsMaterial::from_pem_files(Path::new(&c), Path::new(&k), Path::new(&a))
                .map_err(|e| e.to_string()),
        );
    }
    if let (Some(c), Some(k), Some(a)) = (
        get::<rustler::Binary>(tls, atoms::cert_pem())?,
        get::<rustler::Binary>(tls, atoms::key_pem())?,
        get::<rustler::Binary>(tls, atoms::ca_pem())?,
    ) {
        return Ok(
            TlsMaterial::from_pem(c.as_slice(), k.as_slice(), a.as_slice())
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(cookie) = get::<rustler::Binary>(tls, atoms::cookie())? {
        let names = get::<Vec<String>>(tls, atoms::names())?.unwrap_or_default();
        let common_name = get::<String>(tls, atoms::common_name())?.unwrap_or_default();
        return Ok(
            cookie_material(cookie.as_slice(), &common_name, &names).map_err(|e| e.to_string())
        );
    }
    Ok(Err(
        "no certificate configured: give certfile, keyfile and cacertfile".into(),
    ))
}

fn transport_options(opts: Term) -> NifResult<TransportOptions> {
    let mut t = TransportOptions::default();
    if let Some(ms) = get::<u64>(opts, atoms::idle_timeout_ms())? {
        t.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = get::<u64>(opts, atoms::handshake_timeout_ms())? {
        t.handshake_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = get::<usize>(opts, atoms::max_frame())? {
        t.max_frame = n;
    }
    if let Some(n) = get::<u32>(opts, atoms::stream_window())? {
        t.stream_window = n;
    }
    if let Some(n) = get::<u64>(opts, atoms::mixed_window())? {
        t.mixed_window = n;
    }
    if let Some(n) = get::<usize>(opts, atoms::streams())? {
        t.streams = n;
    }
    if let Some(name) = get::<Term>(opts, atoms::congestion())? {
        t.congestion = name
            .atom_to_string()?
            .parse()
            .map_err(|_| rustler::Error::BadArg)?;
    }
    // Room for every data stream and the control stream (see TransportOptions), unless set.
    let all_streams = (t.streams.clamp(1, 64) as u32 + 1).saturating_mul(t.stream_window);
    t.connection_window = get::<u32>(opts, atoms::connection_window())?.unwrap_or(all_streams);
    t.send_window = u64::from(t.connection_window);
    Ok(t)
}

/// Starts the log forwarding to `log_pid`; idempotent.
#[rustler::nif]
fn log_init<'a>(env: Env<'a>, log_pid: LocalPid, log_filter: String) -> Term<'a> {
    match logging::init(log_pid, &log_filter) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_tuple(env, e),
    }
}

/// Binds the node's UDP socket; `{ok, Endpoint}` or `{error, Reason}`. On a dirty scheduler:
/// in cookie mode the key derivation alone takes about 30 ms, which on a normal scheduler held
/// one for 40 ms whenever distribution started in a running system (`net_kernel:start/2`).
#[rustler::nif(schedule = "DirtyCpu")]
fn endpoint_open<'a>(
    env: Env<'a>,
    ip: Term<'a>,
    port: u16,
    listen: bool,
    tls: Term<'a>,
    opts: Term<'a>,
) -> NifResult<Term<'a>> {
    let addr = SocketAddr::new(decode_ip(ip)?, port);
    let material = match tls_material(tls)? {
        Ok(m) => m,
        Err(e) => return Ok(error_tuple(env, e)),
    };
    let opts = transport_options(opts)?;
    Ok(
        match DistEndpoint::bind(addr, &material, listen, opts).and_then(|ep| {
            let socket = ep
                .socket_handle()
                .map_err(|source| TransportError::Bind { addr, source })?;
            let watch = SocketWatch::new(&socket).map_err(|e| TransportError::Bind {
                addr,
                source: std::io::Error::other(e.to_string()),
            })?;
            Ok(EndpointRes { ep, watch })
        }) {
            Ok(res) => {
                halt::register(&res.ep);
                (atoms::ok(), ResourceArc::new(res)).encode(env)
            }
            Err(e) => error_tuple(env, e),
        },
    )
}

/// Reads what waits on the endpoint's socket and does all that follows on this scheduler
/// (QUIC, deliveries to input handlers, new connections), then asks for
/// `{select, _, undefined, ready_input}` to the caller when the socket is readable again.
/// `ok`, or `{error, Reason}` if the socket failed.
#[rustler::nif]
fn endpoint_receive<'a>(env: Env<'a>, ep: ResourceArc<EndpointRes>) -> Term<'a> {
    let _caller = caller::enter(env);
    let started = std::time::Instant::now();
    let received = ep.ep.receive_some(RECEIVE_BATCHES_PER_CALL);
    // Count the work against the caller's time slice (about a millisecond in all).
    let percent = (started.elapsed().as_micros() / 10).clamp(1, 100) as i32;
    let _ = rustler::schedule::consume_timeslice(env, percent);
    // Armed even after a failed read: the next datagram must still be read.
    let armed = ep.watch.arm(env);
    match (received, armed) {
        (Ok(_), Ok(())) => atoms::ok().encode(env),
        (Err(e), _) => error_tuple(env, e.to_string()),
        (_, Err(e)) => error_tuple(env, e.to_string()),
    }
}

/// Reads what waits on the endpoint's socket as `endpoint_receive` does, but arms no select:
/// for the process holding a turn at reading (the node's poller, or an input handler), which
/// calls it in a loop while datagrams are expected. With `yield_if_empty`, a read that found
/// nothing gives the core to any thread that wants it. The number of datagrams it read (0:
/// none was waiting), or `{error, Reason}`.
#[rustler::nif]
fn endpoint_poll<'a>(env: Env<'a>, ep: ResourceArc<EndpointRes>, yield_if_empty: bool) -> Term<'a> {
    let _caller = caller::enter(env);
    match ep.ep.poll_some(RECEIVE_BATCHES_PER_CALL) {
        Ok(0) => {
            // Nothing waiting: the caller spins, so let any thread that wants this core
            // (another node's, on a small machine) have it now, as the runtime's busy wait
            // does; unless the caller would rather keep it (quic_dist_receiver says when).
            if yield_if_empty {
                std::thread::yield_now();
            }
            0usize.encode(env)
        }
        Ok(n) => n.encode(env),
        Err(e) => error_tuple(env, e.to_string()),
    }
}

/// Stops watching the endpoint's socket (the caller no longer reads it).
#[rustler::nif]
fn endpoint_unwatch(env: Env, ep: ResourceArc<EndpointRes>) -> Atom {
    ep.watch.stop(env);
    atoms::ok()
}

/// The UDP port the endpoint is bound to.
#[rustler::nif]
fn endpoint_port(ep: ResourceArc<EndpointRes>) -> NifResult<u16> {
    ep.ep
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| rustler::Error::Term(Box::new(e.to_string())))
}

/// Sends `{quic_dist_incoming, Conn}` to `acceptor` for every accepted connection. With
/// `hold`, new connections wait before their TLS handshake until `endpoint_admit/1`, and
/// `quic_dist_held` goes to `acceptor` when some start waiting.
#[rustler::nif]
fn endpoint_accept(ep: ResourceArc<EndpointRes>, acceptor: LocalPid, hold: bool) -> Atom {
    ep.ep.accept_loop(move |conn| {
        let res = ResourceArc::new(ConnRes::new(conn));
        caller::send(&acceptor, move |env| {
            (atoms::quic_dist_incoming(), res).encode(env)
        });
    });
    if hold {
        ep.ep.hold_incoming(move || {
            caller::send(&acceptor, |env| atoms::quic_dist_held().encode(env));
        });
    }
    atoms::ok()
}

/// Starts the TLS handshakes of the connections held so far (see `endpoint_accept/3`).
#[rustler::nif]
fn endpoint_admit(env: Env, ep: ResourceArc<EndpointRes>) -> Atom {
    let _caller = caller::enter(env);
    ep.ep.admit_held();
    atoms::ok()
}

/// Uses the TLS identity and trust `tls` (as for `endpoint_open`) for connections made or
/// accepted from now on. On a dirty scheduler: in cookie mode the CA key is derived with
/// PBKDF2 (~30 ms).
#[rustler::nif(schedule = "DirtyCpu")]
fn endpoint_set_tls<'a>(
    env: Env<'a>,
    ep: ResourceArc<EndpointRes>,
    tls: Term<'a>,
) -> NifResult<Term<'a>> {
    with_material(env, tls, |m| ep.ep.set_tls(m).map(|()| atoms::ok()))
}

/// Decodes `tls` (as `endpoint_open` takes it) and encodes what `f` makes of the material, or
/// `{error, Reason}`.
fn with_material<'a, T: Encoder>(
    env: Env<'a>,
    tls: Term<'a>,
    f: impl FnOnce(&TlsMaterial) -> Result<T, TransportError>,
) -> NifResult<Term<'a>> {
    let material = match tls_material(tls)? {
        Ok(m) => m,
        Err(e) => return Ok(error_tuple(env, e)),
    };
    Ok(match f(&material) {
        Ok(v) => v.encode(env),
        Err(e) => error_tuple(env, e),
    })
}

/// Closes every connection of the endpoint, telling peers, and waits (up to 500 ms) until the
/// notifications are out, so a stopping node's peers see nodedown at once.
#[rustler::nif(schedule = "DirtyIo")]
fn endpoint_close(env: Env, ep: ResourceArc<EndpointRes>, reason: String) -> Atom {
    let _caller = caller::enter(env);
    halt::unregister(&ep.ep);
    ep.ep.close(&reason);
    ep.ep.wait_idle_blocking(Duration::from_millis(500));
    atoms::ok()
}

/// `{ok, Client}`: the TLS identity and trust `tls` (as for `endpoint_open`) to connect with
/// (`connect/7`), or `{error, Reason}`. On a dirty scheduler: in cookie mode the CA key is
/// derived with PBKDF2 (~30 ms).
#[rustler::nif(schedule = "DirtyCpu")]
fn endpoint_client<'a>(
    env: Env<'a>,
    ep: ResourceArc<EndpointRes>,
    tls: Term<'a>,
) -> NifResult<Term<'a>> {
    with_material(env, tls, |m| {
        let configs = ep.ep.client_configs(m)?;
        Ok((atoms::ok(), ResourceArc::new(ClientRes { configs })))
    })
}

/// Starts a connection, with the endpoint's identity or `client`'s (from `endpoint_client/2`;
/// `undefined`: the endpoint's); `{quic_dist_connected, Ref, {ok, Conn} | {error, Reason}}`
/// goes to `owner` when it is established or has failed.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn connect<'a>(
    env: Env<'a>,
    ep: ResourceArc<EndpointRes>,
    ip: Term<'a>,
    port: u16,
    server_name: String,
    owner: LocalPid,
    reference: Term<'a>,
    client: Term<'a>,
) -> NifResult<Atom> {
    let _caller = caller::enter(env);
    let addr = SocketAddr::new(decode_ip(ip)?, port);
    let client = if client == atoms::undefined().to_term(env) {
        None
    } else {
        Some(client.decode::<ResourceArc<ClientRes>>()?)
    };
    let owned = OwnedEnv::new();
    let saved = owned.save(reference);
    let configs = client.as_ref().map(|c| &c.configs);
    ep.ep
        .spawn_connect_as(addr, server_name, configs, move |result| {
            caller::send(&owner, move |env| {
                let reference = owned.run(|saved_env| saved.load(saved_env).in_env(env));
                let result = match result {
                    Ok(conn) => (atoms::ok(), ResourceArc::new(ConnRes::new(conn))).encode(env),
                    Err(e) => error_tuple(env, e),
                };
                (atoms::quic_dist_connected(), reference, result).encode(env)
            });
        });
    Ok(atoms::ok())
}
