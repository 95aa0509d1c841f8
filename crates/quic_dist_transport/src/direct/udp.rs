//! The endpoint's UDP socket: non-blocking, with quinn-udp's batched and segmented I/O.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

use bytes::BytesMut;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};

/// A bound, non-blocking UDP socket. Any thread may send and receive at any time: the kernel
/// serialises them.
#[derive(Debug)]
pub(crate) struct Socket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Memory datagrams are received into, allocated once; each datagram is copied out of it
    /// into a buffer of its own size. (Receiving straight into fresh memory kept per datagram
    /// saved that copy but cost a page fault and the zeroing of each fresh page instead.)
    buffer: std::sync::Mutex<Vec<u8>>,
}

/// Datagrams (or GRO batches) one receive takes at most. Fewer than quinn-udp's 32: what a
/// receive took is decrypted and delivered before the receiving process yields, and smaller
/// steps let the input handlers work beside it sooner (1 MiB messages between two nodes on
/// 2 cores: 1.4-1.8 GB/s with 8, 1.0-1.4 with 2 or 4, 1.1-1.2 with 16 or 32).
const RECV_BATCH: usize = 8;

/// The most one receive can return (the IPv4/IPv6 packet size limit).
const MAX_RECEIVE: usize = 64 * 1024;

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
        if let Err(e) = super::unreachable::enable(&socket) {
            tracing::debug!(error = %e, "no icmp error reports: a dead peer is noticed by ticks");
        }
        Ok(Self {
            socket,
            state,
            buffer: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn try_clone(&self) -> io::Result<UdpSocket> {
        self.socket.try_clone()
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

    /// Destinations reported as a closed port since the last call (see `unreachable.rs`).
    pub(crate) fn take_port_unreachable(&self) -> Vec<SocketAddr> {
        super::unreachable::take_port_unreachable(&self.socket)
    }

    /// Receives what is waiting, up to one batch, each datagram in `max_datagram` bytes at
    /// most. An empty result means nothing was waiting.
    pub(crate) fn recv(&self, max_datagram: usize) -> io::Result<Vec<Datagram>> {
        // One IP packet, coalesced or not, carries at most 64 KiB: a larger slot would only
        // make the buffer huge (64 GRO segments of 64 KiB datagrams: 4 MiB a slot).
        let slot = (max_datagram * self.state.gro_segments().max(1)).min(MAX_RECEIVE);
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() < slot * RECV_BATCH {
            *buffer = vec![0; slot * RECV_BATCH];
        }
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let n = {
            let mut slices: Vec<IoSliceMut> = buffer[..slot * RECV_BATCH]
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
        let mut out = Vec::with_capacity(n);
        for (received, m) in buffer.chunks(slot).zip(&meta[..n]) {
            // With GRO one buffer holds several datagrams, each `stride` bytes but the last.
            for data in received[..m.len].chunks(m.stride.max(1)) {
                out.push(Datagram {
                    from: m.addr,
                    local_ip: m.dst_ip,
                    ecn: m
                        .ecn
                        .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8)),
                    data: BytesMut::from(data),
                });
            }
        }
        Ok(out)
    }
}
