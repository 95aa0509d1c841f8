//! Transport settings: windows, timeouts, frame limits, datagram sizes.

use std::sync::Arc;
use std::time::Duration;

use quic_dist_core::limits::DEFAULT_MAX_FRAME;
use quic_dist_core::stream_map::MAX_DATA_STREAMS;

/// Data streams per direction unless configured.
pub const DEFAULT_STREAMS: usize = 8;

/// Receive window of one stream unless configured, bytes.
pub const DEFAULT_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// The smallest UDP payload every QUIC path must carry (RFC 9000, section 14): the size of the
/// first datagrams, and the size path MTU discovery falls back to on a black hole.
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// UDP payload one send may carry in all, segmented or not: Linux refuses a UDP send whose
/// total exceeds 65535 bytes of IP packet with `EMSGSIZE`. IPv4: 65535 - 20 IP header - 8 UDP
/// header. (IPv6 allows 8 bytes more.)
pub(crate) const MAX_SEGMENTED_SEND: usize = 65_535 - 20 - 8;

/// Largest UDP payload per datagram at which a segmentation offload (GSO) batch of 10, quinn's
/// own batch, still fits one `sendmsg`.
///
/// quinn-udp takes the kernel's refusal of a larger send ([`MAX_SEGMENTED_SEND`]) for a failed
/// MTU probe and drops it silently: a batch that large loses all its datagrams, and after a few
/// such loss bursts quinn's black-hole detector resets the path to [`MIN_UDP_PAYLOAD`] for the
/// cooldown. quinn 0.11 does not cap a batch's total size; the endpoint now bounds every send
/// by it (`direct::udp`, `segments_per_send`), so larger datagrams would only mean fewer per
/// send, but this bound is kept where it was set: 65507 / 10 = 6550.
pub const GSO_SAFE_UDP_PAYLOAD: u16 = (MAX_SEGMENTED_SEND / 10) as u16;

/// Largest UDP payload towards loopback peers, unless configured lower: one datagram nearly fills
/// a `sendmsg` on `lo` (MTU 65536; at most 65507 bytes of payload over IPv4, 65488 over IPv6).
///
/// Above [`GSO_SAFE_UDP_PAYLOAD`] such connections send without segmentation offload: one 65 KB
/// datagram per send moves as many bytes per system call as a full GSO batch of ten 6.5 KB ones,
/// with a tenth of the QUIC packets (headers, encryption calls, acknowledgements, loss-detection
/// records). Measured with `examples/throughput.rs`: 1.1 GB/s and 1.7 s/GB against 0.7 GB/s and
/// 2.6 s/GB.
pub const LOOPBACK_UDP_PAYLOAD: u16 = 65_000;

/// How long path MTU discovery waits after a suspected black hole before probing up again
/// (quinn's default is 60 s). Bursts of congestion loss of full-size packets can look like a
/// black hole; a wrong guess then costs 1200-byte datagrams (about twice the CPU per byte) until
/// the next search, while a real black hole costs only a few lost probe packets per search.
pub const MTU_BLACK_HOLE_COOLDOWN: Duration = Duration::from_secs(10);

/// The QUIC idle timeout unless configured, and the one used when the configured one is too
/// large for QUIC.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest a network peer may hold back an acknowledgement (QUIC's `max_ack_delay`), asked
/// of it with the ACK frequency extension (both ends are quinn). The default, 25 ms, is part of
/// every probe timeout: a lost packet that nothing follows (a ping, the last packet of a
/// message) waited 26.5 ms to be sent again on a link with a 100 µs round trip (the bench's
/// round-trip p99 under 1% loss; 6.4 ms with 5 ms, 2.3 with 1), and under 5% loss the fault
/// tests' small messages moved at 49 k/s against TCP distribution's 151 k (134 k against 122
/// k with 5 ms, 174 k against 101 k with 1). 1 ms, the smallest the extension allows, moves
/// the probe deadline so often that the timer thread woke about 20 times as much in a
/// ping-pong, and round trips between two namespaces without loss took longer (p50 67-99 µs
/// against 62-79); with 5 ms they did not (59-71 against 60-95). Not towards loopback peers
/// (see [`TransportOptions::for_loopback`]).
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(5);

/// quinn's initial congestion window for CUBIC and NewReno (RFC 9002's 14 720 bytes).
const LOSS_BASED_INITIAL_WINDOW: u64 = 14_720;

