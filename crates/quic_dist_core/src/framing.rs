//! Framing of distribution packets on a QUIC stream.
//!
//! A QUIC stream is a byte stream, and `dist_ctrl_put_data/2` needs whole packets, so every
//! packet travels as a frame: a 4-byte big-endian length followed by that many bytes. A frame of
//! length zero is a tick: it keeps the connection alive and is never handed to the runtime.
//!
//! With several data streams, a packet that must not overtake anything sent before it on the
//! other streams travels as an *ordered* frame: the length has its top bit set, and the body is
//! a count `n` (one byte), `n` big-endian `u64`s (how many packets had been sent on each data
//! stream before this one), then the packet. The receiver holds it until it has delivered that
//! many packets of every other stream (see [`crate::stream_map`]).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::FrameError;
use crate::limits::DEFAULT_MAX_FRAME;
use crate::packet::Packet;

/// Length of the frame header (a big-endian `u32`).
pub const FRAME_HEADER_LEN: usize = 4;

/// Bit of the frame header marking an ordered frame.
const ORDERED_BIT: u32 = 1 << 31;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A zero-length frame: liveness only.
    Tick,
    /// A distribution packet, to be given whole to `dist_ctrl_put_data/2`.
    Packet(Packet),
    /// A packet to deliver only after `after[i]` packets of each data stream `i`.
    Ordered {
        /// Packets sent on each data stream before this one.
        after: Vec<u64>,
        /// The distribution packet.
        packet: Packet,
    },
}

/// Writes frames into a buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameEncoder {
    max_frame: usize,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameEncoder {
    /// An encoder that refuses packets longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            // The top bit of the length marks ordered frames.
            max_frame: max_frame.min((ORDERED_BIT - 1) as usize),
        }
    }

    /// The header of an ordered frame whose packet (`packet_len` bytes) follows it on the
    /// stream: the frame header and the counts of packets sent before it on each data stream.
    pub fn ordered_header(&self, after: &[u64], packet_len: usize) -> Result<Bytes, FrameError> {
        let counts = u8::try_from(after.len())
            .map_err(|_| FrameError::TooManyStreams { count: after.len() })?;
        let len = 1 + 8 * after.len() + packet_len;
        if len > self.max_frame {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + 1 + 8 * after.len());
        out.put_u32(len as u32 | ORDERED_BIT);
        out.put_u8(counts);
        for n in after {
            out.put_u64(*n);
        }
        Ok(out.freeze())
    }

    /// Appends one packet, given as the parts of an I/O vector, as a single frame.
    ///
    /// Nothing is written if the packet is too large.
    pub fn encode_packet(&self, parts: &[&[u8]], out: &mut BytesMut) -> Result<(), FrameError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.max_frame {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        out.reserve(FRAME_HEADER_LEN + len);
        out.put_u32(len as u32);
        for part in parts {
            out.extend_from_slice(part);
        }
        Ok(())
    }

    /// Starts a frame of a `len`-byte packet whose body the caller appends (or sends beside
    /// `out`); returns the position of the frame in `out`. Fails, writing nothing, if `len` is
    /// above the maximum.
    pub fn begin_sized(&self, len: usize, out: &mut BytesMut) -> Result<usize, FrameError> {
        if len > self.max_frame {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        let start = out.len();
        out.put_u32(len as u32);
        Ok(start)
    }

    /// Appends a tick (a zero-length frame).
    pub fn encode_tick(&self, out: &mut BytesMut) {
        out.put_u32(0);
    }
}

/// Chunks shorter than this are copied into the decoder's own buffer instead of being kept by
/// reference: a chunk is a slice of a whole received datagram (up to 64 KiB), which it keeps
/// alive, and a peer sending a byte per datagram must not make a partial frame pin 64 KiB per
/// byte. Full datagrams carry chunks far above this (about 1.4 KB on Ethernet, 64 KB on
/// loopback), so received data is normally not copied here.
const SMALL_CHUNK: usize = 1024;

