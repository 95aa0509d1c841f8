//! A received distribution packet, as the stream delivered it: without copying.
//!
//! QUIC hands a stream over in chunks (the stream data of each datagram), and a packet often
//! straddles two of them: a 64 KiB fragment never fits one 65 000-byte datagram with its frame
//! header. Joining the pieces into one buffer here, only to copy that buffer again into an
//! Erlang binary, cost a full extra copy of everything received. A [`Packet`] keeps the pieces
//! (reference-counted slices of the chunks) and whoever needs the bytes in one place copies
//! them once, into its own buffer.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// The bytes of one distribution packet: one slice of the stream, or a few consecutive ones.
#[derive(Debug, Clone, Default)]
pub struct Packet {
    first: Bytes,
    rest: Vec<Bytes>,
}

impl Packet {
    /// A packet from consecutive pieces of the stream (empty pieces are dropped).
    pub fn from_parts(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let mut parts = parts.into_iter().filter(|p| !p.is_empty());
        let first = parts.next().unwrap_or_default();
        Self {
            first,
            rest: parts.collect(),
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.first.len() + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    /// True for a packet of no bytes.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// The pieces, in order; their concatenation is the packet.
    pub fn parts(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.first)
            .filter(|p| !p.is_empty())
            .chain(self.rest.iter())
    }

    /// The first `n` bytes (or the whole packet if shorter) in one piece: borrowed when the
    /// first piece holds them, copied otherwise.
    pub fn head(&self, n: usize) -> Cow<'_, [u8]> {
        let n = n.min(self.len());
        if self.first.len() >= n {
            return Cow::Borrowed(&self.first[..n]);
        }
        let mut out = Vec::with_capacity(n);
        for part in self.parts() {
            let take = (n - out.len()).min(part.len());
            out.extend_from_slice(&part[..take]);
            if out.len() == n {
                break;
            }
        }
        Cow::Owned(out)
    }

    /// The bytes of the first piece (a prefix of the packet; empty only for an empty packet).
    pub fn first_part(&self) -> &Bytes {
        &self.first
    }

    /// True when the packet is in more than one piece.
    pub fn is_split(&self) -> bool {
        !self.rest.is_empty()
    }

    /// The packet in one piece: the piece itself when there is one, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        if self.rest.is_empty() {
            return self.first.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        for part in self.parts() {
            out.extend_from_slice(part);
        }
        out.freeze()
    }

    /// Drops the first `n` bytes (at most the whole packet).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 && !self.first.is_empty() {
            if n < self.first.len() {
                let _ = self.first.split_to(n);
                return;
            }
            n -= self.first.len();
            self.first = if self.rest.is_empty() {
                Bytes::new()
            } else {
                self.rest.remove(0)
            };
        }
    }
}

impl From<Bytes> for Packet {
    fn from(bytes: Bytes) -> Self {
        Self {
            first: bytes,
            rest: Vec::new(),
        }
    }
}

impl From<&'static [u8]> for Packet {
    fn from(bytes: &'static [u8]) -> Self {
        Bytes::from_static(bytes).into()
    }
}

/// Packets are equal when their bytes are, however they are split.
impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.parts().flatten().eq(other.parts().flatten())
    }
}

impl Eq for Packet {}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: &'static [u8], at: &[usize]) -> Packet {
        let b = Bytes::from_static(bytes);
        let mut cuts = vec![0];
        cuts.extend_from_slice(at);
        cuts.push(bytes.len());
        Packet::from_parts(cuts.windows(2).map(|w| b.slice(w[0]..w[1])))
    }

    #[test]
    fn pieces_read_as_one() {
        let p = split(b"hello world", &[3, 3, 7]);
        assert_eq!(p.len(), 11);
        assert_eq!(p.parts().count(), 3, "the empty piece is dropped");
        assert_eq!(&p.to_bytes()[..], b"hello world");
        assert_eq!(p, Packet::from(&b"hello world"[..]));
        assert_ne!(p, Packet::from(&b"hello worlD"[..]));
        assert_ne!(p, Packet::from(&b"hello"[..]));
    }

    #[test]
    fn head_borrows_when_it_can_and_copies_when_it_must() {
        let p = split(b"abcdefgh", &[4]);
        assert!(matches!(p.head(3), Cow::Borrowed(b"abc")));
        assert!(matches!(p.head(6), Cow::Owned(ref v) if v == b"abcdef"));
        assert_eq!(&p.head(100)[..], b"abcdefgh");
        assert_eq!(&Packet::default().head(4)[..], b"");
    }

    #[test]
    fn advance_crosses_pieces() {
        let mut p = split(b"abcdefgh", &[2, 5]);
        p.advance(1);
        assert_eq!(&p.to_bytes()[..], b"bcdefgh");
        p.advance(3);
        assert_eq!(&p.to_bytes()[..], b"efgh");
        assert_eq!(p.parts().count(), 2);
        p.advance(10);
        assert!(p.is_empty());
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn one_piece_is_not_copied() {
        let b = Bytes::from_static(b"xyz");
        let p = Packet::from(b.clone());
        assert_eq!(p.to_bytes().as_ptr(), b.as_ptr());
    }
}
