//! How much unacknowledged data a connection may have on the wire: all of its window while one
//! bulk transfer has the connection to itself, about what the path needs while small messages
//! share it.
//!
//! Separate QUIC streams keep a small message from waiting behind a large one in any *stream*
//! queue, but not in the queues they share: the receiver's UDP socket buffer and the thread that
//! decrypts and delivers in arrival order. A bulk sender with a large window keeps megabytes in
//! flight, and every small message queues behind them there: on loopback, 4 MiB in flight made a
//! ping wait 3-4 ms (p50) and 10-20 ms (p99) behind an 8 MiB stream; with 256 KiB, 0.7 and
//! 3.6 ms; with 128 KiB, 0.35 and 1.7-2.1 ms (the stream then moves 600-700 MB/s instead of
//! 800-900). A bulk transfer on its own keeps the full window, which it needs for its
//! throughput.
//!
//! While small messages go beside a bulk transfer, [`InFlightPolicy`] narrows the send window
//! (QUIC's limit on unacknowledged bytes) to twice the path's bandwidth-delay product, estimated
//! from the recent send rate and the smallest round trip sampled, and never below
//! [`MIXED_SEND_WINDOW`]; on a path shorter than [`SHORT_PATH_RTT`], to that floor. On a long
//! path the estimate stays large and nothing is lost, on a short one the queue goes away.

use std::time::{Duration, Instant};

/// Bytes one stream must get in one batch to count as a bulk transfer.
pub const BULK_BATCH_BYTES: usize = 64 * 1024;

/// How long a bulk transfer counts as present after it was seen.
pub const MIXED_HOLD: Duration = Duration::from_millis(100);

/// How long small traffic counts as going on after it was seen: two small batches within it
/// narrow the window beside a bulk transfer, and it stays narrow while they keep coming. Short,
/// because the few small messages that start a transfer (a request, its answer) also come within
/// it, and the transfer then runs narrowed until it ends (a pinger beside a stream on loopback
/// sends every 0.3-3 ms).
pub const SMALL_HOLD: Duration = Duration::from_millis(20);

/// The smallest send window while small messages share the connection with a bulk transfer,
/// unless configured.
pub const MIXED_SEND_WINDOW: u64 = 128 * 1024;

/// How long after a packet loss the window is not narrowed. A path that drops packets has its
/// queue in the network, where a narrower window does not shorten it, and recovers from losses
/// slowly with few packets in flight (a ping over a 100 Mbit/s link behind a stream: 350 ms
/// p99 narrowed, 25 ms not).
pub const LOSS_HOLD: Duration = Duration::from_secs(1);

/// Queueing delay (round trip above the smallest seen) that remains after narrowing and shows
/// that the queue is in the network (a slow link's buffer), not at the receiver: the narrowed
/// window then only makes small messages wait for window space, so it is widened again.
pub const NETWORK_QUEUE: Duration = Duration::from_millis(5);

/// Round trip below which a path is the two nodes' own work (loopback, a LAN) rather than a
/// distance: its round trip is mostly the queue the narrowing is there to shorten, so the
/// window goes to the floor. (Twice the bandwidth-delay product from a loopback bulk rate,
/// 1.3 GB/s at a loaded 300 µs round trip, is 780 KB: a ping beside an 8 MiB stream then took
/// 1.9-2.2 ms p50 instead of 0.5-0.7 at 128 KiB.)
pub const SHORT_PATH_RTT: Duration = Duration::from_millis(1);

/// How long narrowing waits to take effect before the round trip is judged.
const SETTLE: Duration = Duration::from_millis(50);

/// How long the window is not narrowed again after it did not help.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Shortest interval over which the send rate is measured.
pub const RATE_INTERVAL: Duration = Duration::from_millis(10);

