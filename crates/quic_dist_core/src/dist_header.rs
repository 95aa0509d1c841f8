//! Reading the routing facts out of a distribution packet, without decoding it.
//!
//! To spread a connection over several QUIC streams and still keep Erlang's guarantee (signals
//! from one process to another are never reordered), every packet of one sender must take the
//! same stream, and every fragment of one fragmented message too. This module finds, in the raw
//! bytes of a packet as `dist_ctrl_get_data/1` returns it, what the stream choice needs:
//!
//! - a normal packet (`131, 68, 0, Control, Message`, the atom cache being rejected): the
//!   encoded bytes of the sending process (or, for the few signals without a sender, of the
//!   receiver), located in the control tuple by the operation code;
//! - a start fragment (`131, 69, SeqId, FragId, 0, Control, ...`): the same, plus its sequence;
//! - a continuation fragment (`131, 70, SeqId, FragId, ...`): only its sequence.
//!
//! Layouts: OTP's erl_dist_protocol (control messages) and erl_ext_dist (distribution header,
//! term encodings). Anything unexpected is reported, never guessed: the caller then falls back
//! to the stream that keeps total order.

use thiserror::Error;

/// Why a packet could not be classified.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The packet ended before the part being read.
    #[error("packet truncated at byte {0}")]
    Truncated(usize),
    /// A byte that is not what the format allows there.
    #[error("unexpected byte {byte} at {at}: {what}")]
    Unexpected {
        /// Position in the packet.
        at: usize,
        /// The byte found.
        byte: u8,
        /// What was expected.
        what: &'static str,
    },
    /// The packet uses the atom cache, whose references only make sense in connection order.
    #[error("packet uses the atom cache ({0} references)")]
    AtomCache(u8),
}

/// What a packet says about where it may travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A whole message or signal; `key` is the encoded sender (or receiver, see module docs).
    Packet {
        /// Encoded term identifying the ordering domain.
        key: &'a [u8],
    },
    /// The first fragment of a fragmented message.
    FirstFragment {
        /// Fragment sequence (the same for all fragments of the message).
        seq: u64,
        /// Fragment number; counts down to 1, the last one.
        frag: u64,
        /// Encoded term identifying the ordering domain.
        key: &'a [u8],
    },
    /// A later fragment: it must follow its first fragment's stream.
    NextFragment {
        /// Fragment sequence.
        seq: u64,
        /// Fragment number; 1 is the last.
        frag: u64,
    },
}

const VERSION: u8 = 131;
const DIST_HEADER: u8 = 68;
const DIST_FRAG_HEADER: u8 = 69;
const DIST_FRAG_CONT: u8 = 70;

/// Classifies one packet.
pub fn route(packet: &[u8]) -> Result<Route<'_>, HeaderError> {
    let mut r = Reader {
        buf: packet,
        pos: 0,
    };
    r.expect(VERSION, "version 131")?;
    match r.u8()? {
        DIST_HEADER => {
            r.no_atom_cache()?;
            Ok(Route::Packet {
                key: control_key(&mut r)?,
            })
        }
        DIST_FRAG_HEADER => {
            let seq = r.u64()?;
            let frag = r.u64()?;
            r.no_atom_cache()?;
            Ok(Route::FirstFragment {
                seq,
                frag,
                key: control_key(&mut r)?,
            })
        }
        DIST_FRAG_CONT => {
            let seq = r.u64()?;
            let frag = r.u64()?;
            Ok(Route::NextFragment { seq, frag })
        }
        byte => Err(HeaderError::Unexpected {
            at: 1,
            byte,
            what: "distribution header 68, 69 or 70",
        }),
    }
}

/// The receiver of a message (the encoded pid, or the registered name for a send by name) of a
/// whole packet or first fragment; `None` for other signals, later fragments and anything
/// unreadable. Used to notice a process whose mailbox grows without bound.
pub fn receiver(packet: &[u8]) -> Option<&[u8]> {
    let mut r = control_tuple(packet).ok()?;
    tuple_arity(&mut r).ok()?;
    let position = match operation(&mut r).ok()? {
        // SEND_SENDER(_TT) {Op, From, To, ...}, SEND(_TT) {Op, Unused, To, ...}
        22 | 23 | 2 | 12 => 2,
        // REG_SEND(_TT) {Op, From, Unused, ToName, ...}
        6 | 16 => 3,
        _ => return None,
    };
    for _ in 1..position {
        r.skip_term(0).ok()?;
    }
    let start = r.pos;
    r.skip_term(0).ok()?;
    Some(&packet[start..r.pos])
}

/// True for the fragments of a fragmented message (first or later).
pub fn is_fragment(packet: &[u8]) -> bool {
    matches!(
        packet.get(1),
        Some(&DIST_FRAG_HEADER) | Some(&DIST_FRAG_CONT)
    )
}

