//! The endpoint's UDP socket: quinn's own, with its receive buffers sized for what the kernel
//! can actually hand over.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Largest payload one receive can return: a datagram, or datagrams coalesced by the kernel's
/// UDP GRO, which builds packets of at most 64 KiB.
const MAX_RECEIVE: usize = 64 * 1024;

/// quinn's socket, declaring no more datagrams per receive than fit [`MAX_RECEIVE`].
///
/// quinn sizes its receive memory as `max_udp_payload × max_receive_segments × 32` (a batch of
/// receives). With GRO the socket declares 64 segments, which with 65 000-byte datagrams
/// (towards loopback peers) would be 133 MB per endpoint; at most 64 KiB arrive per receive, so
/// two segments of the largest datagram are always enough (4 MB).
#[derive(Debug)]
pub(crate) struct SizedReceives {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl SizedReceives {
    /// Wraps `inner`, whose datagrams are at most `max_udp_payload` bytes.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, max_udp_payload: usize) -> Self {
        let max_segments = inner
            .max_receive_segments()
            .min(MAX_RECEIVE.div_ceil(max_udp_payload.max(1)));
        Self {
            inner,
            max_segments,
        }
    }
}

impl AsyncUdpSocket for SizedReceives {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.max_segments
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_memory_covers_a_full_gro_packet_and_no_more_than_needed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket).unwrap();
        let gro = inner.max_receive_segments();
        for payload in [1200usize, 1452, 6550, 65_000] {
            let s = SizedReceives::new(inner.clone(), payload);
            let n = s.max_receive_segments();
            assert!(n <= gro);
            assert!(n == gro || n * payload >= MAX_RECEIVE, "{payload}: {n}");
        }
        assert!(SizedReceives::new(inner, 65_000).max_receive_segments() <= 2);
    }
}
