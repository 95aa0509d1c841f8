//! Joining the fragments of a message into one packet before the runtime sees them.
//!
//! OTP 25 cuts every message above 64 KiB into fragments (`131, 69, SeqId, FragId, ...` then
//! `131, 70, SeqId, FragId, ...`, FragId counting down to 1). The runtime joins them again by
//! copying every fragment's payload into one buffer in the receiving process: a second copy of
//! every byte of a large message, after the carrier's own copy into an Erlang binary. The
//! carrier copies each packet into a binary anyway, so it joins the fragments in that copy
//! instead: a start fragment becomes the header of an ordinary packet (`131, 68`, then the rest
//! of the start fragment from its atom cache count on) and the continuations' payloads follow.
//! The runtime accepts whole packets at any time, fragments being negotiated or not, and decodes
//! the message straight out of the binary. 1 MiB messages between two nodes: 1.1-1.4 GB/s with
//! fragments, 1.5-1.8 GB/s as whole packets (bench/README.md).
//!
//! - Messages of at most [`MAX_JOINED_FRAGMENTS`] fragments are joined without copying: the
//!   joined packet is copied into its binary in one NIF call, which must stay short.
//! - Longer ones, up to [`MAX_COPIED_BYTES`], are copied as their fragments arrive into a
//!   [`JoinBuffer`] that the owner provides (the NIF: an Erlang binary), if it provides one;
//!   else, and above that size, they pass through as fragments. Passing through, the runtime
//!   copies the whole message into one buffer when the receiving process first looks at its
//!   mailbox: about 1 ms for 8 MiB on these machines, in one piece, on the scheduler of that
//!   process. A small message from another process that waited for that scheduler meanwhile
//!   took those 1-1.4 ms: the floor of the round trips of a pinger beside a stream of 8 MiB
//!   messages. Copied here, 64 KiB at a time, the runtime decodes the binary in place.
//! - Only messages that use no atom cache references (count 0 in the start fragment, always so
//!   with several streams, where the cache is rejected): delaying a start fragment past other
//!   packets is safe only if none of them can redefine a cache entry it refers to.
//! - A message is delivered when its last fragment arrives, as the runtime would deliver it.
//!   The fragments of one sequence travel on one stream in order (see `stream_map`), and
//!   sequences may interleave, so a joiner follows several per stream.
//! - Anything unexpected (a continuation out of turn, a second start of a sequence) is not
//!   repaired: the fragments held for that sequence are handed on as they came, then the
//!   packet, and the runtime judges them as it would have. Fragments already copied are handed
//!   on as one start fragment of the same sequence holding all of them: the runtime then sees
//!   the same mistake in the next packet.

use std::collections::HashMap;

use bytes::Bytes;

use crate::packet::Packet;

/// Most fragments of one message joined into one packet without copying: 2 MiB of payload, a
/// copy of about 0.2-0.4 ms when the packet becomes a binary.
pub const MAX_JOINED_FRAGMENTS: u64 = 32;

/// Largest message (estimated from its first fragment) copied into a [`JoinBuffer`] as it
/// arrives: the buffer is allocated whole when the first fragment comes. Larger ones pass
/// through as fragments.
pub const MAX_COPIED_BYTES: usize = 64 * 1024 * 1024;

/// Where the fragments of a long message are copied as they arrive, ending as one packet.
pub trait JoinBuffer: Send {
    /// Appends `bytes` (growing the buffer if the estimate was short).
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// The bytes so far.
    fn as_slice(&self) -> &[u8];
    /// The buffer as `Any`, for its owner to take back its own type.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

impl JoinBuffer for Vec<u8> {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }

