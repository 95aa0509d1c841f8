//! Which data stream each distribution packet takes, and when a packet that arrived may be
//! delivered.
//!
//! Erlang only promises that signals from one process to another are never reordered. With the
//! atom cache rejected, every packet can therefore travel on any QUIC stream as long as:
//!
//! - all packets with the same ordering key (the sending process, see [`crate::dist_header`])
//!   take the same stream: keys hash into a fixed table of slots, and a slot keeps the stream it
//!   was first given for the life of the connection;
//! - all fragments of a message take the stream of its first fragment;
//! - a packet whose key does not identify a process (a `MONITOR_P_EXIT` for a monitor by
//!   registered name names the dead process by its name) or that cannot be read at all, goes as
//!   an *ordered* packet: it carries how many packets had been sent on every stream before it,
//!   and the receiver delivers it only after it has delivered those. That is total order, for
//!   that packet only.
//!
//! A slot that is used for the first time gets the stream with the least data queued (ties: the
//! one that carried a packet least recently), so a pair that starts while another streams bulk
//! data does not share its stream, and a new sender does not join a stream that a long-lived
//! process keeps using. (Ties went to the stream with the fewest slots before: slots of
//! processes long gone counted, and after eight short-lived bulk senders the ninth landed on a
//! pinger's stream, whose round trips then waited for its 8 MiB messages: 5 ms p50 instead of
//! 0.3.)

use std::collections::HashMap;

use crate::dist_header::{route, Route};

/// Most data streams per direction of a connection.
pub const MAX_DATA_STREAMS: usize = 64;

/// Slots that ordering keys hash into. Two keys share a stream only if their slots do, or if
/// there are more active slots than streams.
const SLOTS: usize = 4096;

/// Fragment sequences remembered at once. A sequence whose last fragment never comes (its
/// sender was killed mid-message) would otherwise stay forever; past this many, the table is
/// cleared and later fragments of a forgotten sequence travel as ordered packets.
const MAX_OPEN_FRAGMENTS: usize = 65_536;

/// Where a packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Data stream index, `0..streams`.
    pub stream: usize,
    /// For an ordered packet: how many packets had been sent on each data stream before it.
    pub after: Option<Vec<u64>>,
    /// Where the sending process (its encoded pid) is in the packet, when the packet names one:
    /// the process to slow down if its stream is congested.
    pub sender: Option<std::ops::Range<usize>>,
}

/// Sender side: assigns packets to data streams. One per connection and direction.
#[derive(Debug)]
pub struct StreamMapper {
    streams: usize,
    /// 0 = unassigned, else stream index + 1.
    slots: Vec<u8>,
    /// Per stream: the number of the last packet placed on it (1 for the first packet placed on
    /// any stream), 0 if none yet.
    last_used: Vec<u64>,
    placed: u64,
    sent: Vec<u64>,
    fragments: HashMap<u64, usize>,
}

impl StreamMapper {
    /// A mapper over `streams` data streams (clamped to `1..=MAX_DATA_STREAMS`).
    pub fn new(streams: usize) -> Self {
        let streams = streams.clamp(1, MAX_DATA_STREAMS);
        Self {
            streams,
            slots: vec![0; SLOTS],
            last_used: vec![0; streams],
            placed: 0,
            sent: vec![0; streams],
            fragments: HashMap::new(),
        }
    }

    /// Number of data streams.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Packets placed on each stream so far.
    pub fn sent(&self) -> &[u64] {
        &self.sent
    }

    /// Places one packet (as `dist_ctrl_get_data/1` returned it). `queued[i]` is the number of
    /// bytes waiting to be sent on stream `i`; it only steers where new keys go.
    pub fn place(&mut self, packet: &[u8], queued: &[usize]) -> Placement {
        let mut sender = None;
        let (stream, ordered) = match route(packet) {
            Ok(Route::Packet { key }) => {
                sender = process_range(packet, key);
                self.stream_for_key(key, queued)
            }
            Ok(Route::FirstFragment { seq, frag, key }) => {
                sender = process_range(packet, key);
                let (stream, ordered) = self.stream_for_key(key, queued);
                if frag > 1 {
                    self.remember_fragments(seq, stream);
                }
                (stream, ordered)
            }
            Ok(Route::NextFragment { seq, frag }) => {
                let known = if frag > 1 {
                    self.fragments.get(&seq).copied()
                } else {
                    self.fragments.remove(&seq)
                };
                match known {
                    Some(stream) => (stream, false),
                    None => {
                        // Forgotten (see MAX_OPEN_FRAGMENTS): stream 0 from now on, and this
                        // one after everything sent so far, wherever its predecessors went.
                        if frag > 1 {
                            self.remember_fragments(seq, 0);
                        }
                        (0, true)
                    }
                }
            }
            Err(_) => (0, true),
        };
        let after = ordered.then(|| self.sent.clone());
        self.sent[stream] += 1;
        self.placed += 1;
        self.last_used[stream] = self.placed;
        Placement {
            stream,
            after,
            sender,
        }
    }

