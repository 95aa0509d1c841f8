//! The endpoint's UDP socket: non-blocking, with quinn-udp's batched and segmented I/O.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

use bytes::BytesMut;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};

use crate::config::MAX_SEGMENTED_SEND;

/// A bound, non-blocking UDP socket. Any thread may send and receive at any time: the kernel
/// serialises them.
#[derive(Debug)]
pub(crate) struct Socket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Memory datagrams are received into.
    slots: std::sync::Mutex<RecvSlots>,
}

/// Datagrams (or GRO batches) one receive takes at most. Fewer than quinn-udp's 32: what a
/// receive took is decrypted and delivered before the receiving process yields, and smaller
/// steps let the input handlers work beside it sooner (1 MiB messages between two nodes on
/// 2 cores: 1.4-1.8 GB/s with 8, 1.0-1.4 with 2 or 4, 1.1-1.2 with 16 or 32).
const RECV_BATCH: usize = 8;

/// The most one receive can return (the IPv4/IPv6 packet size limit).
const MAX_RECEIVE: usize = 64 * 1024;

/// Datagrams in one segmented send at most. quinn puts at most 10 in one; 20 halves the send
/// calls of a bulk transfer where the network card segments. Between two namespaces whose veth
/// passed the batches whole (UDP segmentation left on, bench/README.md) 20 gave 497-564 MB/s
/// under 1% loss against 405-509 with 10; with the link's segmentation off (one datagram per
/// packet, the kernel segments each send) 10 and 20 are level (1 MiB messages, three
/// alternating pairs: with 10, 331-358 MB/s without loss and 157-239 under 1% loss; with 20,
/// 311-383 and 177-225). 45 (as many as fit one send) filled a 100 Mbit/s link's queue with its
/// 64 KB bursts: round trips beside a stream there p99 36-63 ms instead of 25-27.
const MAX_TRANSMIT_SEGMENTS: usize = 20;

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
            slots: std::sync::Mutex::new(RecvSlots::default()),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn try_clone(&self) -> io::Result<UdpSocket> {
        self.socket.try_clone()
    }

    /// Datagrams of `mtu` bytes that one send may carry (segmentation offload): as many as
    /// fit the size limit of one send, where the kernel can segment them. Past that limit the
    /// kernel refuses the send: with 64 segments of 1452 bytes most sends failed and a no-loss
    /// link between two namespaces moved 35 MB/s.
    pub(crate) fn segments_per_send(&self, mtu: u16) -> usize {
        (MAX_SEGMENTED_SEND / usize::from(mtu).max(1))
            .clamp(1, MAX_TRANSMIT_SEGMENTS)
            .min(self.state.max_gso_segments())
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
        let slot_len = (max_datagram * self.state.gro_segments().max(1)).min(MAX_RECEIVE);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut buffers: [BytesMut; RECV_BATCH] = std::array::from_fn(|_| slots.take(slot_len));
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let received = {
            let mut slices = buffers.each_mut().map(|b| IoSliceMut::new(b));
            self.state
                .recv((&self.socket).into(), &mut slices, &mut meta)
        };
        let n = match received {
            Ok(n) => n,
            Err(e) => {
                slots.give_back(buffers);
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(Vec::new()),
                    _ => Err(e),
                };
            }
        };
        let mut out = Vec::with_capacity(n);
        for (buffer, m) in buffers.iter_mut().zip(&meta[..n]) {
            let ecn = m
                .ecn
                .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
            let datagram = |data| Datagram {
                from: m.addr,
                local_ip: m.dst_ip,
                ecn,
                data,
            };
            if m.stride >= m.len && 2 * m.len >= slot_len {
                // One datagram filling most of its slot: handed on in the slot's memory, no
                // copy; the slot is received into again once quinn and the stream readers
                // dropped every piece of it.
                out.push(datagram(buffer.split_to(m.len)));
            } else {
                // Small datagrams, and GRO batches, whose datagrams would each keep the whole
                // slot alive: copied out, each into a buffer of its own size.
                for data in buffer[..m.len].chunks(m.stride.max(1)) {
                    out.push(datagram(BytesMut::from(data)));
                }
            }
        }
        slots.give_back(buffers);
        Ok(out)
    }
}

/// Most receive slots kept for reuse: 4 MiB of 64 KiB slots, more than the data a connection's
/// stream readers hold between two deliveries (joined messages of up to 2 MiB).
const SLOTS_KEPT: usize = 64;

/// Buffers datagrams are received into, each used again once nothing refers to it any more.
///
/// A large datagram is handed to quinn in its slot's memory (it decrypts it in place; stream
/// data stays there, by reference, until copied into an Erlang binary). Copying it out of one
/// reused buffer instead cost a second pass over every received byte; receiving into fresh
/// memory for every datagram cost a page fault and the zeroing of each fresh page.
#[derive(Debug, Default)]
struct RecvSlots {
    kept: Vec<BytesMut>,
}

impl RecvSlots {
    /// A buffer of `len` bytes that nothing else refers to: a kept one if one is free again,
    /// else fresh zeroed memory.
    fn take(&mut self, len: usize) -> BytesMut {
        for i in 0..self.kept.len() {
            let slot = &mut self.kept[i];
            slot.clear();
            // Succeeds only when this handle is the slot's last (every datagram split off it
            // dropped): its whole memory is then this handle's again, without allocating.
            if slot.try_reclaim(len) {
                let mut slot = self.kept.swap_remove(i);
                // SAFETY: `try_reclaim` does not allocate, so these are bytes of the slot's
                // original allocation, which was zeroed when made (below) and only written
                // since; `len` is within the capacity just reclaimed.
                #[allow(unsafe_code)]
                unsafe {
                    slot.set_len(len)
                };
                return slot;
            }
        }
        BytesMut::zeroed(len)
    }