/// What the transport reports about the path, sampled when a batch is sent.
#[derive(Debug, Clone, Copy)]
pub struct PathSample {
    /// Bytes sent on the connection since it started.
    pub sent_bytes: u64,
    /// The current (smoothed) round-trip time.
    pub rtt: Duration,
    /// The smallest round trip sampled on the connection so far, as the transport keeps it (not
    /// smoothed: a smoothed one carries the queue of whatever was in flight when it was taken).
    pub min_rtt: Duration,
    /// Packets declared lost since the connection started.
    pub lost_packets: u64,
}

/// Decides the send window from the traffic mix; one per connection, fed every batch.
#[derive(Debug, Clone)]
pub struct InFlightPolicy {
    full: u64,
    floor: u64,
    /// Per data stream: when it last carried a bulk batch.
    bulk_at: Vec<Option<Instant>>,
    /// The last batch with small traffic on a stream without bulk.
    small_last: Option<Instant>,
    /// The last such batch that came within [`MIXED_HOLD`] of the one before it: small traffic
    /// that goes on, not a lone message.
    small_again: Option<Instant>,
    /// The narrowed window and when it was narrowed.
    narrowed: Option<(u64, Instant)>,
    /// Narrowing did not help: not again before then.
    suppressed_until: Option<Instant>,
    /// The latest smoothed round trip, and the path's smallest.
    rtt: Duration,
    min_rtt: Duration,
    /// Send rate, bytes per second, and the sample it was last measured from.
    rate: f64,
    last: Option<(Instant, u64)>,
    /// Packets lost so far, and when the count last grew.
    lost: u64,
    lost_at: Option<Instant>,
}

impl InFlightPolicy {
    /// A policy for `streams` data streams, a configured send window of `full` bytes, and at
    /// least `floor` bytes while traffic is mixed.
    pub fn new(streams: usize, full: u64, floor: u64) -> Self {
        Self {
            full,
            floor,
            bulk_at: vec![None; streams],
            small_last: None,
            small_again: None,
            narrowed: None,
            suppressed_until: None,
            rtt: Duration::ZERO,
            min_rtt: Duration::ZERO,
            rate: 0.0,
            last: None,
            lost: 0,
            lost_at: None,
        }
    }

    /// Whether [`observe`](Self::observe) wants a [`PathSample`] at `now` (at most one per
    /// [`RATE_INTERVAL`]: reading the transport's counters is not free).
    pub fn wants_sample(&self, now: Instant) -> bool {
        match self.last {
            Some((t, _)) => now.duration_since(t) >= RATE_INTERVAL,
            None => true,
        }
    }