    fn as_slice(&self) -> &[u8] {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// Length of a fragment header: 131, 69 or 70, SeqId:64, FragId:64.
const FRAGMENT_HEADER: usize = 18;
/// The start fragment's header with its atom cache count, which must be 0 to join.
const START_HEADER: usize = FRAGMENT_HEADER + 1;
const VERSION: u8 = 131;
const FRAG_START: u8 = 69;
const FRAG_CONT: u8 = 70;
/// What a joined packet starts with: a distribution header (its atom cache count, 0, follows
/// from the start fragment).
const WHOLE_HEADER: [u8; 2] = [VERSION, 68];

/// A message whose fragments are arriving.
struct Joining {
    /// The FragId the next continuation must have.
    next: u64,
    held: Held,
}

/// What is held of a message whose fragments are arriving.
enum Held {
    /// The fragments as they came (handed on as they are if the sequence goes wrong).
    Fragments(Vec<Packet>),
    /// A long message's bytes so far (the whole packet's header, then the payloads), and the
    /// FragId of its start fragment.
    Copied(Box<dyn JoinBuffer>, u64),
}

/// Joins the fragments of each message of one stream into one packet.
#[derive(Default)]
pub struct FragmentJoiner {
    joining: HashMap<u64, Joining>,
}

impl std::fmt::Debug for FragmentJoiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragmentJoiner")
            .field("joining", &self.joining.len())
            .finish()
    }
}

impl FragmentJoiner {
    /// A joiner with nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next packet of the stream and appends to `ready` what is now ready for the
    /// runtime, in order: nothing while a message's fragments are still arriving, the joined
    /// message with its last fragment, and any other packet as it is. Appending to the
    /// caller's batch keeps the path of a small message free of allocations.
    pub fn push(&mut self, packet: Packet, ready: &mut Vec<Packet>) {
        let copied = self.push_copying(packet, ready, &mut |_| None);
        debug_assert!(copied.is_none(), "nothing is copied without buffers");
    }

    /// [`push`](Self::push), copying a message longer than [`MAX_JOINED_FRAGMENTS`] fragments
    /// into a buffer from `buffer` (asked with the estimated size; `None`: it passes through)
    /// as its fragments arrive. Returns that buffer, whole, with the last fragment: it comes
    /// after the packets appended to `ready`.
    pub fn push_copying(
        &mut self,
        packet: Packet,
        ready: &mut Vec<Packet>,
        buffer: &mut dyn FnMut(usize) -> Option<Box<dyn JoinBuffer>>,
    ) -> Option<Box<dyn JoinBuffer>> {
        let head = packet.head(START_HEADER);
        if head.len() < FRAGMENT_HEADER || head[0] != VERSION {
            ready.push(packet);
            return None;
        }
        let seq = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
        let frag = u64::from_be_bytes(head[10..18].try_into().expect("8 bytes"));
        match head[1] {
            FRAG_START if !self.joining.contains_key(&seq) => {
                let no_atom_cache = head.get(FRAGMENT_HEADER) == Some(&0);
                if !no_atom_cache || frag < 2 {
                    ready.push(packet);
                    return None;
                }
                let held = if frag <= MAX_JOINED_FRAGMENTS {
                    Held::Fragments(vec![packet])
                } else if let Some(buf) = copy_buffer(&packet, frag, buffer) {
                    Held::Copied(buf, frag)
                } else {
                    ready.push(packet);
                    return None;
                };
                let next = frag - 1;
                self.joining.insert(seq, Joining { next, held });
            }
            FRAG_START => self.hand_on(seq, packet, ready),
            FRAG_CONT => match self.joining.get_mut(&seq) {
                None => ready.push(packet),
                Some(j) if j.next != frag => self.hand_on(seq, packet, ready),
                Some(j) if frag > 1 => {
                    match &mut j.held {
                        Held::Copied(buf, _) => append_payload(buf.as_mut(), packet),
                        Held::Fragments(fragments) => fragments.push(packet),
                    }
                    j.next -= 1;
                }
                Some(_) => match self.joining.remove(&seq).expect("present").held {
                    Held::Copied(mut buf, _) => {
                        append_payload(buf.as_mut(), packet);
                        return Some(buf);
                    }
                    Held::Fragments(mut fragments) => {
                        fragments.push(packet);
                        ready.push(joined(fragments));
                    }
                },
            },
            _ => ready.push(packet),
        }
        None
    }

