//! A QUIC endpoint and its connections, driven by whichever thread has something to do.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use quinn_proto::{
    ClientConfig, ConnectError, ConnectionHandle, DatagramEvent, EndpointConfig, Event,
    ServerConfig, StreamEvent, StreamId,
};
use tracing::{debug, warn};

use super::timers::{TimerId, Timers};
use super::udp::{Datagram, Socket};

/// Datagrams handled between two drives of their connections within one read. A read returns
/// up to 8 buffers, and with UDP GRO each can hold many datagrams (dozens under a bulk
/// transfer); the acknowledgements only leave at a drive. Once per read, the sender saw one per
/// 16-22 datagrams, its congestion window freed in large steps; every 8, each
/// acknowledgement's send (a system call, and on a veth the peer's whole receive path) took a
/// quarter of the receiving node's CPU. 16: 1 MiB messages under 1% loss between two
/// namespaces 383-509 MB/s against 324-443 with 8; 24 and 32 gave no more than 16. Measured on
/// a namespace link that passed the sender's segmented sends whole (UDP segmentation left on,
/// bench/README.md), which is how the reads came to hold GRO batches; on a link of one datagram
/// per packet a read holds at most 8 and this does not apply.
const DRIVE_EVERY: usize = 16;

/// Datagrams a connection may send per drive before it lets other work run; the rest goes
/// on the next drive (an acknowledgement, the timer).
const TRANSMITS_PER_DRIVE: usize = 32;

/// When a receive looks at the socket's error queue (ICMP reports, see `unreachable.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorQueueCheck {
    /// Also when the socket had nothing to read: it was woken by a report.
    WhenNothingWaits,
    /// When a read fails with the report's error, and at every
    /// [`ERROR_QUEUE_EVERY`]th read that finds nothing.
    Sometimes,
}

/// A poller looks at the error queue once in this many empty reads. A report whose error a
/// send took (quinn-udp drops it) is only on the queue: found this way within a fraction of a
/// millisecond of spinning, though the poller may not hand the socket back to the select for
/// as long as datagrams keep coming.
const ERROR_QUEUE_EVERY: u32 = 64;

/// How soon a connection whose datagram did not fit in the socket's send buffer tries again.
const SEND_RETRY: std::time::Duration = std::time::Duration::from_micros(200);

/// How long a peer whose port was reported closed has to show it is alive (any datagram)
/// before its connection is given up. A live peer acknowledges the probe within a round trip
/// and its acknowledgement delay (25 ms); the margin is for a peer whose schedulers are busy.
const PROBE_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends a datagram and gives its buffer back for reuse, or keeps both in `unsent` if the
/// socket's send buffer is full (`None` then). Other errors are the path's (an unreachable
/// peer...): the datagram is dropped and QUIC's loss recovery sends its contents again.
fn send_or_keep(
    socket: &super::udp::Socket,
    t: quinn_proto::Transmit,
    contents: Vec<u8>,
    unsent: &mut Option<(quinn_proto::Transmit, Vec<u8>)>,
) -> Option<Vec<u8>> {
    match socket.send(&t, &contents[..t.size]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            *unsent = Some((t, contents));
            None
        }
        r => {
            if let Err(e) = r {
                debug!(error = %e, "datagram not sent");
            }
            Some(contents)
        }
    }
}

/// One UDP socket, quinn-proto's endpoint state and the connections on it.
///
/// No thread of its own: [`receive`](Self::receive) is called when the socket is readable
/// (by whoever watches it), connections are driven by their users after they queue work and
/// by [`Timers`] when a QUIC timer is due.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    /// Lock order: a connection's state, then this; never the other way round.
    state: Mutex<State>,
    max_datagram: usize,
    /// Reads in [`ErrorQueueCheck::Sometimes`] mode that found nothing.
    empty_polls: AtomicU32,
    timers: Timers,
    /// Tasks of the connections (see `exec.rs`), run by whoever drove a connection.
    pub(super) executor: Arc<super::exec::Executor>,
}