/// Splits a byte stream back into frames, whatever the boundaries of the chunks it arrives in,
/// without copying them: packets are slices of the chunks ([`Packet`]).
#[derive(Debug)]
pub struct FrameDecoder {
    chunks: VecDeque<Bytes>,
    /// Small chunks, copied, not yet moved to `chunks` (they come after all of `chunks`).
    small: BytesMut,
    buffered: usize,
    max_frame: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that fails on frames announcing more than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            small: BytesMut::new(),
            buffered: 0,
            max_frame,
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, chunk: Bytes) {
        self.buffered += chunk.len();
        if chunk.len() < SMALL_CHUNK {
            self.small.extend_from_slice(&chunk);
        } else {
            self.flush_small();
            self.chunks.push_back(chunk);
        }
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The first `N` buffered bytes; the caller checked that there are that many.
    fn peek<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        let mut at = 0;
        for chunk in &self.chunks {
            let take = (N - at).min(chunk.len());
            out[at..at + take].copy_from_slice(&chunk[..take]);
            at += take;
            if at == N {
                break;
            }
        }
        out
    }

    /// Removes the first `n` buffered bytes and returns them; the caller checked that there
    /// are that many.
    fn take(&mut self, mut n: usize) -> Packet {
        self.buffered -= n;
        // Nearly always within the first chunk: one piece, no list.
        if let Some(front) = self.chunks.front_mut() {
            if front.len() > n {
                return Packet::from(front.split_to(n));
            }
            if front.len() == n {
                return Packet::from(self.chunks.pop_front().unwrap_or_default());
            }
        }
        let mut parts = Vec::new();
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                parts.extend(self.chunks.pop_front());
            } else {
                parts.push(front.split_to(n));
                n = 0;
            }
        }
        Packet::from_parts(parts)
    }

    /// Returns the next whole frame, `None` if more bytes are needed.
    ///
    /// An oversize length is reported as soon as its header is complete, before its body is
    /// buffered, so a hostile peer cannot make the decoder hold more than `max_frame` bytes.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffered < FRAME_HEADER_LEN {
            return Ok(None);
        }
        self.flush_small();
        let header = u32::from_be_bytes(self.peek::<FRAME_HEADER_LEN>());
        let ordered = header & ORDERED_BIT != 0;
        let len = (header & !ORDERED_BIT) as usize;
        if len > self.max_frame {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        if self.buffered < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let _ = self.take(FRAME_HEADER_LEN);
        if len == 0 {
            return Ok(Some(Frame::Tick));
        }
        let mut body = self.take(len);
        if !ordered {
            return Ok(Some(Frame::Packet(body)));
        }
        let counts = body.head(1)[0] as usize;
        if len < 1 + 8 * counts + 1 {
            return Err(FrameError::BadOrdered { len, counts });
        }
        let after = body.head(1 + 8 * counts)[1..]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        body.advance(1 + 8 * counts);
        Ok(Some(Frame::Ordered {
            after,
            packet: body,
        }))
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(bytes: &'static [u8]) -> Packet {
        Packet::from(bytes)
    }

    fn encode(packets: &[&[u8]]) -> BytesMut {
        let enc = FrameEncoder::default();
        let mut out = BytesMut::new();
        for p in packets {
            enc.encode_packet(&[p], &mut out).unwrap();
        }
        out
    }

    fn drain(dec: &mut FrameDecoder) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            frames.push(f);
        }
        frames
    }

    #[test]
    fn round_trip_of_several_packets() {
        let wire = encode(&[b"hello", b"", b"world!"]);
        let mut dec = FrameDecoder::default();
        dec.push(wire.clone().freeze());
        assert_eq!(
            drain(&mut dec),
            vec![
                Frame::Packet(pk(b"hello")),
                Frame::Tick,
                Frame::Packet(pk(b"world!")),
            ]
        );
        assert_eq!(dec.buffered(), 0);
        dec.finish().unwrap();
    }

    #[test]
    fn iovec_parts_become_one_frame() {
        let enc = FrameEncoder::default();
        let mut out = BytesMut::new();
        enc.encode_packet(&[b"ab", b"", b"cde"], &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e']);
    }

    #[test]
    fn byte_by_byte_delivery_gives_the_same_frames() {
        let packets: Vec<Vec<u8>> = (0..50u8).map(|n| vec![n; n as usize * 7]).collect();
        let refs: Vec<&[u8]> = packets.iter().map(|p| p.as_slice()).collect();
        let wire = encode(&refs);
        let mut dec = FrameDecoder::default();
        let mut got = Vec::new();
        for b in wire.iter() {
            dec.push(Bytes::copy_from_slice(&[*b]));
            got.extend(drain(&mut dec));
        }
        let expected: Vec<Frame> = packets
            .iter()
            .map(|p| {
                if p.is_empty() {
                    Frame::Tick
                } else {
                    Frame::Packet(Bytes::copy_from_slice(p).into())
                }
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_frame_straddling_large_chunks_is_not_copied() {
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let wire = encode(&[&body]).freeze();
        let (a, b) = (wire.slice(..2000), wire.slice(2000..));
        let mut dec = FrameDecoder::default();
        dec.push(a.clone());
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(b.clone());
        let Some(Frame::Packet(p)) = dec.next_frame().unwrap() else {
            panic!("a packet");
        };
        assert_eq!(&p.to_bytes()[..], &body[..]);
        let parts: Vec<&Bytes> = p.parts().collect();
        assert_eq!(parts.len(), 2);
        // Slices of the chunks themselves, past the 4-byte header.
        assert_eq!(parts[0].as_ptr(), a[FRAME_HEADER_LEN..].as_ptr());
        assert_eq!(parts[1].as_ptr(), b.as_ptr());
        dec.finish().unwrap();
    }

    #[test]
    fn small_chunks_are_copied_and_any_split_gives_the_same_frames() {
        let packets: Vec<Vec<u8>> = (0..200u32)
            .map(|n| vec![n as u8; (n as usize * 97) % 3000])
            .collect();
        let refs: Vec<&[u8]> = packets.iter().map(|p| p.as_slice()).collect();
        let wire = encode(&refs).freeze();
        let expected: Vec<Frame> = packets
            .iter()
            .map(|p| match p.is_empty() {
                true => Frame::Tick,
                false => Frame::Packet(Bytes::copy_from_slice(p).into()),
            })
            .collect();
        // Chunk sizes from a fixed pseudo-random sequence, small and large mixed.
        let mut seed = 12345u32;
        let mut dec = FrameDecoder::default();
        let (mut at, mut got) = (0, Vec::new());
        while at < wire.len() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let n = match seed >> 28 {
                0..=7 => 1 + (seed >> 8) as usize % (SMALL_CHUNK - 1),
                _ => SMALL_CHUNK + (seed >> 8) as usize % 5000,
            };
            let end = (at + n).min(wire.len());
            let chunk = wire.slice(at..end);
            let small = chunk.len() < SMALL_CHUNK;
            dec.push(chunk.clone());
            while let Some(f) = dec.next_frame().unwrap() {
                if let Frame::Packet(p) = &f {
                    for part in p.parts() {
                        // No part points into a small chunk: those were copied.
                        let inside = small
                            && part.as_ptr() >= chunk.as_ptr()
                            && part.as_ptr() < chunk.as_ptr().wrapping_add(chunk.len());
                        assert!(!inside, "a small chunk was kept by reference");
                    }
                }
                got.push(f);
            }
            at = end;
        }
        assert_eq!(got, expected);
        dec.finish().unwrap();
    }

    #[test]
    fn partial_header_and_partial_body_wait_for_more() {
        let wire = encode(&[b"0123456789"]);
        let mut dec = FrameDecoder::default();
        dec.push(wire.clone().freeze().slice(..2));
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(wire.clone().freeze().slice(2..9));
        assert_eq!(dec.next_frame().unwrap(), None);
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated { buffered: 9 })
        ));
        dec.push(wire.clone().freeze().slice(9..));
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Packet(pk(b"0123456789")))
        );
    }

    #[test]
    fn frame_of_exactly_the_maximum_size_is_accepted() {
        let max = 1000;
        let enc = FrameEncoder::new(max);
        let body = vec![7u8; max];
        let mut out = BytesMut::new();
        enc.encode_packet(&[&body], &mut out).unwrap();
        let mut dec = FrameDecoder::new(max);
        dec.push(out.freeze());
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Packet(Bytes::from(body).into()))
        );
    }

    #[test]
    fn oversize_packet_is_refused_by_the_encoder_and_nothing_is_written() {
        let enc = FrameEncoder::new(10);
        let mut out = BytesMut::new();
        let err = enc
            .encode_packet(&[b"012345", b"67890"], &mut out)
            .unwrap_err();
        assert_eq!(err, FrameError::Oversize { len: 11, max: 10 });
        assert!(out.is_empty());
    }

    #[test]
    fn a_sized_frame_matches_encode_packet_and_oversize_writes_nothing() {
        let enc = FrameEncoder::new(8);
        let mut out = BytesMut::new();
        enc.encode_packet(&[b"xy"], &mut out).unwrap();
        let start = enc.begin_sized(3, &mut out).unwrap();
        assert_eq!(start, FRAME_HEADER_LEN + 2);
        out.extend_from_slice(b"abc");
        let mut expected = BytesMut::new();
        enc.encode_packet(&[b"xy"], &mut expected).unwrap();
        enc.encode_packet(&[b"abc"], &mut expected).unwrap();
        assert_eq!(out, expected);
        let before = out.len();
        assert_eq!(
            enc.begin_sized(9, &mut out),
            Err(FrameError::Oversize { len: 9, max: 8 })
        );
        assert_eq!(out.len(), before);
    }

    #[test]
    fn oversize_header_is_rejected_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(Bytes::from_static(&[0, 0, 4, 1])); // 1025 bytes announced
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::Oversize {
                len: 1025,
                max: 1024
            })
        );
    }

    #[test]
    fn largest_u32_length_is_rejected_by_default() {
        let mut dec = FrameDecoder::default();
        dec.push(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]));
        assert!(matches!(dec.next_frame(), Err(FrameError::Oversize { .. })));
    }

    #[test]
    fn ordered_frame_round_trip_between_plain_ones() {
        let enc = FrameEncoder::default();
        let mut wire = BytesMut::new();
        enc.encode_packet(&[b"one"], &mut wire).unwrap();
        wire.extend_from_slice(&enc.ordered_header(&[5, 0, 1 << 40], 4).unwrap());
        wire.extend_from_slice(b"four");
        enc.encode_packet(&[b"two"], &mut wire).unwrap();
        let mut dec = FrameDecoder::default();
        dec.push(wire.clone().freeze());
        assert_eq!(
            drain(&mut dec),
            vec![
                Frame::Packet(pk(b"one")),
                Frame::Ordered {
                    after: vec![5, 0, 1 << 40],
                    packet: pk(b"four"),
                },
                Frame::Packet(pk(b"two")),
            ]
        );
    }

    #[test]
    fn ordered_frame_without_room_for_its_counts_and_packet_is_an_error() {
        let mut dec = FrameDecoder::default();
        // Announces 3 counts (25 bytes) in a 9-byte body.
        dec.push(Bytes::from_static(&[
            0x80, 0, 0, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0,
        ]));
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::BadOrdered { len: 9, counts: 3 })
        );
    }

    #[test]
    fn ordered_header_checks_the_maximum_like_a_plain_frame() {
        let enc = FrameEncoder::new(20);
        assert_eq!(
            enc.ordered_header(&[1, 2], 4),
            Err(FrameError::Oversize { len: 21, max: 20 })
        );
        assert!(enc.ordered_header(&[1, 2], 3).is_ok());
    }

    #[test]
    fn error_messages_are_lowercase() {
        let msg = FrameError::Oversize { len: 2, max: 1 }.to_string();
        assert!(msg.starts_with("frame of 2 bytes"));
    }
}
