//! Conversions between Erlang terms and Rust values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use quic_dist_core::shared_binaries::binary_runs;
use quic_dist_core::Packet;
use quic_dist_transport::SendBatch;

use crate::lend::{Lender, LEND_MIN};
use rustler::{Binary, Encoder, Env, NifResult, Term, TermType};

use crate::atoms;

/// `{error, Reason}` with the reason as a binary (a readable message).
pub fn error_tuple<'a>(env: Env<'a>, reason: impl std::fmt::Display) -> Term<'a> {
    (atoms::error(), reason.to_string()).encode(env)
}

/// A new Erlang binary holding a copy of `bytes`.
pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Binary<'a> {
    let mut b = rustler::types::binary::NewBinary::new(env, bytes.len());
    b.as_mut_slice().copy_from_slice(bytes);
    b.into()
}

/// A new Erlang binary holding the concatenation of `parts`: the one copy of received data.
pub fn binary_of_parts<'a, 'p>(
    env: Env<'a>,
    len: usize,
    parts: impl Iterator<Item = &'p bytes::Bytes>,
) -> Binary<'a> {
    let mut b = rustler::types::binary::NewBinary::new(env, len);
    let out = b.as_mut_slice();
    let mut at = 0;
    for part in parts {
        quic_dist_core::copy::copy(&mut out[at..at + part.len()], part);
        at += part.len();
    }
    b.into()
}

/// The packets as Erlang binaries, in order, copied once: small ones that arrived together
/// as sub-binaries of one shared binary (see [`quic_dist_core::shared_binaries`]).
pub fn packet_binaries<'a>(env: Env<'a>, packets: &[Packet]) -> Vec<Term<'a>> {
    let mut out = Vec::with_capacity(packets.len());
    let mut rest = packets;
    for run in binary_runs(packets.iter().map(Packet::len)) {
        let (these, after) = rest.split_at(run.packets);
        rest = after;
        let whole = binary_of_parts(env, run.bytes, these.iter().flat_map(Packet::parts));
        if let [only] = these {
            debug_assert_eq!(only.len(), run.bytes);
            out.push(whole.to_term(env));
            continue;
        }
        let mut at = 0;
        for packet in these {
            let sub = whole
                .make_subbinary(at, packet.len())
                .expect("a run's packets lie within its binary");
            out.push(sub.to_term(env));
            at += packet.len();
        }
    }
    out
}

/// Reads an `inet:ip_address()` tuple.
pub fn decode_ip(term: Term) -> NifResult<IpAddr> {
    if let Ok((a, b, c, d)) = term.decode::<(u8, u8, u8, u8)>() {
        return Ok(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    }
    let parts = rustler::types::tuple::get_tuple(term)?;
    if parts.len() != 8 {
        return Err(rustler::Error::BadArg);
    }
    let mut seg = [0u16; 8];
    for (s, t) in seg.iter_mut().zip(parts) {
        *s = t.decode()?;
    }
    Ok(IpAddr::V6(Ipv6Addr::from(seg)))
}

/// `{Ip, Port}` as Erlang writes it.
pub fn encode_socket_addr<'a>(env: Env<'a>, addr: SocketAddr) -> Term<'a> {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (a, b, c, d).encode(env)
        }
        IpAddr::V6(v6) => {
            let parts: Vec<Term> = v6.segments().iter().map(|s| s.encode(env)).collect();
            rustler::types::tuple::make_tuple(env, &parts)
        }
    };
    (ip, addr.port()).encode(env)
}

/// One piece of an iodata term: a binary (with its term, to lend it) or a byte.
pub enum IoPiece<'a> {
    /// A binary and the term that holds it.
    Binary(Term<'a>, Binary<'a>),
    /// A byte of a charlist.
    Byte(u8),
}

/// Appends the pieces of an iodata term (binary, byte, or possibly improper list of those) to
/// `pieces`, in order, and returns their size in bytes: one walk over the term, which the
/// packet's frame header needs before its bytes.
pub fn iodata_pieces<'a>(term: Term<'a>, pieces: &mut Vec<IoPiece<'a>>) -> NifResult<usize> {
    match term.get_type() {
        TermType::Binary => {
            let bin = Binary::from_term(term)?;
            let len = bin.len();
            pieces.push(IoPiece::Binary(term, bin));
            Ok(len)
        }
        TermType::Integer => {
            pieces.push(IoPiece::Byte(term.decode()?));
            Ok(1)
        }
        TermType::List => {
            let mut size = 0;
            let mut rest = term;
            while !rest.is_empty_list() {
                match rest.list_get_cell() {
                    Ok((head, tail)) => {
                        size += iodata_pieces(head, pieces)?;
                        rest = tail;
                    }
                    // Improper tail: must be a binary.
                    Err(_) => return Ok(size + iodata_pieces(rest, pieces)?),
                }
            }
            Ok(size)
        }
        _ => Err(rustler::Error::BadArg),
    }
}

/// Gives a packet's pieces to `batch`: large binaries lent (not copied), except the packet's
/// first bytes, which hold its distribution header; the rest copied.
pub fn give_pieces(pieces: &[IoPiece], batch: &mut SendBatch, lender: &mut Lender) {
    let mut first = true;
    for piece in pieces {
        match piece {
            IoPiece::Binary(term, bin) => {
                if !first && bin.len() >= LEND_MIN {
                    batch.lend(lender.lend(*term, bin));
                } else {
                    batch.copy(bin.as_slice());
                }
                first &= bin.is_empty();
            }
            IoPiece::Byte(byte) => {
                batch.copy(&[*byte]);
                first = false;
            }
        }
    }
}
