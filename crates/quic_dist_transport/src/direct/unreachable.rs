//! Peers whose UDP port is closed, from the kernel's ICMP reports on the socket's error queue.
//!
//! A QUIC connection has no FIN or RST: when the node at the other end dies (`kill -9`, a
//! crash), nothing tells this one, and the distribution layer would notice only when its
//! ticks stop (up to `net_ticktime`, 60 s by default), where TCP distribution sees the
//! kernel's reset at once. The kernel does know: the next datagram sent to a port nobody
//! listens on draws an ICMP port unreachable, which an unconnected UDP socket reports only
//! with `IP_RECVERR` (`IPV6_RECVERR`) on, on its error queue. An ICMP message is not
//! authenticated, so a report only makes a connection suspect (`Connection::probe_peer`).

pub(crate) use imp::{enable, take_port_unreachable};

#[cfg(target_os = "linux")]
mod imp {
    use std::io::{self, IoSliceMut};
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;
    use nix::libc;
    use nix::sys::socket::{
        recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage,
    };
    use tracing::debug;

    /// Reports read per call at most; the kernel bounds the queue by the receive buffer.
    const MAX_REPORTS: usize = 64;

    /// Turns error reports on for `socket`.
    pub(crate) fn enable(socket: &UdpSocket) -> io::Result<()> {
        let v6 = socket.local_addr()?.is_ipv6();
        if v6 {
            setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
        }
        // A dual-stack socket hears of its IPv4 peers through the IPv4 option.
        match setsockopt(socket, sockopt::Ipv4RecvErr, &true) {
            Err(e) if v6 => debug!(error = %e, "no error reports for ipv4 peers"),
            r => r?,
        }
        Ok(())
    }

    /// Drains the error queue of `socket`: the destinations reported as a closed port (ICMP
    /// port unreachable) since the last call, each once. Other reports (a route lost, a
    /// datagram too large for the path) are dropped: QUIC copes with those itself.
    pub(crate) fn take_port_unreachable(socket: &UdpSocket) -> Vec<SocketAddr> {
        let mut gone = Vec::new();
        // The datagram a report quotes is not needed, only its destination.
        let mut quoted = [0u8; 1];
        // Room for the report and what quinn-udp's options add to every message (packet info,
        // traffic class): with less the kernel truncates the control data and drops the report.
        let mut control = nix::cmsg_space!(
            libc::sock_extended_err,
            libc::sockaddr_in6,
            libc::in6_pktinfo,
            libc::in_pktinfo,
            libc::c_int,
            libc::c_int
        );
        for _ in 0..MAX_REPORTS {
            let mut iov = [IoSliceMut::new(&mut quoted)];
            let report = match recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(control.as_mut_slice()),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(report) => report,
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    debug!(error = %e, "cannot read the socket's error queue");
                    break;
                }
            };
            let refused = report.cmsgs().into_iter().flatten().any(|c| match c {
                ControlMessageOwned::Ipv4RecvErr(e, _) => {
                    e.ee_origin == libc::SO_EE_ORIGIN_ICMP
                        && e.ee_errno == libc::ECONNREFUSED as u32
                }
                ControlMessageOwned::Ipv6RecvErr(e, _) => {
                    e.ee_origin == libc::SO_EE_ORIGIN_ICMP6
                        && e.ee_errno == libc::ECONNREFUSED as u32
                }
                _ => false,
            });
            if let (true, Some(to)) = (refused, report.address.as_ref().and_then(socket_addr)) {
                if !gone.contains(&to) {
                    gone.push(to);
                }
            }
        }
        gone
    }

    fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
        match a.family()? {
            nix::sys::socket::AddressFamily::Inet => a.as_sockaddr_in().map(|s| (*s).into()),
            nix::sys::socket::AddressFamily::Inet6 => a.as_sockaddr_in6().map(|s| (*s).into()),
            _ => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::net::{SocketAddr, UdpSocket};

    /// No error queue here: a dead peer is noticed by the distribution ticks.
    pub(crate) fn enable(_socket: &UdpSocket) -> io::Result<()> {
        Ok(())
    }

    /// Nothing is ever reported.
    pub(crate) fn take_port_unreachable(_socket: &UdpSocket) -> Vec<SocketAddr> {
        Vec::new()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    #[test]
    fn a_datagram_to_a_closed_port_is_reported_with_its_destination() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        // With quinn-udp's options on, as the endpoint's socket has them (they add control
        // messages to each report).
        let _state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
        enable(&socket).unwrap();
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed);
        socket.send_to(b"anyone?", to).unwrap();
        // The report comes from the kernel's ICMP path, after the send returned.
        let deadline = Instant::now() + Duration::from_secs(5);
        let gone = loop {
            let gone = take_port_unreachable(&socket);
            if !gone.is_empty() || Instant::now() > deadline {
                break gone;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(gone, vec![to]);
        assert!(
            take_port_unreachable(&socket).is_empty(),
            "each report once"
        );
    }
}