    /// Keeps what is left of `buffers` after a receive, for a later `take`.
    fn give_back(&mut self, buffers: impl IntoIterator<Item = BytesMut>) {
        for buffer in buffers {
            if self.kept.len() < SLOTS_KEPT {
                self.kept.push(buffer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_reused_only_when_nothing_refers_to_it() {
        let mut slots = RecvSlots::default();
        let mut first = slots.take(1000);
        first[..3].copy_from_slice(b"abc");
        let datagram = first.split_to(3).freeze();
        let piece = datagram.slice(1..);
        drop(datagram);
        slots.give_back(vec![first]);

        // A piece of the datagram is alive: the slot must not be handed out again.
        let mut second = slots.take(1000);
        second.fill(b'x');
        assert_eq!(&piece[..], b"bc");
        slots.give_back(vec![second]);
        assert_eq!(slots.kept.len(), 2);

        drop(piece);
        let reused = slots.take(1000);
        assert_eq!(reused.len(), 1000);
        assert_eq!(slots.kept.len(), 1);
        // Too small for a larger request: fresh memory, the kept one stays.
        let mut small = RecvSlots::default();
        small.give_back(vec![BytesMut::zeroed(10)]);
        assert_eq!(small.take(1000).len(), 1000);
        assert_eq!(small.kept.len(), 1);
    }

    #[test]
    fn at_most_slots_kept_are_kept() {
        let mut slots = RecvSlots::default();
        slots.give_back((0..SLOTS_KEPT + 5).map(|_| BytesMut::zeroed(8)));
        assert_eq!(slots.kept.len(), SLOTS_KEPT);
    }

    /// Datagrams received into shared slots keep their contents while held, however many
    /// receives follow; small ones are copied out.
    #[test]
    fn received_datagrams_are_never_overwritten_by_later_receives() {
        let receiver = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let big = 40_000;
        let mut held = Vec::new();
        for round in 0..(3 * SLOTS_KEPT / RECV_BATCH) as u8 {
            let payloads: Vec<Vec<u8>> = (0..RECV_BATCH as u8)
                .map(|i| {
                    let len = if i % 2 == 0 { big } else { 100 };
                    vec![round.wrapping_mul(31).wrapping_add(i); len]
                })
                .collect();
            for p in &payloads {
                sender.send_to(p, to).unwrap();
            }
            // Loopback sends are delivered before `send_to` returns: a few receives take all.
            let mut got = Vec::new();
            for _ in 0..payloads.len() {
                got.extend(receiver.recv(MAX_RECEIVE).unwrap());
            }
            assert_eq!(got.len(), payloads.len());
            for (d, p) in got.into_iter().zip(payloads) {
                assert_eq!(&d.data[..], &p[..]);
                held.push((d.data.freeze(), p));
            }
            // Drop every other round's datagrams so that some slots come free.
            if round % 2 == 1 {
                held.truncate(held.len() / 2);
            }
        }
        for (data, expected) in &held {
            assert_eq!(&data[..], &expected[..]);
        }
    }

    /// As many datagrams as `segments_per_send` allows go in one send and each arrives whole;
    /// with one more nothing arrives (the size bound is the kernel's, not a guess).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_send_of_as_many_segments_as_allowed_arrives_and_one_more_is_lost() {
        let receiver = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let sender = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        if sender.state.max_gso_segments() == 1 {
            eprintln!("no segmentation offload on this kernel: nothing to check");
            assert_eq!(sender.segments_per_send(1452), 1);
            return;
        }
        // Ethernet-sized datagrams: the count is the bound.
        assert_eq!(sender.segments_per_send(1452), MAX_TRANSMIT_SEGMENTS);
        // Datagrams large enough that the size of one send is the bound.
        let mtu: u16 = 4000;
        let segments = sender.segments_per_send(mtu);
        assert_eq!(segments, MAX_SEGMENTED_SEND / usize::from(mtu));
        assert!(segments < MAX_TRANSMIT_SEGMENTS);
        let transmit = |count: usize, contents: &[u8]| {
            sender.send(
                &quinn_proto::Transmit {
                    destination: receiver.local_addr().unwrap(),
                    ecn: None,
                    size: count * usize::from(mtu),
                    segment_size: Some(usize::from(mtu)),
                    src_ip: None,
                },
                &contents[..count * usize::from(mtu)],
            )
        };
        let contents: Vec<u8> = (0..(segments + 1) * usize::from(mtu))
            .map(|i| (i / usize::from(mtu)) as u8)
            .collect();
        transmit(segments, &contents).expect("a full segmented send");
        // Loopback sends are delivered before the send returns.
        let mut got = Vec::new();
        while got.len() < segments {
            let batch = receiver.recv(usize::from(mtu)).unwrap();
            assert!(!batch.is_empty(), "only {} datagrams arrived", got.len());
            got.extend(batch);
        }
        assert_eq!(got.len(), segments);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.data.len(), usize::from(mtu));
            assert!(d.data.iter().all(|&b| b == i as u8), "datagram {i} intact");
        }
        // quinn-udp takes the kernel's refusal (EMSGSIZE) silently, as for a path MTU probe
        // too large for the path: the datagrams are simply lost.
        transmit(segments + 1, &contents).expect("the refusal is silent");
        assert!(
            receiver.recv(usize::from(mtu)).unwrap().is_empty(),
            "a send of {} segments went out",
            segments + 1
        );
    }
}