/// Position (1-based, after the operation) of the element naming the ordering domain.
fn key_position(op: u64, arity: usize) -> usize {
    match op {
        // SEND and SEND_TT carry no sender: order by receiver.
        2 | 12 => 2,
        // SPAWN_REQUEST(_TT): {Op, ReqId, From, ...}; UNLINK_ID(_ACK): {Op, Id, From, To}.
        29 | 30 | 35 | 36 => 2,
        // SPAWN_REPLY(_TT): {Op, ReqId, To, Flags, Result}: the new process when it exists
        // (it may already be sending), else the receiver.
        31 | 32 => {
            if arity >= 5 {
                4
            } else {
                2
            }
        }
        // Everything else: {Op, From, ...}.
        _ => 1,
    }
}

fn control_key<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], HeaderError> {
    let arity = tuple_arity(r)?;
    let op = operation(r)?;
    let wanted = key_position(op, arity).min(arity - 1);
    for _ in 1..wanted {
        r.skip_term(0)?;
    }
    let start = r.pos;
    r.skip_term(0)?;
    let key = &r.buf[start..r.pos];
    // SPAWN_REPLY with an error result: fall back to the receiver.
    if (op == 31 || op == 32) && wanted == 4 && !is_pid(key) {
        let mut again = Reader { buf: r.buf, pos: 0 };
        again.pos = start_of_element(r.buf, 2)?;
        let s = again.pos;
        again.skip_term(0)?;
        return Ok(&r.buf[s..again.pos]);
    }
    Ok(key)
}

fn is_pid(term: &[u8]) -> bool {
    matches!(term.first(), Some(88) | Some(103))
}

/// Offset of element `n` (1-based after the operation) of the control tuple of `packet`.
fn start_of_element(packet: &[u8], n: usize) -> Result<usize, HeaderError> {
    let mut r = control_tuple(packet)?;
    tuple_arity(&mut r)?;
    r.skip_term(0)?; // operation
    for _ in 1..n {
        r.skip_term(0)?;
    }
    Ok(r.pos)
}

/// A reader at the control tuple of a whole packet or first fragment (after the distribution
/// header, which must not use the atom cache).
fn control_tuple(packet: &[u8]) -> Result<Reader<'_>, HeaderError> {
    let mut r = Reader {
        buf: packet,
        pos: 0,
    };
    r.expect(VERSION, "version 131")?;
    match r.u8()? {
        DIST_HEADER => {}
        DIST_FRAG_HEADER => {
            r.u64()?;
            r.u64()?;
        }
        byte => {
            return Err(HeaderError::Unexpected {
                at: 1,
                byte,
                what: "distribution header 68 or 69",
            })
        }
    }
    r.no_atom_cache()?;
    Ok(r)
}

/// Reads the header of the control tuple; its arity, at least 2 (operation and one element).
fn tuple_arity(r: &mut Reader<'_>) -> Result<usize, HeaderError> {
    let arity = match r.u8()? {
        104 => r.u8()? as usize,
        105 => r.u32()? as usize,
        byte => {
            return Err(HeaderError::Unexpected {
                at: r.pos - 1,
                byte,
                what: "control message tuple",
            })
        }
    };
    if arity < 2 {
        return Err(HeaderError::Truncated(r.pos));
    }
    Ok(arity)
}