    fn remember_fragments(&mut self, seq: u64, stream: usize) {
        if self.fragments.len() >= MAX_OPEN_FRAGMENTS {
            self.fragments.clear();
        }
        self.fragments.insert(seq, stream);
    }

    /// The stream of an ordering key, and whether the packet must go ordered.
    fn stream_for_key(&mut self, key: &[u8], queued: &[usize]) -> (usize, bool) {
        let ordered = !is_process(key);
        let slot = (fnv1a(key) % SLOTS as u64) as usize;
        if self.slots[slot] != 0 {
            return (usize::from(self.slots[slot] - 1), ordered);
        }
        let stream = (0..self.streams)
            .min_by_key(|&i| (queued.get(i).copied().unwrap_or(0), self.last_used[i]))
            .unwrap_or(0);
        self.slots[slot] = stream as u8 + 1;
        (stream, ordered)
    }
}

/// Receiver side: true once an ordered packet that arrived on stream `own` may be delivered,
/// that is when `delivered(i) >= after[i]` for every other stream `i`.
pub fn ordered_ready(after: &[u64], own: usize, delivered: impl Fn(usize) -> u64) -> bool {
    after
        .iter()
        .enumerate()
        .all(|(i, &n)| i == own || delivered(i) >= n)
}

/// The range of `key` (a slice of `packet`) if it is a pid.
fn process_range(packet: &[u8], key: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (key.as_ptr() as usize).checked_sub(packet.as_ptr() as usize)?;
    matches!(key.first(), Some(88 | 103)).then(|| start..start + key.len())
}

/// A pid (or port) identifies one process; anything else (an atom: a registered name) does not.
fn is_process(key: &[u8]) -> bool {
    matches!(key.first(), Some(88 | 103 | 89 | 102 | 120))
}

