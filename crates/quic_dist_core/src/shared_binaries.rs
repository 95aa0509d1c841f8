//! Which received packets share one Erlang binary.
//!
//! Every binary the receiving node hands to the runtime is an allocation, and a free once the
//! last message decoded out of it is collected. With 100-byte messages from 8 senders that was
//! 8% of the receiving node's samples (`perf`: `enif_make_new_binary`), paid by the one process
//! per connection that feeds the runtime. So small packets that arrive together are copied
//! into one binary and each is passed on as a sub-binary of it, which the runtime reads in
//! place (`dist_ctrl_put_data/2` takes the bytes of a sub-binary without a copy).
//!
//! A message binary decoded out of a shared binary would keep all of it alive;
//! [`SHARED_BINARY_MAX`] bounds that to 16 KiB (the runtime copies a small message before
//! queueing it to its receiver, so a 100-byte binary received keeps 192 bytes referenced), and
//! packets above [`SHARED_PACKET_MAX`] (bulk data, where one allocation per packet costs
//! nothing next to the copy) always get a binary of their own.

/// Packets up to this size may share a binary with the packets around them.
pub const SHARED_PACKET_MAX: usize = 2048;

/// The most bytes of packets one shared binary holds.
pub const SHARED_BINARY_MAX: usize = 16 * 1024;

/// Consecutive packets that become one binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// How many packets (1 for a packet with a binary of its own).
    pub packets: usize,
    /// Their total size: the size of the binary.
    pub bytes: usize,
}

/// Splits packets, given by their sizes in arrival order, into runs of consecutive packets
/// that each become one binary: small packets together up to [`SHARED_BINARY_MAX`] bytes,
/// any other packet alone. The runs cover every packet, in order.
pub fn binary_runs(sizes: impl IntoIterator<Item = usize>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut open = false;
    for size in sizes {
        let shareable = size <= SHARED_PACKET_MAX;
        match runs.last_mut() {
            Some(run) if open && shareable && run.bytes + size <= SHARED_BINARY_MAX => {
                run.packets += 1;
                run.bytes += size;
            }
            _ => {
                runs.push(Run {
                    packets: 1,
                    bytes: size,
                });
                open = shareable;
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(packets: usize, bytes: usize) -> Run {
        Run { packets, bytes }
    }

    #[test]
    fn small_packets_in_a_row_share_one_binary() {
        assert_eq!(binary_runs([150, 150, 20, 2048]), vec![run(4, 2368)]);
    }

    #[test]
    fn a_large_packet_has_its_own_binary_and_ends_the_run_before_it() {
        assert_eq!(
            binary_runs([150, 150, 2049, 150, 65536, 65536]),
            vec![
                run(2, 300),
                run(1, 2049),
                run(1, 150),
                run(1, 65536),
                run(1, 65536)
            ]
        );
    }

    #[test]
    fn a_shared_binary_holds_at_most_its_bound() {
        let runs = binary_runs(vec![1000; 40]);
        assert_eq!(runs, vec![run(16, 16000), run(16, 16000), run(8, 8000)]);
        assert!(runs.iter().all(|r| r.bytes <= SHARED_BINARY_MAX));
    }

    #[test]
    fn the_runs_cover_every_packet_in_order() {
        let sizes: Vec<usize> = (0..500).map(|i| (i * 7919) % 5000).collect();
        let runs = binary_runs(sizes.iter().copied());
        assert_eq!(runs.iter().map(|r| r.packets).sum::<usize>(), sizes.len());
        let mut at = 0;
        for r in &runs {
            assert_eq!(r.bytes, sizes[at..at + r.packets].iter().sum::<usize>());
            if r.packets > 1 {
                assert!(sizes[at..at + r.packets]
                    .iter()
                    .all(|&s| s <= SHARED_PACKET_MAX));
                assert!(r.bytes <= SHARED_BINARY_MAX);
            }
            at += r.packets;
        }
    }

    #[test]
    fn no_packets_no_runs() {
        assert!(binary_runs([]).is_empty());
    }
}
