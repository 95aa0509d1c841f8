#!/usr/bin/env bash
# quic_dist vs inet_tcp_dist vs inet_tls_dist, side by side, on this machine.
#
#   bench/run.sh                                   all carriers, all scenarios (make bench)
#   bench/run.sh --carrier quic --scenario rtt     a selection (comma lists, or repeat the flag)
#   bench/run.sh --quick                           less work per scenario (a smoke run)
#   bench/run.sh --no-netns                        skip the network-namespace scenarios
#   bench/run.sh --quic-opt "congestion cubic"     a quic_dist option for this run (repeatable)
#
# Carriers: tcp, tls, quic. Scenarios: connect, reconnect, rtt, small, bulk, hol, busy, netns.
# The table goes to stdout, progress to stderr. A full run (all carriers and scenarios, not
# --quick) writes bench/results/latest.{json,txt} and latency.svg; any other run writes
# bench/results/partial/. See bench/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
ALL_CARRIERS="tcp,tls,quic"
ALL_SCENARIOS="connect,reconnect,rtt,small,bulk,hol,busy,netns"
export PATH="$HOME/.cargo/bin:$PATH"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

carriers="" scenarios="" quick=false no_netns=false quic_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --carrier|--carriers) carriers="${carriers:+$carriers,}${2:?}"; shift 2 ;;
    --carrier=*|--carriers=*) carriers="${carriers:+$carriers,}${1#*=}"; shift ;;
    --scenario|--scenarios) scenarios="${scenarios:+$scenarios,}${2:?}"; shift 2 ;;
    --scenario=*|--scenarios=*) scenarios="${scenarios:+$scenarios,}${1#*=}"; shift ;;
    --quick) quick=true; shift ;;
    --no-netns) no_netns=true; shift ;;
    --quic-opt) quic_opts+=(-quic_dist_opt ${2:?}); full=false; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