/// The congestion controller of each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC, as Linux TCP: backs off on every loss and fills the bottleneck's buffer.
    ///
    /// The default, also towards the network: with bulk data both ways over a rate-limited
    /// link the two directions share it evenly, which quinn's BBR does not do.
    #[default]
    Cubic,
    /// BBR (quinn's, marked experimental there): paces sending at the measured bottleneck rate;
    /// a random loss is not taken for congestion, so lossy links stay fuller (1 MiB messages,
    /// 1% of the packets lost both ways between two namespaces, one datagram per packet:
    /// 179-331 MB/s against 115-199 with CUBIC, three alternating pairs; over a routed path,
    /// `bench/routed_loss.sh`, 279-290 against 106-135). But with bulk data both ways over a
    /// rate-limited link one direction falls behind: 64 MiB each way through 200 Mbit/s (2.7 s
    /// of data), the slower direction finished 0.2-1.7 s after the other (CUBIC 0.1-0.3 s); when
    /// first seen, one side had all 64 MiB before the other had sent 16 (the same with one
    /// stream and with 32 MiB stream windows, so not flow control). And on loopback its pacing
    /// costs throughput (bulk 823 MB/s against 1520 with CUBIC).
    Bbr,
    /// NewReno: the classic loss-based controller.
    NewReno,
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bbr" => Ok(Self::Bbr),
            "cubic" => Ok(Self::Cubic),
            "new_reno" => Ok(Self::NewReno),
            other => Err(format!(
                "unknown congestion controller {other:?}: cubic, bbr or new_reno"
            )),
        }
    }
}

/// Settings shared by every connection of an endpoint.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Receive window of one stream, in bytes (bounds what the peer may have in flight on it).
    pub stream_window: u32,
    /// Receive window of a whole connection, in bytes. At least `streams + 1` stream windows,
    /// so that data streams stalled by a slow consumer never block the control stream.
    pub connection_window: u32,
    /// Send window of a connection, in bytes.
    pub send_window: u64,
    /// Smallest send window while small messages share the connection with bulk data (see
    /// [`quic_dist_core::in_flight`]); 0 never narrows it.
    pub mixed_window: u64,
    /// Data streams a node sends on (1: everything on the control stream, in one order).
    pub streams: usize,
    /// A connection with no packet received for this long is closed by QUIC itself (0: never,
    /// unless the peer has one). A quiet peer is pinged after a third of it, so only a peer
    /// that is gone (or cut off) gets there. Distribution ticks normally notice a dead peer
    /// first.
    pub idle_timeout: Duration,
    /// Time allowed for the QUIC handshake and the first stream of an incoming connection.
    pub handshake_timeout: Duration,
    /// Largest distribution packet accepted.
    pub max_frame: usize,
    /// Kernel buffer asked for the UDP socket, each direction, in bytes.
    pub socket_buffer: usize,
    /// UDP payload size of the first datagrams of a connection, before path MTU discovery
    /// (at least [`MIN_UDP_PAYLOAD`], which every path must carry).
    pub initial_mtu: u16,
    /// Upper bound of path MTU discovery towards peers on the network. Discovery (RFC 8899
    /// probes, DF set on the socket, black-hole detection) finds what the path carries up to
    /// this bound. quinn's default, 1452, fits Ethernet with room for IPv6 and finds it within a
    /// probe or two; raise it for jumbo-frame networks (at most [`GSO_SAFE_UDP_PAYLOAD`] with
    /// `segmentation_offload`, and at most `max_udp_payload`).
    pub mtu_upper_bound: u16,
    /// Largest UDP payload per datagram: the limit announced to peers (`max_udp_payload_size`,
    /// which bounds their discovery) and the upper bound of discovery towards loopback peers,
    /// whose path (the `lo` interface, MTU 65536) carries it. Loopback connections send without
    /// segmentation offload when it is above [`GSO_SAFE_UDP_PAYLOAD`].
    pub max_udp_payload: u16,
    /// Probe for datagrams larger than `initial_mtu` (path MTU discovery, with black-hole
    /// detection). Without it every datagram has `initial_mtu` bytes.
    pub mtu_discovery: bool,
    /// Hand the kernel several datagrams per send (Linux UDP GSO), where the kernel supports it.
    pub segmentation_offload: bool,
    /// The congestion controller.
    pub congestion: Congestion,
    /// The longest the peer may hold back an acknowledgement, asked of it with the ACK
    /// frequency extension; `None`: QUIC's default, 25 ms.
    pub max_ack_delay: Option<Duration>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: (DEFAULT_STREAMS as u32 + 1) * DEFAULT_STREAM_WINDOW,
            send_window: u64::from((DEFAULT_STREAMS as u32 + 1) * DEFAULT_STREAM_WINDOW),
            mixed_window: quic_dist_core::in_flight::MIXED_SEND_WINDOW,
            streams: DEFAULT_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            socket_buffer: 4 * 1024 * 1024,
            initial_mtu: MIN_UDP_PAYLOAD,
            mtu_upper_bound: 1452,
            max_udp_payload: LOOPBACK_UDP_PAYLOAD,
            mtu_discovery: true,
            segmentation_offload: true,
            congestion: Congestion::default(),
            max_ack_delay: Some(MAX_ACK_DELAY),
        }
    }
}