#[derive(Debug)]
struct State {
    endpoint: quinn_proto::Endpoint,
    conns: HashMap<ConnectionHandle, Arc<Connection>>,
    /// Accepted connections not yet taken by [`Endpoint::accept`].
    accepted: Vec<Arc<Connection>>,
    /// Closed: new connections are refused.
    refusing: bool,
    /// Incoming connections refused at their first packet, not yet taken by
    /// [`Endpoint::take_refused`] (at most [`REFUSALS_KEPT`]).
    refused: Vec<(SocketAddr, quinn_proto::ConnectionError)>,
    /// The server configuration for peers on loopback addresses, and for the others. Passed to
    /// every accept: quinn-proto would otherwise use the one current when the first datagram
    /// came, which for a held connection may have been replaced since.
    loopback_server: Option<Arc<ServerConfig>>,
    server: Option<Arc<ServerConfig>>,
    /// New connections wait in `held` until [`Endpoint::admit_held`] (see
    /// [`Endpoint::hold_incoming`]).
    holding: bool,
    held: Vec<(quinn_proto::Incoming, SocketAddr)>,
    /// A connection was held while none was: whoever admits them has not been told yet.
    admission_due: bool,
}

/// Held connections at most; the first datagram of any further one is dropped (its client
/// sends it again).
const HELD_MAX: usize = 64;

/// Refusals kept for [`Endpoint::take_refused`] between two calls; a flood beyond is dropped.
const REFUSALS_KEPT: usize = 64;

/// One QUIC connection of an [`Endpoint`].
#[derive(Debug)]
pub struct Connection {
    handle: ConnectionHandle,
    state: Mutex<ConnState>,
    endpoint: Weak<Inner>,
}

#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) conn: quinn_proto::Connection,
    transmit: Vec<u8>,
    /// A datagram the socket refused for a full send buffer, sent before anything new.
    unsent: Option<(quinn_proto::Transmit, Vec<u8>)>,
    /// When quinn-proto wants to be driven next (its `poll_timeout`).
    armed: Option<Instant>,
    /// The earliest entry of this connection in [`Timers`]. Entries are pushed only when
    /// earlier than this one: quinn-proto moves its deadline later on nearly every packet, and
    /// a push each time would wake the timer thread for each of them; a later deadline is
    /// re-queued when the entry fires instead (`on_timer`). A superseded entry is cancelled.
    queued: Option<(Instant, TimerId)>,
    /// Tasks waiting for something to happen on this connection, and what (see `streams.rs`).
    pub(super) waiters: Vec<(Interest, std::task::Waker)>,
    /// Why the connection ended, once it has.
    pub(super) lost: Option<quinn_proto::ConnectionError>,
    /// Set while the peer's port is reported closed (see `unreachable.rs`).
    probe: Option<Probe>,
    /// Wake the waiters last-registered first this time (see [`take_waiters`]).
    wake_reversed: bool,
    /// The send window last set by the distribution layer (narrowed while small messages go
    /// beside bulk data), which small writes may exceed (see `streams.rs`).
    pub(super) send_window: Option<u64>,
}

/// What a waiting task waits for. A stream's reader and writer are woken by their stream's
/// events alone; with a task per stream and direction (17 with 8 data streams), waking every
/// task at every event cost 13-14 µs of the receive of one small datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interest {
    /// Anything: a stream opened by the peer or allowed to us, the handshake, a stream
    /// finished or stopped, the end of the connection.
    Any,
    /// Data on the stream (or its end, or its reset).
    Read(StreamId),
    /// Room to write on the stream.
    Write(StreamId),
}