check_list() { # NAME LIST ALLOWED
  local x
  for x in ${2//,/ }; do
    [[ ",$3," == *",$x,"* ]] || { echo "unknown $1: $x (one of $3)" >&2; exit 2; }
  done
}
full=${full:-true}
[ -n "$carriers" ] && full=false || carriers=$ALL_CARRIERS
[ -n "$scenarios" ] && full=false || scenarios=$ALL_SCENARIOS
$quick && full=false
check_list carrier "$carriers" "$ALL_CARRIERS"
check_list scenario "$scenarios" "$ALL_SCENARIOS"
# Keep the canonical order (tcp first: ratios are to tcp).
carriers=$(for c in ${ALL_CARRIERS//,/ }; do if [[ ",$carriers," == *",$c,"* ]]; then echo "$c"; fi; done | paste -sd,)
if $no_netns; then
  full=false
  scenarios=$(for s in ${scenarios//,/ }; do if [ "$s" != netns ]; then echo "$s"; fi; done | paste -sd,)
  [ -n "$scenarios" ] || { echo "nothing to run" >&2; exit 2; }
fi
want_netns=false
[[ ",$scenarios," == *",netns,"* ]] && want_netns=true

start_s=$(date +%s)
is_root=false
[ "$(id -u)" = 0 ] && is_root=true

# --- tools: gnuplot for the plot, nftables and ethtool for the loss scenario (root only) ---
apt_updated=false
apt_install() { # PACKAGE: installs it as root; returns non-zero if it could not
  $is_root || return 1
  export DEBIAN_FRONTEND=noninteractive
  if ! $apt_updated; then apt-get update -qq >&2 || return 1; apt_updated=true; fi
  echo "bench: installing $1" >&2
  apt-get install -y -qq "$1" >/dev/null 2>&1
}
plot_skip=""
if ! command -v gnuplot >/dev/null 2>&1; then
  if ! $is_root; then plot_skip="gnuplot is not installed and this is not root (apt-get install gnuplot-nox)"
  elif ! apt_install gnuplot-nox; then plot_skip="apt-get install gnuplot-nox failed"; fi
fi

netns_arg="skip:not requested"
if $want_netns; then
  if ! $is_root; then
    netns_arg="skip:not running as root"
  elif ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    netns_arg="skip:ip or tc (iproute2) missing"
  elif ! command -v nft >/dev/null 2>&1 && ! apt_install nftables; then
    netns_arg="skip:nftables missing and apt-get install nftables failed"
  else
    netns_arg="ok"
    # Without it the veth keeps its segmentation offloads (see netns.sh); the run says so.
    command -v ethtool >/dev/null 2>&1 || apt_install ethtool ||
      echo "bench: ethtool missing: the veth keeps its offloads, TCP's loss is undercounted" >&2
  fi
fi

# --- build and scratch space -----------------------------------------------------------------
quic_flags=""
if [[ ",$carriers," == *",quic,"* ]]; then
  quic_flags="$(make -s -C "$ROOT" print-erl-flags) ${quic_opts[*]}"
fi
epmd -daemon >/dev/null 2>&1 || true

TMP="$(mktemp -d /tmp/quic_dist_bench.XXXXXX)"
NS_A="qdbench_a_$$" NS_B="qdbench_b_$$"
IP_A=10.254.83.1 IP_B=10.254.83.2
netns_created=false
cleanup() {
  if $netns_created; then "$HERE/netns.sh" destroy "$NS_A" "$NS_B" || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$TMP/ebin"
erlc -Werror -o "$TMP/ebin" "$HERE"/bench_node.erl "$HERE"/bench_ctl.erl "$HERE"/bench_targets.erl

if [ "$netns_arg" = ok ]; then
  if "$HERE/netns.sh" create "$NS_A" "$NS_B" "$IP_A" "$IP_B" 2>"$TMP/netns.err"; then
    netns_created=true
    netns_arg="$NS_A,$NS_B,$IP_A,$IP_B"
    # Warnings (an offload that stayed on) go to the run's progress output.
    cat "$TMP/netns.err" >&2
  else
    netns_created=true # partly created: destroy what exists
    netns_arg="skip:ip netns setup failed: $(tr '\n' ' ' <"$TMP/netns.err")"
  fi
fi

if $full; then
  OUT="$HERE/results"; JSON="$OUT/latest.json"; TABLE="$OUT/latest.txt"; SVG="$OUT/latency.svg"
  MD="$OUT/latest.md"
else
  OUT="$HERE/results/partial"; JSON="$OUT/results.json"; TABLE="$OUT/table.txt"
  SVG="$OUT/latency.svg"; MD="$OUT/table.md"
fi
mkdir -p "$OUT"

# --- is the machine quiet? ----------------------------------------------------------------------
busy_cores() { # CPU in use over one second, in cores (user + nice + system)
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4}' /proc/stat); sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4}' /proc/stat)
  awk -v a="$a" -v b="$b" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / t}'
}
busy=$(busy_cores)
if awk -v b="$busy" 'BEGIN {exit !(b > 0.25)}'; then
  echo "bench: WARNING: other processes are using $busy cores right now: figures will be noisy" >&2
fi

# --- run ----------------------------------------------------------------------------------
# The controller's stdout carries the nodes' forwarded output: send it to stderr; the table
# is written to a file and printed at the end.
(cd "$TMP" && exec timeout 1800 erl -noshell -pa "$TMP/ebin" -s bench_ctl main -extra \
  --carriers "$carriers" --scenarios "$scenarios" --quick "$quick" \
  --tmp "$TMP" --json "$JSON.tmp" --table "$TABLE.tmp" --md "$MD.tmp" \
  --quic-flags "$quic_flags" --netns "$netns_arg" --netns-cmd "$HERE/netns.sh" 1>&2)
mv "$JSON.tmp" "$JSON"

# --- plot -----------------------------------------------------------------------------------
plot_msg=""
if [ -z "$plot_skip" ]; then
  plot_list() { (cd "$TMP/plot" && for c in ${carriers//,/ }; do
                   if [ -s "$1_$c.dat" ]; then echo "$c"; fi; done | paste -sd' '); }
  rtt_list=$(plot_list rtt)
  hol_list=$(plot_list hol)
  if [ -n "$rtt_list$hol_list" ]; then
    if gnuplot -e "dir='$TMP/plot'; out='$SVG'; rtt='$rtt_list'; hol='$hol_list'" \
         "$HERE/plot.gp" 2>"$TMP/gnuplot.err"; then
      plot_msg="plot: ${SVG#"$ROOT"/}"
    else
      plot_msg="plot: skipped: gnuplot failed: $(head -3 "$TMP/gnuplot.err" | tr '\n' ' ')"
    fi
  else
    plot_msg="plot: skipped: no latency scenario (rtt, hol) in this run"
  fi
else
  plot_msg="plot: skipped: $plot_skip"
fi

elapsed=$(( $(date +%s) - start_s ))
machine="$(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1),\
 $(free -g | awk '/^Mem:/ {print $2}') GB RAM, Linux $(uname -r),\
 OTP $(erl -noshell -eval '{ok, V} = file:read_file(filename:join([code:root_dir(), "releases",
   erlang:system_info(otp_release), "OTP_VERSION"])),
   io:format("~s (erts ~s)", [string:trim(V), erlang:system_info(version)]), halt().')"
when="$(date -u +%Y-%m-%d)"
{ echo "quic_dist benchmark: $machine, $when"; echo; cat "$TABLE.tmp"; } > "$TABLE"
{ echo "Machine: $machine; run of $when, ${elapsed} s."; echo; cat "$MD.tmp"; } > "$MD"
rm -f "$TABLE.tmp" "$MD.tmp"
cat "$TABLE"
echo
echo "results: ${JSON#"$ROOT"/}"
echo "$plot_msg"
echo "run time: ${elapsed} s"