    /// Messages whose fragments are still arriving.
    pub fn joining(&self) -> usize {
        self.joining.len()
    }

    /// Appends the fragments held for `seq` as they came (those copied as one start fragment
    /// holding them all), then `packet`.
    fn hand_on(&mut self, seq: u64, packet: Packet, ready: &mut Vec<Packet>) {
        match self.joining.remove(&seq).map(|j| j.held) {
            Some(Held::Fragments(fragments)) => ready.extend(fragments),
            Some(Held::Copied(buf, frag)) => {
                let mut start = Vec::with_capacity(FRAGMENT_HEADER + buf.as_slice().len());
                start.extend_from_slice(&[VERSION, FRAG_START]);
                start.extend_from_slice(&seq.to_be_bytes());
                start.extend_from_slice(&frag.to_be_bytes());
                start.extend_from_slice(&buf.as_slice()[WHOLE_HEADER.len()..]);
                ready.push(Packet::from(Bytes::from(start)));
            }
            None => {}
        }
        ready.push(packet);
    }
}

/// A buffer for the long message that `start` (its first fragment, of `frag` in all) begins,
/// holding the whole packet's header and the start fragment's payload; `None` if the message
/// would be larger than [`MAX_COPIED_BYTES`] or the owner gives no buffer.
fn copy_buffer(
    start: &Packet,
    frag: u64,
    buffer: &mut dyn FnMut(usize) -> Option<Box<dyn JoinBuffer>>,
) -> Option<Box<dyn JoinBuffer>> {
    // Every fragment but the last carries as much of the message as the first (OTP cuts the
    // encoded message into equal pieces), the first also the atom cache count.
    let first = start.len() - FRAGMENT_HEADER;
    let estimate = usize::try_from(frag - 1)
        .ok()?
        .checked_mul(first.saturating_sub(1))?
        .checked_add(WHOLE_HEADER.len() + first)?;
    if estimate > MAX_COPIED_BYTES {
        return None;
    }
    let mut buf = buffer(estimate)?;
    buf.extend_from_slice(&WHOLE_HEADER);
    append_payload(buf.as_mut(), start.clone());
    Some(buf)
}

/// Appends what follows a fragment's header.
fn append_payload(buf: &mut dyn JoinBuffer, mut fragment: Packet) {
    fragment.advance(FRAGMENT_HEADER);
    for part in fragment.parts() {
        buf.extend_from_slice(part);
    }
}