/// A probe of a peer reported gone: it is alive if a datagram comes before the deadline.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Datagrams received from the peer when the probe began.
    received: u64,
    deadline: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves quinn-proto's state as it was; carry on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Endpoint {
    /// Binds nothing itself: takes a bound `socket`. With a `server` configuration it accepts
    /// connections.
    pub fn new(
        socket: UdpSocket,
        config: EndpointConfig,
        server: Option<ServerConfig>,
    ) -> io::Result<Self> {
        Self::with_loopback_server(socket, config, server, None)
    }

    /// [`new`](Self::new), with another server configuration for peers on loopback addresses.
    pub fn with_loopback_server(
        socket: UdpSocket,
        config: EndpointConfig,
        server: Option<ServerConfig>,
        loopback_server: Option<Arc<ServerConfig>>,
    ) -> io::Result<Self> {
        let max_datagram = config.get_max_udp_payload_size() as usize;
        let socket = Socket::new(socket)?;
        let server = server.map(Arc::new);
        let endpoint = quinn_proto::Endpoint::new(Arc::new(config), server.clone(), true, None);
        let executor = super::exec::Executor::new();
        Ok(Self {
            inner: Arc::new(Inner {
                socket,
                state: Mutex::new(State {
                    endpoint,
                    conns: HashMap::new(),
                    accepted: Vec::new(),
                    refusing: false,
                    refused: Vec::new(),
                    loopback_server,
                    server,
                    holding: false,
                    held: Vec::new(),
                    admission_due: false,
                }),
                max_datagram,
                empty_polls: Default::default(),
                timers: Timers::start(executor.clone()),
                executor,
            }),
        })
    }

    /// The socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// Another handle on the socket (a duplicate descriptor), to wait for readability with.
    pub fn socket_handle(&self) -> io::Result<UdpSocket> {
        self.inner.socket.try_clone()
    }

    /// Starts a connection to `remote`; its first datagrams leave now.
    pub fn connect(
        &self,
        config: ClientConfig,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<Arc<Connection>, ConnectError> {
        let (handle, conn) = lock(&self.inner.state).endpoint.connect(
            Instant::now(),
            config,
            remote,
            server_name,
        )?;
        let conn = self.register(handle, conn);
        conn.drive();
        Ok(conn)
    }

    fn register(&self, handle: ConnectionHandle, conn: quinn_proto::Connection) -> Arc<Connection> {
        let conn = Arc::new(Connection {
            handle,
            state: Mutex::new(ConnState {
                conn,
                transmit: Vec::new(),
                unsent: None,
                armed: None,
                queued: None,
                waiters: Vec::new(),
                lost: None,
                probe: None,
                wake_reversed: false,
                send_window: None,
            }),
            endpoint: Arc::downgrade(&self.inner),
        });
        lock(&self.inner.state).conns.insert(handle, conn.clone());
        conn
    }

    /// Takes a connection accepted since the last call (its handshake may still be running).
    pub fn accept(&self) -> Option<Arc<Connection>> {
        let mut state = lock(&self.inner.state);
        (!state.accepted.is_empty()).then(|| state.accepted.remove(0))
    }

    /// Incoming connections refused at their first packet since the last call (bad packets,
    /// a TLS hello that cannot be served), with why.
    pub fn take_refused(&self) -> Vec<(SocketAddr, quinn_proto::ConnectionError)> {
        std::mem::take(&mut lock(&self.inner.state).refused)
    }

    /// Probes the connections to every peer the socket's error queue reports as gone.
    fn probe_unreachable_peers(&self) {
        let gone = self.inner.socket.take_port_unreachable();
        if gone.is_empty() {
            return;
        }
        let conns: Vec<_> = lock(&self.inner.state).conns.values().cloned().collect();
        for conn in conns {
            conn.probe_if_gone(&gone);
        }
    }

    /// Replaces the server configurations (see [`with_loopback_server`](Self::with_loopback_server))
    /// for the connections accepted from now on, held ones included.
    pub fn set_server_configs(&self, server: ServerConfig, loopback: Option<Arc<ServerConfig>>) {
        let mut state = lock(&self.inner.state);
        let server = Arc::new(server);
        state.endpoint.set_server_config(Some(server.clone()));
        state.server = Some(server);
        state.loopback_server = loopback;
    }

    /// From now on, new connections wait before their handshake starts until
    /// [`admit_held`](Self::admit_held), so that the server configuration can still change for
    /// them; [`take_admission_due`](Self::take_admission_due) says when some wait.
    pub fn hold_incoming(&self) {
        lock(&self.inner.state).holding = true;
    }

    /// Whether connections started waiting since the last call (see
    /// [`hold_incoming`](Self::hold_incoming)).
    pub fn take_admission_due(&self) -> bool {
        std::mem::take(&mut lock(&self.inner.state).admission_due)
    }

    /// Accepts the held connections with the current server configuration and drives them (on
    /// this thread); [`accept`](Self::accept) returns them next.
    pub fn admit_held(&self) {
        let now = Instant::now();
        let mut touched = Vec::new();
        let mut response = Vec::new();
        let mut state = lock(&self.inner.state);
        state.admission_due = false;
        for (incoming, from) in std::mem::take(&mut state.held) {
            if state.refusing {
                self.refuse(&mut state, incoming, &mut response);
            } else {
                response.clear();
                state =
                    self.accept_incoming(state, incoming, from, now, &mut response, &mut touched);
            }
        }
        drop(state);
        for conn in &touched {
            conn.drive();
        }
        self.inner.executor.run();
    }

    /// Refuses a new connection and tells its client so (`response` is the buffer to use).
    fn refuse(&self, state: &mut State, incoming: quinn_proto::Incoming, response: &mut Vec<u8>) {
        response.clear();
        let t = state.endpoint.refuse(incoming, response);
        let _ = self.inner.socket.send(&t, &response[..t.size]);
    }

    /// Accepts a new connection from `from` with the server configuration for its address,
    /// adding it to `touched`, or records why it was refused. Takes and gives back the state's
    /// lock (released while the connection is registered).
    fn accept_incoming<'s>(
        &'s self,
        mut state: MutexGuard<'s, State>,
        incoming: quinn_proto::Incoming,
        from: SocketAddr,
        now: Instant,
        response: &mut Vec<u8>,
        touched: &mut Vec<Arc<Connection>>,
    ) -> MutexGuard<'s, State> {
        let config = match &state.loopback_server {
            Some(c) if from.ip().to_canonical().is_loopback() => Some(c.clone()),
            _ => state.server.clone(),
        };
        match state.endpoint.accept(incoming, now, response, config) {
            Ok((handle, conn)) => {
                drop(state);
                let conn = self.register(handle, conn);
                state = lock(&self.inner.state);
                state.accepted.push(conn.clone());
                touched.push(conn);
            }
            Err(e) => {
                debug!(%from, error = %e.cause, "incoming connection refused");
                if state.refused.len() < REFUSALS_KEPT {
                    state.refused.push((from, e.cause));
                }
                if let Some(t) = e.response {
                    let _ = self.inner.socket.send(&t, &response[..t.size]);
                }
            }
        }
        state
    }

    /// Closes every connection, telling the peers `reason`, and refuses new ones from now on.
    pub fn close_all(&self, code: quinn_proto::VarInt, reason: &[u8]) {
        let conns: Vec<_> = {
            let mut state = lock(&self.inner.state);
            state.refusing = true;
            let mut response = Vec::new();
            for (incoming, _) in std::mem::take(&mut state.held) {
                self.refuse(&mut state, incoming, &mut response);
            }
            state.conns.values().cloned().collect()
        };
        for c in conns {
            c.close(code, reason);
        }
    }

    /// Whether no connection is left (all drained).
    pub fn is_idle(&self) -> bool {
        lock(&self.inner.state).conns.is_empty()
    }

    /// Runs the tasks that were woken.
    pub fn run_tasks(&self) {
        self.inner.executor.run();
    }

    /// Reads every datagram waiting on the socket and hands each to its connection, which is
    /// then driven. Call it when the socket is readable.
    pub fn receive(&self) -> io::Result<usize> {
        self.receive_batches(usize::MAX)
    }

    /// [`receive`](Self::receive), reading at most `max_batches` batches from the socket (up
    /// to 8 datagrams each, see `udp.rs`). Returns the datagrams read.
    pub fn receive_batches(&self, max_batches: usize) -> io::Result<usize> {
        self.receive_up_to(max_batches, ErrorQueueCheck::WhenNothingWaits)
    }

    /// [`receive_batches`](Self::receive_batches) for a caller that reads in a loop whether
    /// or not the socket is readable: finding nothing is the rule then, not a sign of an
    /// error report, so the error queue is read only now and then (see
    /// [`ERROR_QUEUE_EVERY`]): one system call less per empty read, so the loop notices a
    /// datagram sooner.
    pub fn poll_batches(&self, max_batches: usize) -> io::Result<usize> {
        self.receive_up_to(max_batches, ErrorQueueCheck::Sometimes)
    }

    fn receive_up_to(&self, max_batches: usize, check: ErrorQueueCheck) -> io::Result<usize> {
        let mut touched: Vec<Arc<Connection>> = Vec::new();
        let mut received = 0;
        for batch in 0..max_batches {
            let datagrams = match self.inner.socket.recv(self.inner.max_datagram) {
                Ok(d) => d,
                // An ICMP report of an earlier send: a peer's port is closed.
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        || e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    self.probe_unreachable_peers();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if datagrams.is_empty() {
                // Woken with nothing to read: by a report on the error queue, which keeps the
                // socket ready until it is read (a send may have taken the error itself).
                if batch == 0 && self.error_queue_due(check) {
                    self.probe_unreachable_peers();
                }
                break;
            }
            received += datagrams.len();
            let mut datagrams = datagrams.into_iter().peekable();
            loop {
                self.handle_datagrams(datagrams.by_ref().take(DRIVE_EVERY), &mut touched);
                if datagrams.peek().is_none() {
                    break;
                }
                // More of this read to handle: acknowledge what came so far first (see
                // DRIVE_EVERY).
                for conn in &touched {
                    conn.drive();
                }
            }
        }
        for conn in &touched {
            conn.drive();
        }
        self.inner.executor.run();
        Ok(received)
    }

    /// Whether a read that found nothing looks at the error queue.
    fn error_queue_due(&self, check: ErrorQueueCheck) -> bool {
        match check {
            ErrorQueueCheck::WhenNothingWaits => true,
            ErrorQueueCheck::Sometimes => {
                let n = self.inner.empty_polls.fetch_add(1, Ordering::Relaxed);
                n % ERROR_QUEUE_EVERY == ERROR_QUEUE_EVERY - 1
            }
        }
    }

    /// Hands `datagrams` to quinn-proto and their events to their connections, adding each
    /// connection they touched to `touched` (to be driven by the caller).
    fn handle_datagrams(
        &self,
        datagrams: impl Iterator<Item = Datagram>,
        touched: &mut Vec<Arc<Connection>>,
    ) {
        let now = Instant::now();
        let mut events = Vec::with_capacity(datagrams.size_hint().0);
        let mut response = Vec::new();
        {
            let mut state = lock(&self.inner.state);
            for d in datagrams {
                response.clear();
                match state
                    .endpoint
                    .handle(now, d.from, d.local_ip, d.ecn, d.data, &mut response)
                {
                    Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                        if let Some(conn) = state.conns.get(&handle) {
                            events.push((conn.clone(), event));
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) if state.refusing => {
                        self.refuse(&mut state, incoming, &mut response);
                    }
                    Some(DatagramEvent::NewConnection(incoming)) if state.holding => {
                        if state.held.len() >= HELD_MAX {
                            state.endpoint.ignore(incoming);
                        } else {
                            state.admission_due |= state.held.is_empty();
                            state.held.push((incoming, d.from));
                        }
                    }
                    Some(DatagramEvent::NewConnection(incoming)) => {
                        state = self.accept_incoming(
                            state,
                            incoming,
                            d.from,
                            now,
                            &mut response,
                            touched,
                        );
                    }
                    Some(DatagramEvent::Response(t)) => {
                        let _ = self.inner.socket.send(&t, &response[..t.size]);
                    }
                    None => {}
                }
            }
        }
        for (conn, event) in events {
            lock(&conn.state).conn.handle_event(event);
            if !touched.iter().any(|c| Arc::ptr_eq(c, &conn)) {
                touched.push(conn);
            }
        }
    }
}

