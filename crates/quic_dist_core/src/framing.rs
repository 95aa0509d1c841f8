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

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::FrameError;
use crate::limits::DEFAULT_MAX_FRAME;

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
    Packet(Bytes),
    /// A packet to deliver only after `after[i]` packets of each data stream `i`.
    Ordered {
        /// Packets sent on each data stream before this one.
        after: Vec<u64>,
        /// The distribution packet.
        packet: Bytes,
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

    /// Starts a frame whose body the caller appends to `out` piece by piece; returns the
    /// position to pass to [`end_packet`](Self::end_packet).
    pub fn begin_packet(&self, out: &mut BytesMut) -> usize {
        let start = out.len();
        out.put_u32(0);
        start
    }

    /// Completes the frame started at `start`: writes its length, or removes it and fails if the
    /// body is larger than the maximum.
    pub fn end_packet(&self, start: usize, out: &mut BytesMut) -> Result<(), FrameError> {
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > self.max_frame {
            out.truncate(start);
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        out[start..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Appends a tick (a zero-length frame).
    pub fn encode_tick(&self, out: &mut BytesMut) {
        out.put_u32(0);
    }
}

/// Splits a byte stream back into frames, whatever the boundaries of the chunks it arrives in.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
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
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next whole frame, `None` if more bytes are needed.
    ///
    /// An oversize length is reported as soon as its header is complete, before its body is
    /// buffered, so a hostile peer cannot make the decoder hold more than `max_frame` bytes.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let header = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let ordered = header & ORDERED_BIT != 0;
        let len = (header & !ORDERED_BIT) as usize;
        if len > self.max_frame {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            });
        }
        let total = FRAME_HEADER_LEN + len;
        if self.buf.len() < total {
            // Reserve once for the whole frame instead of growing chunk by chunk.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        if len == 0 {
            return Ok(Some(Frame::Tick));
        }
        let mut body = self.buf.split_to(len).freeze();
        if !ordered {
            return Ok(Some(Frame::Packet(body)));
        }
        let counts = body[0] as usize;
        if len < 1 + 8 * counts + 1 {
            return Err(FrameError::BadOrdered { len, counts });
        }
        body.advance(1);
        let after = (0..counts).map(|_| body.get_u64()).collect();
        Ok(Some(Frame::Ordered {
            after,
            packet: body,
        }))
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        dec.push(&wire);
        assert_eq!(
            drain(&mut dec),
            vec![
                Frame::Packet(Bytes::from_static(b"hello")),
                Frame::Tick,
                Frame::Packet(Bytes::from_static(b"world!")),
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
            dec.push(&[*b]);
            got.extend(drain(&mut dec));
        }
        let expected: Vec<Frame> = packets
            .iter()
            .map(|p| {
                if p.is_empty() {
                    Frame::Tick
                } else {
                    Frame::Packet(Bytes::copy_from_slice(p))
                }
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn partial_header_and_partial_body_wait_for_more() {
        let wire = encode(&[b"0123456789"]);
        let mut dec = FrameDecoder::default();
        dec.push(&wire[..2]);
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(&wire[2..9]);
        assert_eq!(dec.next_frame().unwrap(), None);
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated { buffered: 9 })
        ));
        dec.push(&wire[9..]);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Packet(Bytes::from_static(b"0123456789")))
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
        dec.push(&out);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Packet(Bytes::from(body)))
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
    fn piecewise_frame_matches_encode_packet_and_oversize_is_rolled_back() {
        let enc = FrameEncoder::new(8);
        let mut out = BytesMut::new();
        enc.encode_packet(&[b"xy"], &mut out).unwrap();
        let start = enc.begin_packet(&mut out);
        out.extend_from_slice(b"ab");
        out.extend_from_slice(b"c");
        enc.end_packet(start, &mut out).unwrap();
        let mut expected = BytesMut::new();
        enc.encode_packet(&[b"xy"], &mut expected).unwrap();
        enc.encode_packet(&[b"abc"], &mut expected).unwrap();
        assert_eq!(out, expected);

        let before = out.len();
        let start = enc.begin_packet(&mut out);
        out.extend_from_slice(b"123456789");
        assert_eq!(
            enc.end_packet(start, &mut out),
            Err(FrameError::Oversize { len: 9, max: 8 })
        );
        assert_eq!(out.len(), before);
    }

    #[test]
    fn oversize_header_is_rejected_before_the_body_arrives() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&[0, 0, 4, 1]); // 1025 bytes announced
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
        dec.push(&[0xff, 0xff, 0xff, 0xff]);
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
        dec.push(&wire);
        assert_eq!(
            drain(&mut dec),
            vec![
                Frame::Packet(Bytes::from_static(b"one")),
                Frame::Ordered {
                    after: vec![5, 0, 1 << 40],
                    packet: Bytes::from_static(b"four"),
                },
                Frame::Packet(Bytes::from_static(b"two")),
            ]
        );
    }

    #[test]
    fn ordered_frame_without_room_for_its_counts_and_packet_is_an_error() {
        let mut dec = FrameDecoder::default();
        // Announces 3 counts (25 bytes) in a 9-byte body.
        dec.push(&[0x80, 0, 0, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
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