/// One whole packet from a message's fragments, without copying them.
fn joined(fragments: Vec<Packet>) -> Packet {
    let mut parts = vec![Bytes::from_static(&WHOLE_HEADER)];
    for mut fragment in fragments {
        // The start fragment keeps its atom cache count (0), control message and first
        // payload; a continuation only its payload.
        fragment.advance(FRAGMENT_HEADER);
        parts.extend(fragment.parts().cloned());
    }
    Packet::from_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(kind: u8, seq: u64, frag: u64, payload: &[u8]) -> Packet {
        let mut b = vec![VERSION, kind];
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&frag.to_be_bytes());
        b.extend_from_slice(payload);
        Packet::from(Bytes::from(b))
    }

    /// What one packet makes ready.
    fn push(j: &mut FragmentJoiner, packet: Packet) -> Vec<Packet> {
        let mut ready = Vec::new();
        j.push(packet, &mut ready);
        ready
    }

    fn whole(payload: &[u8]) -> Packet {
        let mut b = WHOLE_HEADER.to_vec();
        b.extend_from_slice(payload);
        Packet::from(Bytes::from(b))
    }

    #[test]
    fn the_fragments_of_a_message_become_one_whole_packet_at_the_last() {
        let mut j = FragmentJoiner::new();
        assert!(push(&mut j, fragment(FRAG_START, 7, 3, b"\0CTRL-first ")).is_empty());
        assert!(push(&mut j, fragment(FRAG_CONT, 7, 2, b"second ")).is_empty());
        assert_eq!(j.joining(), 1);
        let out = push(&mut j, fragment(FRAG_CONT, 7, 1, b"third"));
        assert_eq!(out, vec![whole(b"\0CTRL-first second third")]);
        assert_eq!(j.joining(), 0);
    }

    #[test]
    fn interleaved_sequences_are_joined_each_and_other_packets_pass_at_once() {
        let mut j = FragmentJoiner::new();
        let plain = whole(b"\0small message");
        assert!(push(&mut j, fragment(FRAG_START, 1, 2, b"\0a1")).is_empty());
        assert!(push(&mut j, fragment(FRAG_START, 2, 2, b"\0b1")).is_empty());
        assert_eq!(push(&mut j, plain.clone()), vec![plain]);
        assert_eq!(
            push(&mut j, fragment(FRAG_CONT, 2, 1, b"b2")),
            vec![whole(b"\0b1b2")]
        );
        assert_eq!(
            push(&mut j, fragment(FRAG_CONT, 1, 1, b"a2")),
            vec![whole(b"\0a1a2")]
        );
    }

    #[test]
    fn pieces_of_the_stream_anywhere_in_the_fragments_give_the_same_packet() {
        // Fragments straddle QUIC chunks: the header itself may be cut.
        let cut = |p: Packet, at: usize| {
            let b = p.to_bytes();
            Packet::from_parts([b.slice(..at), b.slice(at..)])
        };
        let mut j = FragmentJoiner::new();
        assert!(push(&mut j, cut(fragment(FRAG_START, 9, 2, b"\0xy"), 5)).is_empty());
        let out = push(&mut j, cut(fragment(FRAG_CONT, 9, 1, b"z"), 17));
        assert_eq!(out, vec![whole(b"\0xyz")]);
    }

    #[test]
    fn messages_of_too_many_fragments_and_single_fragments_pass_through() {
        let mut j = FragmentJoiner::new();
        let big = fragment(FRAG_START, 1, MAX_JOINED_FRAGMENTS + 1, b"\0x");
        assert_eq!(push(&mut j, big.clone()), vec![big]);
        let next = fragment(FRAG_CONT, 1, MAX_JOINED_FRAGMENTS, b"y");
        assert_eq!(push(&mut j, next.clone()), vec![next]);
        let single = fragment(FRAG_START, 2, 1, b"\0z");
        assert_eq!(push(&mut j, single.clone()), vec![single]);
        assert_eq!(j.joining(), 0);
    }

    #[test]
    fn a_message_that_uses_the_atom_cache_is_not_held() {
        // One cache reference: later packets may redefine the entry it names.
        let mut j = FragmentJoiner::new();
        let start = fragment(FRAG_START, 3, 2, b"\x01\x00ref");
        assert_eq!(push(&mut j, start.clone()), vec![start]);
        let cont = fragment(FRAG_CONT, 3, 1, b"rest");
        assert_eq!(push(&mut j, cont.clone()), vec![cont]);
    }

    #[test]
    fn a_sequence_out_of_turn_is_handed_on_as_it_came() {
        let mut j = FragmentJoiner::new();
        let start = fragment(FRAG_START, 4, 3, b"\0a");
        let skipped = fragment(FRAG_CONT, 4, 1, b"c");
        assert!(push(&mut j, start.clone()).is_empty());
        assert_eq!(push(&mut j, skipped.clone()), vec![start, skipped]);
        assert_eq!(j.joining(), 0);
        let again = fragment(FRAG_START, 5, 2, b"\0a");
        let restart = fragment(FRAG_START, 5, 2, b"\0b");
        assert!(push(&mut j, again.clone()).is_empty());
        assert_eq!(push(&mut j, restart.clone()), vec![again, restart]);
        let orphan = fragment(FRAG_CONT, 6, 1, b"x");
        assert_eq!(push(&mut j, orphan.clone()), vec![orphan]);
    }

    /// Pushes `packet` with buffers from a `Vec`, noting the sizes asked for.
    fn push_copying(
        j: &mut FragmentJoiner,
        packet: Packet,
        asked: &mut Vec<usize>,
    ) -> (Vec<Packet>, Option<Vec<u8>>) {
        let mut ready = Vec::new();
        let mut buffer = |n: usize| -> Option<Box<dyn JoinBuffer>> {
            asked.push(n);
            Some(Box::new(Vec::<u8>::with_capacity(n)))
        };
        let done = j.push_copying(packet, &mut ready, &mut buffer);
        let done = done.map(|b| *b.into_any().downcast::<Vec<u8>>().expect("a Vec"));
        (ready, done)
    }

    #[test]
    fn a_long_message_is_copied_as_it_arrives_and_comes_whole_with_its_last_fragment() {
        let n = MAX_JOINED_FRAGMENTS + 8;
        let piece = |i: u64| vec![b'a' + (i % 26) as u8; 100];
        let mut j = FragmentJoiner::new();
        let mut asked = Vec::new();
        let mut start = vec![0u8];
        start.extend(piece(n));
        let (ready, done) = push_copying(&mut j, fragment(FRAG_START, 7, n, &start), &mut asked);
        assert!(ready.is_empty() && done.is_none());
        let mut expected = start.clone();
        for i in (1..n).rev() {
            let (ready, done) =
                push_copying(&mut j, fragment(FRAG_CONT, 7, i, &piece(i)), &mut asked);
            assert!(ready.is_empty());
            expected.extend(piece(i));
            if i > 1 {
                assert!(done.is_none());
                assert_eq!(j.joining(), 1);
            } else {
                assert_eq!(
                    Packet::from(Bytes::from(done.expect("whole"))),
                    whole(&expected)
                );
            }
        }
        assert_eq!(j.joining(), 0);
        // One buffer, asked for with room for the whole packet: no growing on the way.
        assert_eq!(asked.len(), 1);
        assert!(asked[0] >= WHOLE_HEADER.len() + expected.len(), "{asked:?}");
    }

    #[test]
    fn a_long_message_passes_through_without_a_buffer_or_above_the_size_limit() {
        let n = MAX_JOINED_FRAGMENTS + 1;
        let mut j = FragmentJoiner::new();
        let start = fragment(FRAG_START, 1, n, b"\0x");
        let mut ready = Vec::new();
        assert!(j
            .push_copying(start.clone(), &mut ready, &mut |_| None)
            .is_none());
        assert_eq!(ready, vec![start]);
        let huge = fragment(FRAG_START, 2, 1 << 40, b"\0x");
        let mut asked = Vec::new();
        assert_eq!(
            push_copying(&mut j, huge.clone(), &mut asked),
            (vec![huge], None)
        );
        assert!(asked.is_empty());
        assert_eq!(j.joining(), 0);
    }

    #[test]
    fn a_copied_sequence_out_of_turn_is_handed_on_as_one_start_fragment_then_the_packet() {
        let n = MAX_JOINED_FRAGMENTS + 2;
        let mut j = FragmentJoiner::new();
        let mut asked = Vec::new();
        let _ = push_copying(&mut j, fragment(FRAG_START, 4, n, b"\0a"), &mut asked);
        let _ = push_copying(&mut j, fragment(FRAG_CONT, 4, n - 1, b"b"), &mut asked);
        let skipped = fragment(FRAG_CONT, 4, 1, b"z");
        let (ready, done) = push_copying(&mut j, skipped.clone(), &mut asked);
        assert!(done.is_none());
        assert_eq!(ready, vec![fragment(FRAG_START, 4, n, b"\0ab"), skipped]);
        assert_eq!(j.joining(), 0);
    }
}