/// Takes the connection's waiting tasks whose interest `wanted` accepts, to be woken in the
/// returned order: registration order and its reverse in turn.
///
/// The executor runs woken tasks in the order they were woken, and tasks register again in the
/// order they ran: woken always in registration order, the same task would run first at every
/// event for the life of the connection. Writers compete for the connection's send window
/// (narrowed to about 128 KiB while small messages go beside bulk data): the first writer to
/// run takes whatever an acknowledgement freed, and when that was a bulk transfer's writer, a
/// small message on a stream of higher index waited until the whole bulk message was written
/// (ping p50 12-17 ms behind an 8 MiB stream, 0.4-0.6 ms with the streams the other way round).
/// Reversing the order every other time puts any task ahead of any other within two events.
fn take_waiters(st: &mut ConnState, wanted: impl Fn(Interest) -> bool) -> Vec<std::task::Waker> {
    let mut waiters = Vec::new();
    st.waiters.retain(|(interest, waker)| {
        if wanted(*interest) {
            waiters.push(waker.clone());
            false
        } else {
            true
        }
    });
    if st.wake_reversed {
        waiters.reverse();
    }
    st.wake_reversed = !st.wake_reversed;
    waiters
}

/// Closes a connection whose peer's port is closed and which did not answer a probe: its node
/// is gone. Its tasks see the connection lost with why.
fn give_up_unreachable(st: &mut ConnState, now: Instant) {
    let remote = st.conn.remote_address();
    // Before the handshake completed nothing ever answered there: most likely a node that
    // does not run quic_dist, whose port in epmd is a TCP one.
    let why = if st.conn.is_handshaking() {
        // Whoever waits for the handshake reports it (quic_dist with the node's name): once
        // in the log is enough.
        debug!(remote = %remote, window = ?PROBE_WINDOW, "{NO_QUIC_AT_PEER}; closing the connection");
        NO_QUIC_AT_PEER
    } else {
        warn!(remote = %remote, window = ?PROBE_WINDOW, "{PEER_GONE}; closing the connection");
        PEER_GONE
    };
    st.conn.close(
        now,
        quinn_proto::VarInt::from_u32(0),
        bytes::Bytes::from_static(b"peer unreachable"),
    );
    if st.lost.is_none() {
        st.lost = Some(quinn_proto::ConnectionError::TransportError(
            quinn_proto::TransportError {
                code: quinn_proto::TransportErrorCode::NO_VIABLE_PATH,
                frame: None,
                reason: why.to_string(),
            },
        ));
    }
}

