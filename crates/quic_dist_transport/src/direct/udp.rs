//! The endpoint's UDP socket: non-blocking, with quinn-udp's batched and segmented I/O.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};

/// A bound, non-blocking UDP socket. Any thread may send and receive at any time: the kernel
/// serialises them.
#[derive(Debug)]
pub(crate) struct Socket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Memory datagrams are received into: each datagram keeps its slot (by reference, as
    /// quinn-proto keeps stream data) and the rest serves the next receives, so a datagram is
    /// never copied after the kernel's copy.
    arena: std::sync::Mutex<BytesMut>,
}

/// Receive batches one arena serves before a new one is allocated.
const ARENA_BATCHES: usize = 4;

/// One datagram received.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) from: SocketAddr,
    pub(crate) local_ip: Option<std::net::IpAddr>,
    pub(crate) ecn: Option<quinn_proto::EcnCodepoint>,
    pub(crate) data: BytesMut,
}

impl Socket {
    /// Wraps `socket` (made non-blocking here).
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            socket,
            state,
            arena: std::sync::Mutex::new(BytesMut::new()),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn try_clone(&self) -> io::Result<UdpSocket> {
        self.socket.try_clone()
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Datagrams one send may carry (segmentation offload).
    pub(crate) fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `contents` as quinn-proto described it. `WouldBlock` when the socket's buffer is
    /// full; other errors are the path's (quinn-udp logs them).
    pub(crate) fn send(&self, t: &quinn_proto::Transmit, contents: &[u8]) -> io::Result<()> {
        self.state.send(
            (&self.socket).into(),
            &Transmit {
                destination: t.destination,
                ecn: t
                    .ecn
                    .and_then(|e| quinn::udp::EcnCodepoint::from_bits(e as u8)),
                contents,
                segment_size: t.segment_size,
                src_ip: t.src_ip,
            },
        )
    }

    /// Receives what is waiting, up to one batch, each datagram in `max_datagram` bytes at
    /// most. An empty result means nothing was waiting.
    pub(crate) fn recv(&self, max_datagram: usize) -> io::Result<Vec<Datagram>> {
        let slot = max_datagram * self.state.gro_segments().max(1);
        let mut arena = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        if arena.len() < slot * BATCH_SIZE {
            // Zeroed once per arena: receiving needs initialised memory.
            *arena = BytesMut::zeroed(slot * BATCH_SIZE * ARENA_BATCHES);
        }
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        let n = {
            let mut slices: Vec<IoSliceMut> = arena[..slot * BATCH_SIZE]
                .chunks_mut(slot)
                .map(IoSliceMut::new)
                .collect();
            match self
                .state
                .recv((&self.socket).into(), &mut slices, &mut meta)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        };
        let storage: Vec<BytesMut> = (0..n).map(|_| arena.split_to(slot)).collect();
        drop(arena);
        let mut out = Vec::with_capacity(n);
        for (mut buf, m) in storage.into_iter().zip(meta) {
            buf.truncate(m.len);
            // With GRO one buffer holds several datagrams, each `stride` bytes but the last.
            while !buf.is_empty() {
                let data = buf.split_to(m.stride.min(buf.len()));
                out.push(Datagram {
                    from: m.addr,
                    local_ip: m.dst_ip,
                    ecn: m
                        .ecn
                        .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8)),
                    data,
                });
            }
        }
        Ok(out)
    }
}
