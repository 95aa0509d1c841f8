#!/usr/bin/env bash
# Network namespaces for bench/run.sh (root only). Everything it creates lives inside the two
# namespaces it is given (created here, deleted by `destroy`): a veth pair with private
# addresses, one epmd per namespace, nftables/tc rules.
#
#   netns.sh create  NS_A NS_B IP_A IP_B
#   netns.sh cond    none|loss|rate NS_A NS_B RATE LOSS_PERCENT
#   netns.sh destroy NS_A NS_B
#   netns.sh sent    NS_A        (bytes and packets NS_A's end of the link sent so far)
#   netns.sh offloads NS DEV on|off  (DEV sends one packet per datagram or segment; GRO on|off)
set -euo pipefail

DEV_A=qdb_a
DEV_B=qdb_b
cmd=${1:?command}; shift

clear_cond() {
  local ns=$1 dev=$2
  ip netns exec "$ns" nft delete table inet qdbench >/dev/null 2>&1 || true
  ip -n "$ns" link show "$dev" >/dev/null 2>&1 || return 0
  tc -n "$ns" qdisc del dev "$dev" root >/dev/null 2>&1 || true
}

# Packets of at most one MTU leave DEV, as on a wire: no segmentation offload, UDP's included
# (`gso off` does not cover it). GRO (receive coalescing) on or off as asked. Warns if a
# segmentation offload, or GRO that should be off, stays on. Without ethtool, nothing.
wire_offloads() {
  local ns=$1 dev=$2 gro=$3
  local stays='tx-tcp-segmentation|tx-udp-segmentation|generic-segmentation-offload'
  command -v ethtool >/dev/null 2>&1 || return 0
  [ "$gro" = on ] || stays="$stays|generic-receive-offload"
  ip netns exec "$ns" ethtool -K "$dev" tso off gso off tx-udp-segmentation off gro "$gro" \
    >/dev/null 2>&1 || true
  if ip netns exec "$ns" ethtool -k "$dev" | grep -qE "^\s*($stays): on"; then
    echo "netns: $dev keeps a segmentation or receive offload on" >&2
  fi
}

case "$cmd" in
  create)
    na=$1 nb=$2 ia=$3 ib=$4
    ip netns add "$na"
    ip netns add "$nb"
    ip link add "$DEV_A" netns "$na" type veth peer name "$DEV_B" netns "$nb"
    ip -n "$na" addr add "$ia/30" dev "$DEV_A"
    ip -n "$nb" addr add "$ib/30" dev "$DEV_B"
    for ns in "$na" "$nb"; do ip -n "$ns" link set lo up; done
    ip -n "$na" link set "$DEV_A" up
    ip -n "$nb" link set "$DEV_B" up
    # Packets of at most one MTU on the link, as on a wire. With the offloads on, a TCP sender's
    # 64 KB segments and a UDP sender's GSO batches (up to 20 datagrams) cross the veth whole,
    # so the loss rule drops a whole segment or batch at a time, and the link's per-packet
    # work (veth, nftables, IP) is paid once per batch. `gso off` does not cover UDP: UDP
    # segmentation is its own feature (tx-udp-segmentation), on by default; with it left on
    # (until 2026-12-06) QUIC's batches crossed whole, 27 KB a packet on average.
    wire_offloads "$na" "$DEV_A" off
    wire_offloads "$nb" "$DEV_B" off
    # One epmd per namespace (it listens on all of the namespace's addresses).
    ip netns exec "$na" epmd -daemon
    ip netns exec "$nb" epmd -daemon
    ;;
  cond)
    what=$1 na=$2 nb=$3 rate=$4 loss=$5
    clear_cond "$na" "$DEV_A"
    clear_cond "$nb" "$DEV_B"
    case "$what" in
      none) ;;
      loss)
        # LOSS_PERCENT of the packets arriving on the veth, in each namespace: loss both ways.
        for pair in "$na:$DEV_A" "$nb:$DEV_B"; do
          ns=${pair%%:*} dev=${pair#*:}
          ip netns exec "$ns" nft add table inet qdbench
          ip netns exec "$ns" nft "add chain inet qdbench input { type filter hook input priority 0; }"
          ip netns exec "$ns" nft "add rule inet qdbench input iifname \"$dev\" numgen random mod 100 < $loss drop"
        done
        ;;
      rate)
        # A token bucket on each veth's egress: RATE each way, 20 ms of queue.
        tc -n "$na" qdisc add dev "$DEV_A" root tbf rate "$rate" burst 64kb latency 20ms
        tc -n "$nb" qdisc add dev "$DEV_B" root tbf rate "$rate" burst 64kb latency 20ms
        ;;
      *) echo "unknown condition $what" >&2; exit 2 ;;
    esac
    ;;
  sent)
    ns=$1
    ip netns exec "$ns" cat "/sys/class/net/$DEV_A/statistics/tx_bytes" \
      "/sys/class/net/$DEV_A/statistics/tx_packets" | paste -sd ' '
    ;;
  offloads)
    wire_offloads "$1" "$2" "$3"
    ;;
  destroy)
    for ns in "$@"; do
      ip netns list | grep -qw "^$ns" || continue
      # Only processes inside a namespace this script created: its epmd, and any node left.
      pids=$(ip netns pids "$ns" || true)
      if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        sleep 0.5
        pids=$(ip netns pids "$ns" || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
      fi
      ip netns del "$ns" || true
    done
    ;;
  *) echo "usage: $0 create|cond|sent|offloads|destroy ..." >&2; exit 2 ;;
esac