/// Reads the operation code, the first element of the control tuple.
fn operation(r: &mut Reader<'_>) -> Result<u64, HeaderError> {
    match r.u8()? {
        97 => Ok(u64::from(r.u8()?)),
        98 => Ok(u64::from(r.u32()?)),
        byte => Err(HeaderError::Unexpected {
            at: r.pos - 1,
            byte,
            what: "operation code",
        }),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Deepest nesting accepted while skipping a term (control messages are shallow).
const MAX_DEPTH: usize = 64;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeaderError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(HeaderError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, HeaderError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HeaderError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, HeaderError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, HeaderError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), HeaderError> {
        let at = self.pos;
        match self.u8()? {
            b if b == byte => Ok(()),
            b => Err(HeaderError::Unexpected { at, byte: b, what }),
        }
    }
    fn no_atom_cache(&mut self) -> Result<(), HeaderError> {
        match self.u8()? {
            0 => Ok(()),
            n => Err(HeaderError::AtomCache(n)),
        }
    }

    /// Skips one term of the external format.
    fn skip_term(&mut self, depth: usize) -> Result<(), HeaderError> {
        if depth > MAX_DEPTH {
            return Err(HeaderError::Unexpected {
                at: self.pos,
                byte: 0,
                what: "term nested too deep",
            });
        }
        let at = self.pos;
        let tag = self.u8()?;
        match tag {
            97 => self.take(1).map(|_| ()),  // SMALL_INTEGER
            98 => self.take(4).map(|_| ()),  // INTEGER
            99 => self.take(31).map(|_| ()), // FLOAT (old)
            70 => self.take(8).map(|_| ()),  // NEW_FLOAT
            100 | 118 => {
                // ATOM, ATOM_UTF8
                let n = self.u16()? as usize;
                self.take(n).map(|_| ())
            }
            115 | 119 => {
                // SMALL_ATOM, SMALL_ATOM_UTF8
                let n = self.u8()? as usize;
                self.take(n).map(|_| ())
            }
            88 => {
                // NEW_PID: Node, ID:32, Serial:32, Creation:32
                self.skip_term(depth + 1)?;
                self.take(12).map(|_| ())
            }
            103 => {
                // PID: Node, ID:32, Serial:32, Creation:8
                self.skip_term(depth + 1)?;
                self.take(9).map(|_| ())
            }
            89 => {
                // NEW_PORT: Node, ID:32, Creation:32
                self.skip_term(depth + 1)?;
                self.take(8).map(|_| ())
            }
            120 => {
                // V4_PORT: Node, ID:64, Creation:32
                self.skip_term(depth + 1)?;
                self.take(12).map(|_| ())
            }
            102 => {
                // PORT: Node, ID:32, Creation:8
                self.skip_term(depth + 1)?;
                self.take(5).map(|_| ())
            }
            90 | 114 => {
                // NEWER_REFERENCE (Creation:32), NEW_REFERENCE (Creation:8)
                let len = self.u16()? as usize;
                self.skip_term(depth + 1)?;
                let creation = if tag == 90 { 4 } else { 1 };
                self.take(creation + 4 * len).map(|_| ())
            }
            101 => {
                // REFERENCE: Node, ID:32, Creation:8
                self.skip_term(depth + 1)?;
                self.take(5).map(|_| ())
            }
            104 | 105 => {
                let n = if tag == 104 {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                for _ in 0..n {
                    self.skip_term(depth + 1)?;
                }
                Ok(())
            }
            116 => {
                // MAP
                let n = self.u32()? as usize;
                for _ in 0..n.saturating_mul(2) {
                    self.skip_term(depth + 1)?;
                }
                Ok(())
            }
            106 => Ok(()), // NIL
            107 => {
                // STRING
                let n = self.u16()? as usize;
                self.take(n).map(|_| ())
            }
            108 => {
                // LIST: elements then tail
                let n = self.u32()? as usize;
                for _ in 0..n {
                    self.skip_term(depth + 1)?;
                }
                self.skip_term(depth + 1)
            }
            109 => {
                // BINARY
                let n = self.u32()? as usize;
                self.take(n).map(|_| ())
            }
            77 => {
                // BIT_BINARY
                let n = self.u32()? as usize;
                self.take(1 + n).map(|_| ())
            }
            110 => {
                // SMALL_BIG
                let n = self.u8()? as usize;
                self.take(1 + n).map(|_| ())
            }
            111 => {
                // LARGE_BIG
                let n = self.u32()? as usize;
                self.take(1 + n).map(|_| ())
            }
            113 => {
                // EXPORT: Module, Function, Arity
                for _ in 0..3 {
                    self.skip_term(depth + 1)?;
                }
                Ok(())
            }
            112 => {
                // NEW_FUN: Size:32 includes itself
                let size = self.u32()? as usize;
                self.take(size.saturating_sub(4)).map(|_| ())
            }
            byte => Err(HeaderError::Unexpected {
                at,
                byte,
                what: "term tag",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_terms::*;

    #[test]
    fn receivers_of_messages_are_found_and_other_signals_have_none() {
        let to = pid("b@h", 2);
        let send = packet(tuple(&[small(22), pid("a@h", 1), to.clone()]), &[97, 1]);
        assert_eq!(receiver(&send), Some(&to[..]));
        let by_name = packet(
            tuple(&[small(6), pid("a@h", 1), atom(""), atom("rex")]),
            &[],
        );
        assert_eq!(receiver(&by_name), Some(&atom("rex")[..]));
        let first = first_fragment(5, 2, tuple(&[small(22), pid("a@h", 1), to.clone()]), &[1]);
        assert_eq!(receiver(&first), Some(&to[..]));
        assert_eq!(receiver(&next_fragment(5, 1, &[2])), None);
        let link = packet(tuple(&[small(1), pid("a@h", 1), to]), &[]);
        assert_eq!(receiver(&link), None);
        assert_eq!(receiver(&[131, 68, 0, 104]), None);
    }

    #[test]
    fn send_sender_is_routed_by_its_sender() {
        let from = pid("a@h", 1);
        let p = packet(tuple(&[small(22), from.clone(), pid("b@h", 2)]), &[97, 1]);
        assert_eq!(route(&p), Ok(Route::Packet { key: &from }));
    }

    #[test]
    fn signals_from_one_process_to_others_share_a_key() {
        let from = pid("a@h", 1);
        let to_b = packet(tuple(&[small(22), from.clone(), pid("b@h", 2)]), &[]);
        let link = packet(tuple(&[small(1), from.clone(), pid("b@h", 3)]), &[]);
        let reg = packet(tuple(&[small(6), from.clone(), atom(""), atom("rex")]), &[]);
        let mon = packet(
            tuple(&[small(19), from.clone(), atom("rex"), reference("a@h")]),
            &[],
        );
        for p in [&to_b, &link, &reg, &mon] {
            assert_eq!(route(p), Ok(Route::Packet { key: &from }), "{p:?}");
        }
    }

    #[test]
    fn plain_send_has_no_sender_and_is_routed_by_receiver() {
        let to = pid("b@h", 9);
        let p = packet(tuple(&[small(2), atom(""), to.clone()]), &[]);
        assert_eq!(route(&p), Ok(Route::Packet { key: &to }));
    }

    #[test]
    fn spawn_request_is_routed_by_the_spawning_process() {
        let from = pid("a@h", 4);
        let mfa = tuple(&[atom("erlang"), atom("apply"), small(2)]);
        let opts = vec![
            108, 0, 0, 0, 1, 104, 2, 119, 4, b'l', b'i', b'n', b'k', 119, 4, b't', b'r', b'u',
            b'e', 106,
        ];
        let p = packet(
            tuple(&[
                small(29),
                reference("a@h"),
                from.clone(),
                pid("a@h", 5),
                mfa,
                opts,
            ]),
            &[106],
        );
        assert_eq!(route(&p), Ok(Route::Packet { key: &from }));
    }

    #[test]
    fn spawn_reply_follows_the_new_process_or_else_the_receiver() {
        let to = pid("b@h", 1);
        let new = pid("a@h", 77);
        let ok = packet(
            tuple(&[
                small(31),
                reference("b@h"),
                to.clone(),
                small(0),
                new.clone(),
            ]),
            &[],
        );
        assert_eq!(route(&ok), Ok(Route::Packet { key: &new }));
        let failed = packet(
            tuple(&[
                small(31),
                reference("b@h"),
                to.clone(),
                small(0),
                atom("badarg"),
            ]),
            &[],
        );
        assert_eq!(route(&failed), Ok(Route::Packet { key: &to }));
    }

    #[test]
    fn fragments_report_sequence_and_number() {
        let from = pid("a@h", 1);
        let mut first = vec![131, 69];
        first.extend_from_slice(&42u64.to_be_bytes());
        first.extend_from_slice(&3u64.to_be_bytes());
        first.push(0);
        first.extend(tuple(&[small(22), from.clone(), pid("b@h", 2)]));
        first.extend_from_slice(&[109, 0, 0, 1, 0]);
        assert_eq!(
            route(&first),
            Ok(Route::FirstFragment {
                seq: 42,
                frag: 3,
                key: &from
            })
        );
        let mut next = vec![131, 70];
        next.extend_from_slice(&42u64.to_be_bytes());
        next.extend_from_slice(&2u64.to_be_bytes());
        next.extend_from_slice(&[1, 2, 3]);
        assert_eq!(route(&next), Ok(Route::NextFragment { seq: 42, frag: 2 }));
    }

    #[test]
    fn atom_cache_truncation_and_garbage_are_errors_not_guesses() {
        assert_eq!(route(&[131, 68, 4, 0]), Err(HeaderError::AtomCache(4)));
        assert!(matches!(
            route(&[131, 68, 0, 104, 3, 97]),
            Err(HeaderError::Truncated(_))
        ));
        assert!(matches!(
            route(&[1, 2, 3]),
            Err(HeaderError::Unexpected { .. })
        ));
        assert!(matches!(route(&[]), Err(HeaderError::Truncated(0))));
        let deep: Vec<u8> = std::iter::repeat([104u8, 1]).take(200).flatten().collect();
        let mut p = vec![131, 68, 0, 104, 2, 97, 22];
        p.extend(deep);
        assert!(route(&p).is_err());
    }

    #[test]
    fn real_packet_captured_from_otp_25_with_the_atom_cache_is_refused() {
        // REG_SEND to rex as OTP 25 sent it with the atom cache on (4 cache references).
        let p = [
            131, 68, 4, 7, 148, 0, 63, 5, 117, 15, 5, 104, 101, 108, 108, 111,
        ];
        assert_eq!(route(&p), Err(HeaderError::AtomCache(4)));
    }
}