impl TransportOptions {
    /// The quinn transport configuration these settings describe.
    pub fn quinn_transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window))
            .receive_window(quinn::VarInt::from_u32(self.connection_window))
            .send_window(self.send_window)
            // The control stream is the one bidirectional stream; data streams are
            // unidirectional, opened by their sender.
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_DATA_STREAMS as u32));
        // 0: no idle timeout of our own (quinn would take 0 for an immediate one); one too
        // large for QUIC falls back to the default.
        let idle_timeout = match self.idle_timeout {
            d if d.is_zero() => None,
            d if quinn::IdleTimeout::try_from(d).is_ok() => Some(d),
            _ => Some(DEFAULT_IDLE_TIMEOUT),
        };
        t.max_idle_timeout(idle_timeout.and_then(|d| quinn::IdleTimeout::try_from(d).ok()))
            // A live peer must never be timed out: distribution ticks come every
            // net_ticktime/4 (15 s by default, 300 s with net_ticktime 1200), which may be
            // longer than the idle timeout. quinn sends a PING when nothing came from the peer
            // for a third of it, so the idle timeout ends only connections whose peer is gone.
            .keep_alive_interval(idle_timeout.map(|d| d / 3));
        t.initial_mtu(self.initial_mtu)
            .min_mtu(MIN_UDP_PAYLOAD)
            .enable_segmentation_offload(self.segmentation_offload)
            .mtu_discovery_config(self.mtu_discovery_upper_bound().map(|upper| {
                let mut mtud = quinn::MtuDiscoveryConfig::default();
                mtud.upper_bound(upper)
                    .black_hole_cooldown(MTU_BLACK_HOLE_COOLDOWN);
                mtud
            }));
        if let Some(delay) = self.max_ack_delay {
            let mut ack_frequency = quinn::AckFrequencyConfig::default();
            ack_frequency
                .max_ack_delay(Some(delay))
                // An acknowledgement at once for any packet out of order, as without the
                // extension (its default waits for two).
                .reordering_threshold(quinn::VarInt::from_u32(1));
            t.ack_frequency_config(Some(ack_frequency));
        }
        // quinn's loss-based controllers start with 14 720 bytes, less than one datagram of a
        // large initial MTU (65 000 towards loopback peers): nothing but probes could ever be
        // sent. RFC 9002 (7.2) asks for at least two datagrams. BBR starts with 240 000 bytes.
        let initial_window = u64::from(self.initial_mtu.max(MIN_UDP_PAYLOAD)) * 2;
        match self.congestion {
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::Cubic => {
                let mut c = quinn::congestion::CubicConfig::default();
                c.initial_window(initial_window.max(LOSS_BASED_INITIAL_WINDOW));
                t.congestion_controller_factory(Arc::new(c))
            }
            Congestion::NewReno => {
                let mut c = quinn::congestion::NewRenoConfig::default();
                c.initial_window(initial_window.max(LOSS_BASED_INITIAL_WINDOW));
                t.congestion_controller_factory(Arc::new(c))
            }
        };
        Arc::new(t)
    }

    /// The settings for a connection to a loopback address: datagrams of `max_udp_payload` from
    /// the start (in single sends when a GSO batch of that size would not fit one).
    ///
    /// The `lo` interface carries them, so there is nothing to discover; discovering it anyway
    /// made set-up slower: the probes (up to 65 KB each, right after the handshake) used up
    /// the initial congestion window, and the first messages waited for them (connect 35 ms
    /// instead of 19).
    ///
    /// Discovery stays on all the same, with nothing above the first size to look for: quinn's
    /// black-hole detector takes a few bursts of lost datagrams (a receive buffer overflowing
    /// under load) for a smaller path, and without discovery the connection kept the fallback
    /// size for good. Seen in a full bench run: 1306 bytes per datagram on average, bulk data at
    /// 176 MB/s instead of 2500 and 11.5 s of CPU per GB instead of 0.9. Now discovery searches
    /// back up after [`MTU_BLACK_HOLE_COOLDOWN`]. (A larger fallback than [`MIN_UDP_PAYLOAD`],
    /// quinn's `min_mtu`, would also pad the handshake's first datagrams to it: with 16 000
    /// bytes a reconnect took 0.3-0.5 ms longer.)
    ///
    /// And QUIC's default acknowledgement delay ([`MAX_ACK_DELAY`] is for network peers): a
    /// loopback path loses packets only when a receive buffer overflows, in bursts that the
    /// packet count finds, while a short delay's timers wake the timer thread more often (with
    /// 1 ms, 4 675-5 617 wake-ups per 30 000 round trips against 223-257, and a p99 a fifth
    /// longer: 453-475 µs against 378-401).
    pub fn for_loopback(&self) -> Self {
        Self {
            initial_mtu: if self.mtu_discovery {
                self.max_udp_payload.max(self.initial_mtu)
            } else {
                self.initial_mtu
            },
            mtu_upper_bound: self.max_udp_payload,
            segmentation_offload: self.segmentation_offload
                && self.max_udp_payload <= GSO_SAFE_UDP_PAYLOAD,
            max_ack_delay: None,
            ..self.clone()
        }
    }

    /// Whether connections with these settings use BBR (a controller that paces and keeps its
    /// queue short by itself).
    pub fn paces(&self) -> bool {
        self.congestion == Congestion::Bbr
    }

    /// Upper bound of path MTU discovery, `None` when discovery is off or cannot go above the
    /// initial size.
    pub fn mtu_discovery_upper_bound(&self) -> Option<u16> {
        if !self.mtu_discovery {
            return None;
        }
        let mut upper = self.mtu_upper_bound.min(self.max_udp_payload);
        if self.segmentation_offload {
            upper = upper.min(GSO_SAFE_UDP_PAYLOAD);
        }
        // Equal to the first size (loopback): no probes, but a search back up after a black
        // hole (see `for_loopback`).
        (upper >= self.initial_mtu && upper > MIN_UDP_PAYLOAD).then_some(upper)
    }

    /// The quinn endpoint configuration these settings describe.
    pub fn quinn_endpoint(&self) -> quinn::EndpointConfig {
        let mut e = quinn::EndpointConfig::default();
        // quinn refuses values below 1200 (and sizes its receive buffers by this value).
        let _ = e.max_udp_payload_size(self.max_udp_payload.max(MIN_UDP_PAYLOAD));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 and UDP headers: what the kernel adds to a send's payload before its 65535 limit.
    const HEADERS: usize = 20 + 8;
    /// Datagrams quinn 0.11 puts in one GSO send at most (its `MAX_TRANSMIT_SEGMENTS`).
    const QUINN_GSO_BATCH: usize = 10;

    #[test]
    fn a_full_gso_batch_of_the_largest_datagrams_fits_one_send() {
        assert!(QUINN_GSO_BATCH * GSO_SAFE_UDP_PAYLOAD as usize + HEADERS <= 65535);
        let defaults = TransportOptions::default();
        assert_eq!(defaults.mtu_discovery_upper_bound(), Some(1452));
        let gso_loopback = TransportOptions {
            max_udp_payload: GSO_SAFE_UDP_PAYLOAD,
            ..TransportOptions::default()
        }
        .for_loopback();
        assert!(gso_loopback.segmentation_offload);
        assert_eq!(gso_loopback.initial_mtu, GSO_SAFE_UDP_PAYLOAD);
        let jumbo = TransportOptions {
            mtu_upper_bound: 8972,
            ..TransportOptions::default()
        };
        assert_eq!(
            jumbo.mtu_discovery_upper_bound(),
            Some(GSO_SAFE_UDP_PAYLOAD)
        );
    }

    /// Network peers are asked to acknowledge within [`MAX_ACK_DELAY`] (ACK frequency
    /// extension), loopback peers keep QUIC's default.
    #[test]
    fn network_peers_get_the_short_acknowledgement_delay_and_loopback_peers_the_default() {
        let network = TransportOptions::default();
        assert_eq!(network.max_ack_delay, Some(MAX_ACK_DELAY));
        let asked = format!("{:?}", network.quinn_transport());
        assert!(
            asked.contains(&format!("max_ack_delay: Some({MAX_ACK_DELAY:?})")),
            "{asked}"
        );
        let loopback = network.for_loopback();
        assert_eq!(loopback.max_ack_delay, None);
        let asked = format!("{:?}", loopback.quinn_transport());
        assert!(asked.contains("ack_frequency_config: None"), "{asked}");
    }

    #[test]
    fn loopback_peers_get_single_datagrams_of_nearly_64k() {
        let loopback = TransportOptions::default().for_loopback();
        assert!(!loopback.segmentation_offload);
        // From the first datagram after the handshake: nothing left to discover.
        assert_eq!(loopback.initial_mtu, LOOPBACK_UDP_PAYLOAD);
        // Discovery is on with nothing above the first size: no probes, but after a suspected
        // black hole it searches back up from the fallback size.
        assert_eq!(
            loopback.mtu_discovery_upper_bound(),
            Some(LOOPBACK_UDP_PAYLOAD)
        );
        // Fits one IPv6 datagram on lo (MTU 65536), the stricter of the two families.
        assert!(usize::from(LOOPBACK_UDP_PAYLOAD) + 40 + 8 <= 65536);
        // Towards the network, offload stays on and discovery stops at Ethernet sizes.
        let defaults = TransportOptions::default();
        assert!(defaults.segmentation_offload);
        assert_eq!(defaults.mtu_discovery_upper_bound(), Some(1452));
    }

    #[test]
    fn discovery_bounds() {
        let no_gso = TransportOptions {
            max_udp_payload: 65527,
            segmentation_offload: false,
            ..TransportOptions::default()
        };
        assert_eq!(no_gso.mtu_discovery_upper_bound(), Some(1452));
        assert_eq!(no_gso.for_loopback().initial_mtu, 65527);
        // The announced limit caps the network bound too.
        let small = TransportOptions {
            max_udp_payload: 1400,
            ..TransportOptions::default()
        };
        assert_eq!(small.mtu_discovery_upper_bound(), Some(1400));
        let off = TransportOptions {
            mtu_discovery: false,
            ..TransportOptions::default()
        };
        assert_eq!(off.for_loopback().mtu_discovery_upper_bound(), None);
        assert_eq!(off.for_loopback().initial_mtu, MIN_UDP_PAYLOAD);
        let nothing_to_find = TransportOptions {
            max_udp_payload: 1200,
            ..TransportOptions::default()
        };
        assert_eq!(nothing_to_find.mtu_discovery_upper_bound(), None);
        // quinn rejects an endpoint limit below 1200; it is raised, not dropped.
        let tiny = TransportOptions {
            max_udp_payload: 500,
            ..TransportOptions::default()
        };
        assert_eq!(tiny.quinn_endpoint().get_max_udp_payload_size(), 1200);
        // The transport configuration builds for every combination.
        assert_eq!(TransportOptions::default().congestion, Congestion::Cubic);
        assert!(!TransportOptions::default().paces());
        assert_eq!(
            TransportOptions {
                congestion: Congestion::Bbr,
                ..TransportOptions::default()
            }
            .for_loopback()
            .congestion,
            Congestion::Bbr
        );
        for congestion in ["bbr", "cubic", "new_reno"] {
            let o = TransportOptions {
                congestion: congestion.parse().unwrap(),
                ..TransportOptions::default()
            };
            let _ = o.quinn_transport();
        }
        assert!("vegas".parse::<Congestion>().unwrap_err().contains("vegas"));
        for o in [
            no_gso,
            small,
            off,
            nothing_to_find,
            tiny,
            TransportOptions::default(),
        ] {
            let _ = o.quinn_transport();
            let _ = o.for_loopback().quinn_transport();
        }
    }
}
