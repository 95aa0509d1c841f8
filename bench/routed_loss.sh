#!/usr/bin/env bash
# Bulk throughput under random packet loss over a routed path, for TCP distribution and
# quic_dist (with its default CUBIC and with BBR). Not part of `make bench`, whose namespace
# scenarios use the veth pair that issue 5 names; this is the other link of bench/README.md,
# Measured on 2026-12-06, sixth session:
#
#   sender ns --veth-- router ns --veth-- receiver ns
#
# The loss is dropped in the router's forward path, so it hits single packets on the wire, each
# way. The end hosts segment in software (no segmentation offload, as the bench's link) and
# coalesce what they receive (GRO on), as hosts with ordinary network cards do; the router's
# ports have no offloads, so it forwards and drops one packet at a time.
#
# Needs root, ip, nft and ethtool (scripts/install-deps.sh installs them).
# Usage: bench/routed_loss.sh [ROUNDS]   (default 3; each round runs every carrier once)
#   LOSS=1 (percent of packets, each way)  MIB=256 (MiB per repetition, 1 MiB messages)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
ROUNDS="${1:-3}"
LOSS="${LOSS:-1}"
MIB="${MIB:-256}"
[ "$(id -u)" = 0 ] || { echo "routed_loss: needs root (network namespaces)" >&2; exit 2; }
for tool in ip nft ethtool; do
  command -v "$tool" >/dev/null ||
    { echo "routed_loss: needs $tool (scripts/install-deps.sh installs it)" >&2; exit 2; }
done

make -s -C "$ROOT" build
QUIC_FLAGS="$(make -s -C "$ROOT" print-erl-flags)"
TMP="$(mktemp -d /tmp/quic_dist_routed.XXXXXX)"
NS_A="qdr_a_$$" NS_R="qdr_r_$$" NS_B="qdr_b_$$"
# Subnets that the test suites' namespaces (10.254.0-249.x) and the bench's do not use.
IP_A=10.254.250.1 IP_RA=10.254.250.254 IP_RB=10.254.251.254 IP_B=10.254.251.2

cleanup() {
  "$HERE/netns.sh" destroy "$NS_A" "$NS_R" "$NS_B"
  rm -rf "$TMP"
}
trap cleanup EXIT

for ns in "$NS_A" "$NS_R" "$NS_B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add qdr_a netns "$NS_A" type veth peer name qdr_ra netns "$NS_R"
ip link add qdr_rb netns "$NS_R" type veth peer name qdr_b netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev qdr_a
ip -n "$NS_R" addr add "$IP_RA/24" dev qdr_ra
ip -n "$NS_R" addr add "$IP_RB/24" dev qdr_rb
ip -n "$NS_B" addr add "$IP_B/24" dev qdr_b
for pair in "$NS_A:qdr_a" "$NS_R:qdr_ra" "$NS_R:qdr_rb" "$NS_B:qdr_b"; do
  ip -n "${pair%%:*}" link set "${pair#*:}" up
done
ip -n "$NS_A" route add default via "$IP_RA"
ip -n "$NS_B" route add default via "$IP_RB"
ip netns exec "$NS_R" sysctl -qw net.ipv4.ip_forward=1
for port in "$NS_A qdr_a on" "$NS_B qdr_b on" "$NS_R qdr_ra off" "$NS_R qdr_rb off"; do
  # shellcheck disable=SC2086
  "$HERE/netns.sh" offloads $port
done
if [ "$LOSS" != 0 ]; then
  ip netns exec "$NS_R" nft add table inet qdrouted
  ip netns exec "$NS_R" nft "add chain inet qdrouted lossy { type filter hook forward priority 0; }"
  ip netns exec "$NS_R" nft "add rule inet qdrouted lossy numgen random mod 100 < $LOSS drop"
fi
ip netns exec "$NS_A" epmd -daemon
ip netns exec "$NS_B" epmd -daemon
erlc -Werror -o "$TMP" "$HERE/bench_node.erl"

# The controller runs outside the namespaces and starts each carrier's two nodes in them with
# `peer' (control over stdin/stdout); the nodes talk over the routed path.
erl -noshell -pa "$TMP" -eval "
  Flags = #{tcp => [],
            quic => string:lexemes(\"$QUIC_FLAGS\", \" \"),
            quic_bbr => string:lexemes(\"$QUIC_FLAGS\", \" \") ++
                        [\"-quic_dist_opt\", \"congestion\", \"bbr\"]},
  Start = fun(Name, Ns, Ip, Carrier) ->
              Exec = {os:find_executable(\"ip\"), [\"netns\", \"exec\", Ns, os:find_executable(\"erl\")]},
              {ok, P, N} = peer:start(#{name => Name, host => Ip, longnames => true, exec => Exec,
                                        connection => standard_io, wait_boot => 60000,
                                        args => [\"-setcookie\", \"routed\", \"-pa\", \"$TMP\",
                                                 \"-connect_all\", \"false\", \"-kernel\", \"logger_level\", \"warning\"
                                                 | maps:get(Carrier, Flags)]}),
              {P, N}
          end,
  Rep = fun(Carrier) ->
            {PA, _} = Start(\"ra_$$\", \"$NS_A\", \"$IP_A\", Carrier),
            {PB, B} = Start(\"rb_$$\", \"$NS_B\", \"$IP_B\", Carrier),
            pong = peer:call(PA, net_adm, ping, [B], 60000),
            {module, _} = peer:call(PB, code, ensure_loaded, [bench_node]),
            _ = peer:call(PA, bench_node, bulk, [B, 1 bsl 20, 32 bsl 20], 600000),
            {S, Bytes} = peer:call(PA, bench_node, bulk, [B, 1 bsl 20, $MIB bsl 20], 600000),
            peer:stop(PA), peer:stop(PB),
            Rate = Bytes / S / 1.0e6,
            io:format(standard_error, \"~p: ~w MB/s~n\", [Carrier, round(Rate)]),
            Rate
        end,
  Carriers = [tcp, quic, quic_bbr],
  Rounds = [[{C, Rep(C)} || C <- Carriers] || _ <- lists:seq(1, $ROUNDS)],
  Median = fun(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)) end,
  io:format(\"bulk 1 MiB messages, $LOSS% loss each way in a router, ~b rounds of $MIB MiB:~n\",
            [$ROUNDS]),
  Tcp = Median([R || Round <- Rounds, {tcp, R} <- Round]),
  [begin
       Rs = [R || Round <- Rounds, {Of, R} <- Round, Of =:= C],
       io:format(\"  ~-9s median ~5w MB/s (~.2fx TCP), all: ~w~n\",
                 [C, round(Median(Rs)), Median(Rs) / Tcp, [round(R) || R <- Rs]])
   end || C <- Carriers],
  halt()."
