#!/usr/bin/env bash
# Erlang suites (EUnit): quic_dist_unit_tests (no distribution) and quic_dist_multinode_tests
# (real BEAM nodes started with `peer', talking over QUIC; the runner VM itself is not
# distributed), quic_dist_security_tests, and quic_dist_fault_tests (loss, partitions, peer
# death in network namespaces, which need root, ip, nft and tc and are skipped otherwise; load
# and restart storms on loopback). Compiles tests/erlang/*.erl into _build/test/ebin, prints
# EUnit's verbose output, exits non-zero on failure and writes _build/test-results/erlang.counts
# as "PASSED FAILED SKIPPED" (cancelled tests and timeouts count as failed; tests that cannot
# run here, and known issues unless QUIC_DIST_TEST_KNOWN_ISSUES=1, count as skipped).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/test-counts.sh
. "$ROOT/scripts/test-counts.sh"
OUT="$ROOT/_build/test-results"
COUNTS="$OUT/erlang.counts"
TEST_EBIN="$ROOT/_build/test/ebin"
mkdir -p "$OUT" "$TEST_EBIN"
rm -f "$COUNTS"

fail() { echo "run-erlang-tests: $*" >&2; echo "0 1 0" > "$COUNTS"; exit 1; }

command -v erl >/dev/null 2>&1 || fail "erl not found (make deps installs it)"

# Builds the carrier if needed (cargo/erlc output goes to stderr); the flags are the last line.
FLAGS="$(make -s --no-print-directory -C "$ROOT" print-erl-flags | tail -n 1)" \
  || fail "make print-erl-flags failed"
[ -n "$FLAGS" ] || fail "make print-erl-flags printed nothing"
EBIN="$(awk '{ for (i = 1; i < NF; i++) if ($i == "-pa") { print $(i + 1); exit } }' <<<"$FLAGS")"
[ -d "$EBIN" ] || fail "no carrier ebin in the flags: $FLAGS"

rm -f "$TEST_EBIN"/*.beam
erlc +debug_info -pa "$EBIN" -o "$TEST_EBIN" "$ROOT"/tests/erlang/*.erl \
  || fail "compiling tests/erlang failed"

epmd -daemon >/dev/null 2>&1 || true

export QUIC_DIST_ERL_FLAGS="$FLAGS"
export QUIC_DIST_TEST_COUNTS="$COUNTS"
# The modules to run (space-separated); override to run some only, e.g.
# QUIC_DIST_ERLANG_TESTS=quic_dist_unit_tests scripts/run-erlang-tests.sh
export QUIC_DIST_ERLANG_TESTS="${QUIC_DIST_ERLANG_TESTS:-quic_dist_unit_tests quic_dist_multinode_tests quic_dist_security_tests quic_dist_streams_tests quic_dist_fault_tests}"

# The fault tests name their network namespaces after this prefix and delete them themselves;
# if this run is killed, whatever it left behind is deleted here (only namespaces of this run).
export QUIC_DIST_NETNS_PREFIX="qdf_$$"
cleanup_netns() {
  command -v ip >/dev/null 2>&1 || return 0
  local ns pids
  for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep "^${QUIC_DIST_NETNS_PREFIX}_"); do
    echo "run-erlang-tests: deleting leftover network namespace $ns" >&2
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup_netns EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
start=$(date +%s)
# The bound is a guard only (the suites take a few minutes each). Peer nodes halt when
# their control pipe closes, so a killed run leaves no node behind.
timeout --kill-after=10 1800 \
  erl -noshell -pa "$EBIN" -pa "$TEST_EBIN" -eval '
    Counts = os:getenv("QUIC_DIST_TEST_COUNTS"),
    Modules = [list_to_atom(M) || M <- string:lexemes(os:getenv("QUIC_DIST_ERLANG_TESTS"), " ")],
    Result = eunit:test(Modules,
                        [verbose, {report, {quic_dist_test_peers, [{counts_file, Counts}]}}]),
    halt(case Result of ok -> 0; _ -> 1 end).'
rc=$?
settle_counts run-erlang-tests "$rc" "$COUNTS" "$start"
echo "run-erlang-tests: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