/// FNV-1a, 64 bits: cheap, deterministic, good enough to spread encoded pids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_terms::*;

    fn send(from: u32, to: u32) -> Vec<u8> {
        packet(
            tuple(&[small(22), pid("a@h", from), pid("b@h", to)]),
            &[97, 1],
        )
    }

    #[test]
    fn one_sender_always_takes_one_stream_whatever_the_receiver() {
        let mut m = StreamMapper::new(8);
        let first = m.place(&send(1, 1), &[0; 8]);
        assert_eq!(first.after, None);
        for to in 2..100 {
            // However the queues look, a key keeps its stream.
            let queued: Vec<usize> = (0..8).map(|i| (i * 7919 + to as usize) % 13).collect();
            assert_eq!(m.place(&send(1, to), &queued).stream, first.stream);
        }
        assert_eq!(m.sent()[first.stream], 99);
    }

    #[test]
    fn new_senders_go_to_idle_streams_first() {
        let mut m = StreamMapper::new(4);
        let mut queued = vec![0usize; 4];
        let bulk = m.place(&send(1, 1), &queued).stream;
        queued[bulk] = 8 << 20;
        let mut used = vec![bulk];
        for from in 2..=4 {
            let s = m.place(&send(from, 1), &queued).stream;
            assert!(!used.contains(&s), "sender {from} shares stream {s}");
            used.push(s);
        }
        // All four streams taken: the next sender avoids the busy one.
        assert_ne!(m.place(&send(5, 1), &queued).stream, bulk);
    }

    #[test]
    fn a_new_sender_avoids_the_stream_of_a_sender_that_is_still_active() {
        // A long-lived process pings while short-lived bulk senders come and go, each starting
        // when every queue is empty: none may land on the pinger's stream, however many slots
        // the ones before left behind.
        let mut m = StreamMapper::new(8);
        let idle = [0; 8];
        let pinger = m.place(&send(1, 1), &idle).stream;
        for bulk in 2..40 {
            let s = m.place(&send(bulk, 2), &idle).stream;
            assert_ne!(s, pinger, "bulk sender {bulk} shares the pinger's stream");
            for _ in 0..50 {
                assert_eq!(m.place(&send(bulk, 2), &idle).stream, s);
            }
            assert_eq!(m.place(&send(1, 1), &idle).stream, pinger);
        }
    }

    #[test]
    fn fragments_follow_their_first_fragment_and_are_forgotten_after_the_last() {
        let mut m = StreamMapper::new(8);
        let busy = [0, 0, 0, 0, 0, 0, 0, 0];
        let control = tuple(&[small(22), pid("a@h", 3), pid("b@h", 1)]);
        let first = m.place(&first_fragment(9, 3, control, &[1]), &busy);
        // Another sender in between gets another stream.
        let other = m.place(&send(4, 1), &busy);
        assert_ne!(other.stream, first.stream);
        let queued_elsewhere = [1 << 30; 8];
        assert_eq!(
            m.place(&next_fragment(9, 2, &[2]), &queued_elsewhere),
            Placement {
                stream: first.stream,
                after: None,
                sender: None
            }
        );
        assert_eq!(
            m.place(&next_fragment(9, 1, &[3]), &busy).stream,
            first.stream
        );
        assert!(m.fragments.is_empty());
        // A continuation of a sequence it does not know: ordered, after everything so far.
        let before = m.sent().to_vec();
        let lost = m.place(&next_fragment(77, 2, &[4]), &busy);
        assert_eq!(lost.stream, 0);
        assert_eq!(lost.after, Some(before));
        assert_eq!(m.place(&next_fragment(77, 1, &[5]), &busy).after, None);
    }

    #[test]
    fn exit_of_a_monitor_by_name_and_unreadable_packets_go_ordered() {
        let mut m = StreamMapper::new(4);
        let idle = [0; 4];
        for from in 1..=6 {
            m.place(&send(from, 1), &idle);
        }
        let before = m.sent().to_vec();
        // MONITOR_P_EXIT {21, FromProc = registered name, ToPid, Ref, Reason}.
        let by_name = packet(
            tuple(&[
                small(21),
                atom("my_server"),
                pid("b@h", 5),
                reference("b@h"),
                atom("normal"),
            ]),
            &[],
        );
        let p = m.place(&by_name, &idle);
        assert_eq!(p.after, Some(before));
        let garbage = m.place(&[131, 68, 3, 1, 2, 3], &idle);
        assert_eq!(garbage.stream, 0);
        assert!(garbage.after.is_some());
    }

    #[test]
    fn the_sender_is_located_in_the_packet() {
        let mut m = StreamMapper::new(2);
        let p = send(7, 1);
        let range = m.place(&p, &[0, 0]).sender.expect("a sender");
        assert_eq!(&p[range], &pid("a@h", 7)[..]);
        let control = tuple(&[small(22), pid("a@h", 8), pid("b@h", 1)]);
        let first = first_fragment(3, 2, control, &[1]);
        let range = m.place(&first, &[0, 0]).sender.expect("a sender");
        assert_eq!(&first[range], &pid("a@h", 8)[..]);
        assert_eq!(m.place(&next_fragment(3, 1, &[2]), &[0, 0]).sender, None);
    }

    #[test]
    fn one_stream_means_everything_in_one_order() {
        let mut m = StreamMapper::new(1);
        for from in 1..50 {
            assert_eq!(m.place(&send(from, 1), &[5]).stream, 0);
        }
        assert_eq!(StreamMapper::new(0).streams(), 1);
        assert_eq!(StreamMapper::new(1000).streams(), MAX_DATA_STREAMS);
    }

    #[test]
    fn ordered_packet_waits_for_the_other_streams_but_not_its_own() {
        let delivered = [3u64, 0, 10];
        let get = |i: usize| delivered.get(i).copied().unwrap_or(0);
        assert!(ordered_ready(&[3, 5, 10], 1, get));
        assert!(!ordered_ready(&[4, 0, 10], 1, get));
        assert!(!ordered_ready(&[3, 0, 11], 1, get));
        // Streams the receiver never saw count as nothing delivered.
        assert!(!ordered_ready(&[0, 0, 0, 1], 0, get));
        assert!(ordered_ready(&[], 0, get));
    }
}