/// Why a connection was given up after a probe (see [`give_up_unreachable`]).
pub const PEER_GONE: &str =
    "peer gone: its udp port is closed (icmp port unreachable) and it did not answer a probe";

/// Why a connection was given up after a probe during its handshake.
pub const NO_QUIC_AT_PEER: &str = "nothing answers QUIC there: the udp port is closed (icmp port \
     unreachable) and did not answer a probe (does the node run quic_dist, -proto_dist quic?)";

impl Connection {
    /// Runs `f` on quinn-proto's connection (to write or read streams), then drives it.
    pub fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut quinn_proto::Connection) -> R) -> R {
        let r = f(&mut lock(&self.state).conn);
        self.drive();
        r
    }

    /// Closes the connection at once, telling the peer `code` and `reason`. Its tasks see it
    /// lost (locally closed) from now on, as with quinn.
    pub fn close(self: &Arc<Self>, code: quinn_proto::VarInt, reason: &[u8]) {
        let waiters = {
            let mut st = lock(&self.state);
            st.conn
                .close(Instant::now(), code, bytes::Bytes::copy_from_slice(reason));
            if st.lost.is_none() {
                st.lost = Some(quinn_proto::ConnectionError::LocallyClosed);
            }
            take_waiters(&mut st, |_| true)
        };
        self.drive();
        for w in waiters {
            w.wake();
        }
    }

    /// Starts a probe if the peer's address is among `gone` (ports reported closed): the peer
    /// is sent a PING and has [`PROBE_WINDOW`] to send anything; then the connection is given
    /// up (`drive`). An ICMP report is not authenticated: a forged one costs a PING, no more.
    fn probe_if_gone(self: &Arc<Self>, gone: &[SocketAddr]) {
        {
            let mut st = lock(&self.state);
            let remote = st.conn.remote_address();
            let same = |a: &SocketAddr| {
                a.port() == remote.port() && a.ip().to_canonical() == remote.ip().to_canonical()
            };
            if st.lost.is_some() || st.probe.is_some() || !gone.iter().any(same) {
                return;
            }
            debug!(remote = %remote, "peer's port reported closed: probing");
            st.probe = Some(Probe {
                received: st.conn.stats().udp_rx.datagrams,
                deadline: Instant::now() + PROBE_WINDOW,
            });
            st.conn.ping();
        }
        self.drive();
    }

    /// Whether the peer is being probed: its port was reported closed and it has not sent
    /// anything since.
    pub fn is_probing(&self) -> bool {
        lock(&self.state).probe.is_some()
    }

    /// Whether the handshake is complete.
    pub fn is_connected(&self) -> bool {
        !lock(&self.state).conn.is_handshaking()
    }

    /// Why the connection ended, if it has.
    pub fn lost(&self) -> Option<quinn_proto::ConnectionError> {
        lock(&self.state).lost.clone()
    }

    /// Tasks waiting for an event of this connection (each counted once per thing it waits
    /// for, however often it was polled).
    pub fn waiting_tasks(&self) -> usize {
        lock(&self.state).waiters.len()
    }

    /// Does what quinn-proto has pending: endpoint bookkeeping, datagrams to send, application
    /// events to collect, the next timer.
    pub(crate) fn drive(self: &Arc<Self>) {
        let Some(ep) = self.endpoint.upgrade() else {
            return;
        };
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let now = Instant::now();
        if st.armed.is_some_and(|t| t <= now) {
            st.armed = None;
            st.conn.handle_timeout(now);
        }
        let mut woke = false;
        if let Some(probe) = st.probe {
            if st.conn.stats().udp_rx.datagrams > probe.received {
                st.probe = None;
                debug!(remote = %st.conn.remote_address(), "probed peer answered");
            } else if now >= probe.deadline {
                st.probe = None;
                give_up_unreachable(st, now);
                woke = true;
            }
        }
        while let Some(event) = st.conn.poll_endpoint_events() {
            let mut eps = lock(&ep.state);
            if event.is_drained() {
                // quinn-proto gives the handle to the next connection as soon as it has this
                // event: forget ours under the same lock, or we could remove the newcomer's
                // entry later, and its datagrams would find no connection.
                if eps
                    .conns
                    .get(&self.handle)
                    .is_some_and(|c| Arc::ptr_eq(c, self))
                {
                    eps.conns.remove(&self.handle);
                }
            }
            let back = eps.endpoint.handle_event(self.handle, event);
            drop(eps);
            if let Some(back) = back {
                st.conn.handle_event(back);
            }
        }
        let segments = ep.socket.segments_per_send(st.conn.current_mtu());
        let mut more = true;
        // What a full socket buffer refused last time goes first; while it is still refused,
        // nothing new is built.
        let mut blocked = false;
        if let Some((t, contents)) = st.unsent.take() {
            match send_or_keep(&ep.socket, t, contents, &mut st.unsent) {
                Some(buf) => st.transmit = buf,
                None => blocked = true,
            }
        }
        if !blocked {
            for _ in 0..TRANSMITS_PER_DRIVE {
                st.transmit.clear();
                let Some(t) = st.conn.poll_transmit(now, segments, &mut st.transmit) else {
                    more = false;
                    break;
                };
                let contents = std::mem::take(&mut st.transmit);
                match send_or_keep(&ep.socket, t, contents, &mut st.unsent) {
                    Some(buf) => st.transmit = buf,
                    None => {
                        blocked = true;
                        break;
                    }
                }
            }
        }
        let mut streams: Vec<Interest> = Vec::new();
        while let Some(event) = st.conn.poll() {
            match event {
                Event::Stream(StreamEvent::Readable { id }) => streams.push(Interest::Read(id)),
                Event::Stream(StreamEvent::Writable { id }) => streams.push(Interest::Write(id)),
                Event::ConnectionLost { reason } => {
                    st.lost = Some(reason);
                    woke = true;
                }
                _ => woke = true,
            }
        }
        let waiters = if woke {
            take_waiters(st, |_| true)
        } else if streams.is_empty() {
            Vec::new()
        } else {
            take_waiters(st, |interest| streams.contains(&interest))
        };
        // Out of budget with more to send: the timer thread goes on at once. Blocked by a full
        // socket buffer: it tries again shortly (the buffer drains at the link's rate).
        let next = if blocked {
            Some(now + SEND_RETRY)
        } else if more {
            Some(now)
        } else {
            st.conn.poll_timeout()
        };
        let next = match (next, st.probe.map(|p| p.deadline)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        st.armed = next;
        if let Some(at) = next {
            if st.queued.map_or(true, |(q, _)| at < q) {
                let id = match st.queued {
                    Some((_, old)) => ep.timers.rearm(old, at, Arc::downgrade(self)),
                    None => ep.timers.arm(at, Arc::downgrade(self)),
                };
                st.queued = Some((at, id));
            }
        }
        drop(guard);
        for w in waiters {
            w.wake();
        }
    }

    /// An entry of this connection in [`Timers`] is due: drive it if its deadline has come,
    /// queue the deadline again if it moved later.
    pub(crate) fn on_timer(self: &Arc<Self>, at: Instant) {
        {
            let mut st = lock(&self.state);
            if st.queued.is_some_and(|(q, _)| q != at) {
                // A later entry, left behind when an earlier one was pushed: that one counts.
                return;
            }
            st.queued = None;
            match st.armed {
                None => return,
                Some(a) if a > Instant::now() => {
                    // The deadline moved later since this entry was pushed: queue it again.
                    if let Some(ep) = self.endpoint.upgrade() {
                        st.queued = Some((a, ep.timers.arm(a, Arc::downgrade(self))));
                    }
                    return;
                }
                Some(_) => {}
            }
        }
        self.drive();
    }

    /// Runs the tasks that were woken (by this thread or others).
    pub fn run_tasks(&self) {
        if let Some(ep) = self.endpoint.upgrade() {
            ep.executor.run();
        }
    }

    /// Spawns a task on the endpoint's executor; it runs at the next `run_tasks` (or receive).
    pub fn spawn(&self, future: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(ep) = self.endpoint.upgrade() {
            ep.executor.spawn(future);
        }
    }

    /// Wakes `waker` at `at` (the endpoint's timer thread).
    pub(super) fn wake_at(&self, at: Instant, waker: std::task::Waker) {
        if let Some(ep) = self.endpoint.upgrade() {
            ep.timers.wake_at(at, waker);
        }
    }

    /// Locks quinn-proto's connection state (for `streams.rs`).
    pub(super) fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }
}

impl Drop for Connection {
    /// Takes the connection's timer entry back: its weak reference would keep this memory
    /// allocated until the entry's time.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let (Some((_, id)), Some(ep)) = (st.queued.take(), self.endpoint.upgrade()) {
            ep.timers.cancel(id);
        }
    }
}