    /// A batch put `bytes[i]` bytes on data stream `i` at `now`, with the path as `path` says
    /// (when [`wants_sample`](Self::wants_sample) asked for it). Returns the new send window
    /// when it should change.
    pub fn observe(
        &mut self,
        now: Instant,
        bytes: &[usize],
        path: Option<PathSample>,
    ) -> Option<u64> {
        if let Some(path) = path {
            self.measure(now, path);
        }
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < MIXED_HOLD);
        let going_on = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < SMALL_HOLD);
        let mut small_here = false;
        for (i, &n) in bytes.iter().enumerate() {
            let Some(at) = self.bulk_at.get_mut(i) else {
                continue;
            };
            if n >= BULK_BATCH_BYTES {
                *at = Some(now);
            } else if n > 0 && !recent(*at) {
                small_here = true;
            }
        }
        if small_here {
            if going_on(self.small_last) {
                self.small_again = Some(now);
            }
            self.small_last = Some(now);
        }
        let lossy = self
            .lost_at
            .is_some_and(|t| now.duration_since(t) < LOSS_HOLD);
        let useless = match self.narrowed {
            Some((_, at)) => {
                path.is_some()
                    && now.duration_since(at) >= SETTLE
                    && self.rtt.saturating_sub(self.min_rtt) > NETWORK_QUEUE
            }
            None => false,
        };
        if useless {
            self.suppressed_until = Some(now + RETRY_AFTER);
        }
        let suppressed = self.suppressed_until.is_some_and(|t| now < t);
        let bulk = !lossy && !suppressed && self.bulk_at.iter().any(|t| recent(*t));
        // Narrowing takes small traffic that goes on; staying narrow, any recent small batch.
        let small = match self.narrowed {
            Some(_) => going_on(self.small_last),
            None => going_on(self.small_again),
        };
        match (bulk && small, self.narrowed) {
            (true, None) => {
                let w = self.narrow_window();
                self.narrowed = Some((w, now));
                Some(w)
            }
            (false, Some(_)) => {
                self.narrowed = None;
                Some(self.full)
            }
            _ => None,
        }
    }

    /// Twice the bandwidth-delay product, within the narrow minimum and the full window; the
    /// minimum on a path whose round trip is below [`SHORT_PATH_RTT`].
    fn narrow_window(&self) -> u64 {
        let bdp = if self.min_rtt < SHORT_PATH_RTT {
            0.0
        } else {
            self.rate * self.min_rtt.as_secs_f64()
        };
        ((2.0 * bdp) as u64).max(self.floor).min(self.full)
    }

    fn measure(&mut self, now: Instant, path: PathSample) {
        if path.lost_packets > self.lost {
            self.lost = path.lost_packets;
            self.lost_at = Some(now);
        }
        self.rtt = path.rtt;
        self.min_rtt = path.min_rtt;
        match self.last {
            Some((t, sent)) if now.duration_since(t) >= RATE_INTERVAL => {
                let secs = now.duration_since(t).as_secs_f64();
                self.rate = path.sent_bytes.saturating_sub(sent) as f64 / secs;
                self.last = Some((now, path.sent_bytes));
            }
            Some(_) => {}
            None => self.last = Some((now, path.sent_bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: u64 = 36 * 1024 * 1024;
    const MIB: usize = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A path sending `mb_per_s` MB/s with a round trip of `rtt_us`, its smallest so far, at
    /// `t_ms` into the test.
    fn path(t_ms: u64, mb_per_s: u64, rtt_us: u64) -> PathSample {
        loaded_path(t_ms, mb_per_s, rtt_us, rtt_us)
    }

    /// The same with a queue: the round trip is `rtt_us`, the smallest so far `min_rtt_us`.
    fn loaded_path(t_ms: u64, mb_per_s: u64, rtt_us: u64, min_rtt_us: u64) -> PathSample {
        PathSample {
            sent_bytes: t_ms * mb_per_s * 1000,
            rtt: Duration::from_micros(rtt_us),
            min_rtt: Duration::from_micros(min_rtt_us),
            lost_packets: 0,
        }
    }

    #[test]
    fn bulk_alone_keeps_the_full_window() {
        let t0 = Instant::now();
        let mut p = InFlightPolicy::new(4, FULL, MIXED_SEND_WINDOW);
        for i in 0..50 {
            assert_eq!(
                p.observe(t0 + ms(i), &[0, MIB, 0, 0], Some(path(i, 1000, 60))),
                None
            );
        }
        // Small pieces of the same transfer (its last fragment) are not small traffic.
        for i in 50..60 {
            assert_eq!(
                p.observe(t0 + ms(i), &[0, 100, 0, 0], Some(path(i, 1000, 60))),
                None
            );
        }
        // Nor is one message now and then on another stream.
        assert_eq!(
            p.observe(t0 + ms(61), &[0, MIB, 60, 0], Some(path(61, 1000, 60))),
            None
        );
        assert_eq!(
            p.observe(t0 + ms(170), &[0, MIB, 60, 0], Some(path(170, 1000, 60))),
            None
        );
    }

    #[test]
    fn small_messages_beside_bulk_narrow_it_until_either_stops() {
        let t0 = Instant::now();
        let mut p = InFlightPolicy::new(4, FULL, MIXED_SEND_WINDOW);
        assert_eq!(
            p.observe(t0, &[0, MIB, 0, 0], Some(path(0, 1000, 60))),
            None
        );
        // Pings on another stream: narrow at the second.
        assert_eq!(
            p.observe(t0 + ms(1), &[0, MIB, 60, 0], Some(path(1, 1000, 60))),
            None
        );
        assert_eq!(
            p.observe(t0 + ms(2), &[80, 0, 0, 0], Some(path(2, 1000, 60))),
            Some(MIXED_SEND_WINDOW)
        );
        // Pings keep it narrow as long as they come; then it widens after the hold.
        for i in (10..300).step_by(10) {
            assert_eq!(
                p.observe(t0 + ms(i), &[0, MIB, 60, 0], Some(path(i, 1000, 60))),
                None
            );
        }
        assert_eq!(
            p.observe(t0 + ms(305), &[0, MIB, 0, 0], Some(path(305, 1000, 60))),
            None
        );
        assert_eq!(
            p.observe(t0 + ms(315), &[0, MIB, 0, 0], Some(path(315, 1000, 60))),
            Some(FULL)
        );
        // Pings again, then the bulk transfer ends.
        p.observe(t0 + ms(410), &[0, MIB, 60, 0], Some(path(410, 1000, 60)));
        assert!(p
            .observe(t0 + ms(411), &[0, 0, 60, 0], Some(path(411, 1000, 60)))
            .is_some());
        assert_eq!(
            p.observe(t0 + ms(450), &[0, 0, 60, 0], Some(path(450, 1000, 60))),
            None
        );
        assert_eq!(
            p.observe(t0 + ms(520), &[0, 0, 60, 0], Some(path(520, 1000, 60))),
            Some(FULL)
        );
    }

    /// The window a bulk transfer at `mb_per_s` over a round trip of `rtt_us` is narrowed to
    /// when small messages start beside it.
    fn narrowed_beside_bulk(mb_per_s: u64, rtt_us: u64) -> Option<u64> {
        let t0 = Instant::now();
        let mut p = InFlightPolicy::new(2, FULL, MIXED_SEND_WINDOW);
        for i in 0..30 {
            p.observe(t0 + ms(i), &[MIB, 0], Some(path(i, mb_per_s, rtt_us)));
        }
        p.observe(t0 + ms(30), &[MIB, 60], Some(path(30, mb_per_s, rtt_us)));
        p.observe(t0 + ms(31), &[0, 60], Some(path(31, mb_per_s, rtt_us)))
    }

    #[test]
    fn a_long_path_keeps_twice_its_bandwidth_delay_product() {
        // 100 MB/s over a 20 ms round trip: 2 MB in flight are needed.
        assert_eq!(narrowed_beside_bulk(100, 20_000), Some(4_000_000));
        // Never above the configured window.
        let t0 = Instant::now();
        let mut small = InFlightPolicy::new(2, 100_000, MIXED_SEND_WINDOW);
        small.observe(t0, &[MIB, 0], Some(path(0, 1000, 60)));
        small.observe(t0 + ms(1), &[MIB, 10], Some(path(1, 1000, 60)));
        assert_eq!(
            small.observe(t0 + ms(2), &[0, 10], Some(path(2, 1000, 60))),
            Some(100_000)
        );
    }

    #[test]
    fn a_short_path_narrows_to_the_floor_whatever_its_rate() {
        // Loopback at 1.3 GB/s with a 300 µs round trip under load: twice its bandwidth-delay
        // product would be 780 KB, most of it the receiver's queue.
        assert_eq!(narrowed_beside_bulk(1300, 300), Some(MIXED_SEND_WINDOW));
    }

    #[test]
    fn losses_keep_or_bring_back_the_full_window() {
        let t0 = Instant::now();
        let lossy = |t: u64, lost: u64| {
            Some(PathSample {
                lost_packets: lost,
                ..path(t, 12, 200)
            })
        };
        let mut p = InFlightPolicy::new(2, FULL, MIXED_SEND_WINDOW);
        p.observe(t0, &[MIB, 0], lossy(0, 0));
        assert_eq!(p.observe(t0 + ms(10), &[MIB, 60], lossy(10, 0)), None);
        assert_eq!(
            p.observe(t0 + ms(20), &[MIB, 60], lossy(20, 0)),
            Some(MIXED_SEND_WINDOW)
        );
        // A loss: back to the full window, and not narrowed again while losses are recent.
        assert_eq!(p.observe(t0 + ms(30), &[MIB, 60], lossy(30, 3)), Some(FULL));
        for t in (40..1000).step_by(10) {
            assert_eq!(p.observe(t0 + ms(t), &[MIB, 60], lossy(t, 3)), None);
        }
        assert_eq!(p.observe(t0 + ms(1030), &[MIB, 60], lossy(1030, 3)), None);
        assert_eq!(
            p.observe(t0 + ms(1040), &[MIB, 60], lossy(1040, 3)),
            Some(MIXED_SEND_WINDOW)
        );
    }

    #[test]
    fn a_queue_that_narrowing_does_not_remove_is_in_the_network_and_the_window_widens() {
        let t0 = Instant::now();
        // A slow link with a 20 ms buffer: 0.2 ms round trip idle, 20 ms under load.
        let mut p = InFlightPolicy::new(2, FULL, MIXED_SEND_WINDOW);
        p.observe(t0, &[MIB, 0], Some(path(0, 12, 200)));
        let slow = |t: u64| Some(loaded_path(t, 12, 20_000, 200));
        p.observe(t0 + ms(10), &[MIB, 60], slow(10));
        assert_eq!(
            p.observe(t0 + ms(20), &[MIB, 60], slow(20)),
            Some(MIXED_SEND_WINDOW)
        );
        assert_eq!(p.observe(t0 + ms(40), &[MIB, 60], slow(40)), None);
        assert_eq!(p.observe(t0 + ms(80), &[MIB, 60], slow(80)), Some(FULL));
        for t in (90..10_000).step_by(100) {
            assert_eq!(p.observe(t0 + ms(t), &[MIB, 60], slow(t)), None);
        }
        // On loopback the round trip falls once narrowed: it stays narrow.
        let mut lo = InFlightPolicy::new(2, FULL, MIXED_SEND_WINDOW);
        lo.observe(t0, &[MIB, 0], Some(path(0, 1000, 60)));
        let queued = |t: u64, rtt_us: u64| Some(loaded_path(t, 1000, rtt_us, 60));
        lo.observe(t0 + ms(10), &[MIB, 60], queued(10, 3000));
        assert!(lo
            .observe(t0 + ms(20), &[MIB, 60], queued(20, 3000))
            .is_some());
        for t in (30..1000).step_by(10) {
            assert_eq!(lo.observe(t0 + ms(t), &[MIB, 60], queued(t, 300)), None);
        }
    }

    #[test]
    fn small_traffic_alone_changes_nothing() {
        let t0 = Instant::now();
        let mut p = InFlightPolicy::new(2, FULL, MIXED_SEND_WINDOW);
        for i in 0..10 {
            assert_eq!(
                p.observe(t0 + ms(i), &[100, 200], Some(path(i, 1, 60))),
                None
            );
        }
    }

    #[test]
    fn the_small_messages_that_start_a_transfer_narrow_only_its_beginning() {
        let t0 = Instant::now();
        let mut p = InFlightPolicy::new(4, FULL, MIXED_SEND_WINDOW);
        // The previous transfer, then a request and its follow-up on two streams, then the
        // transfer they started on a third: narrowed at first, full once no small message
        // followed for the hold.
        p.observe(t0, &[0, 0, MIB, 0], Some(path(0, 1000, 60)));
        assert_eq!(p.observe(t0 + ms(5), &[100, 0, 0, 0], None), None);
        assert_eq!(
            p.observe(t0 + ms(6), &[0, 80, 0, 0], None),
            Some(MIXED_SEND_WINDOW)
        );
        let widened = (7..200)
            .find_map(|i| {
                p.observe(t0 + ms(i), &[0, 0, 0, MIB], Some(path(i, 1000, 60)))
                    .map(|w| (i, w))
            })
            .expect("widened");
        assert_eq!(widened, (26, FULL));
    }
}
