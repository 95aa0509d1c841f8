#!/usr/bin/env bash
# Where a round trip goes. Node a ping-pongs with an echo process on node b while `perf`
# records both nodes' system calls; for quic_dist and for TCP distribution the script prints
#   turnaround: from the read that returned a message to the send of the next one, on one node
#               (the carrier's work, the runtime's and the echo's or pinger's);
#   delivery:   from that send to the read that returns it on the other node (the send system
#               call, the kernel's delivery, and how soon the other node reads).
# A round trip is about two of each (bench/README.md, Measured on 2026-12-06).
#
# Needs perf (Debian: linux-perf) and the rights to trace (root). Not part of `make bench`.
# Usage: bench/turnaround.sh [ROUND_TRIPS] (default 30000)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
N="${1:-30000}"
command -v perf >/dev/null || { echo "turnaround: needs perf (apt-get install linux-perf)" >&2; exit 2; }

make -s -C "$ROOT" build
TMP="$(mktemp -d /tmp/quic_dist_turnaround.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
erlc -Werror -o "$TMP" "$HERE/bench_node.erl"
epmd -daemon >/dev/null 2>&1 || true

# turnaround CARRIER READ_EVENT SEND_SYSCALL ERL_FLAGS...
turnaround() {
  local carrier=$1 read_event=$2 send=$3
  shift 3
  local a="turn_a_$$@127.0.0.1"
  # Node a starts node b with `peer` (the same flags, given to a as plain arguments), warms
  # up, records both nodes with perf for 2 s while it ping-pongs (longer than that), stops b.
  erl -noshell -pa "$TMP" "$@" -name "$a" -setcookie turnaround -eval "
    {ok, Peer, B} = peer:start(#{name => \"turn_b_$$\", host => \"127.0.0.1\", longnames => true,
                                 connection => standard_io,
                                 args => [\"-pa\", \"$TMP\", \"-setcookie\", \"turnaround\"
                                          | init:get_plain_arguments()]}),
    pong = net_adm:ping(B),
    BPid = peer:call(Peer, bench_node, os_pid, []),
    _ = bench_node:rtt(B, 2000, 0, 10000),
    Perf = open_port({spawn_executable, os:find_executable(\"perf\")},
                     [{args, [\"record\", \"-q\", \"-e\", \"$read_event,syscalls:sys_enter_$send\",
                              \"-o\", \"$TMP/perf.data\", \"-p\", os:getpid() ++ \",\" ++ BPid,
                              \"--\", \"sleep\", \"2\"]},
                      exit_status]),
    timer:sleep(300),
    _ = bench_node:rtt(B, 0, $N, 60000),
    receive {Perf, {exit_status, _}} -> ok after 10000 -> ok end,
    peer:stop(Peer),
    halt()." -extra "$@" >"$TMP/a.log" 2>&1 || { cat "$TMP/a.log" >&2; return 1; }
  # Per node: a read that returned data (a positive result) starts a turnaround, its next send
  # ends it and starts a delivery, which the other node's next such read ends. In µs.
  perf script -i "$TMP/perf.data" -F pid,time,event,trace 2>/dev/null | awk '
    { pid = $1; t = $2; sub(":", "", t); ev = $3; r = $4 }
    ev ~ /sys_exit_/ && r !~ /^0xf/ && r != "0x0" && !(pid in read) {
      read[pid] = t
      if (sent != "" && sender != pid) { printf "delivery %.1f\n", (t - sent) * 1e6; sent = "" }
    }
    ev ~ /sys_enter_/ {
      if (pid in read) { printf "turnaround %.1f\n", (t - read[pid]) * 1e6; delete read[pid] }
      sent = t; sender = pid
    }' |
    sort -k1,1 -k2,2n | awk -v carrier="$carrier" '
    { v[$1, ++n[$1]] = $2 }
    END {
      if (n["turnaround"] == 0) { print carrier ": nothing traced"; exit 1 }
      for (k in n)
        printf "%-9s %-10s %6d   p10 %5.1f us   p50 %5.1f us   p90 %5.1f us\n", carrier, k,
               n[k], v[k, int(n[k] * 0.1) + 1], v[k, int(n[k] * 0.5) + 1], v[k, int(n[k] * 0.9) + 1]
    }'
}

turnaround quic_dist syscalls:sys_exit_recvmmsg sendmsg -pa "$ROOT/_build/quic_dist/ebin" -proto_dist quic
turnaround tcp syscalls:sys_exit_recvfrom writev
