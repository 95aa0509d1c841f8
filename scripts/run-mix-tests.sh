#!/usr/bin/env bash
# Mix suite: `mix test` in mix_project/ (MIX_ENV=test). Builds the Mix project (its compiler
# runs cargo, reusing target/), then tests QuicDist and the Mix tasks on :peer nodes over QUIC,
# `iex -S mix` in the example application, and releases of it (bin/cluster_app daemon, rpc,
# remote, stop) in cookie and certificate mode.
# Prints ExUnit's output (its closing line last), exits non-zero on failure and writes
# _build/test-results/mix.counts as "PASSED FAILED SKIPPED".
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=scripts/test-counts.sh
. "$ROOT/scripts/test-counts.sh"
OUT="$ROOT/_build/test-results"
COUNTS="$OUT/mix.counts"
mkdir -p "$OUT"
rm -f "$COUNTS"
export PATH="$HOME/.cargo/bin:$PATH"

fail() { echo "run-mix-tests: $*" >&2; echo "0 1 0" > "$COUNTS"; exit 1; }

command -v mix >/dev/null 2>&1 || fail "mix not found (make deps installs Elixir)"
command -v cargo >/dev/null 2>&1 || fail "cargo not found (install Rust with rustup)"

epmd -daemon >/dev/null 2>&1 || true

export QUIC_DIST_TEST_COUNTS="$COUNTS"
export MIX_ENV=test
unset MIX_BUILD_PATH MIX_EXS ELIXIR_ERL_OPTIONS

cd "$ROOT/mix_project" || fail "no mix_project directory"
start=$(date +%s)
LOG="$OUT/mix.log"
# The bound is a guard only (the suite takes about a minute). :peer nodes halt when the test
# VM's pipes close; release daemons are stopped by the tests' on_exit callbacks.
timeout --kill-after=10 600 mix test 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
settle_counts run-mix-tests "$rc" "$COUNTS" "$start"
# ExUnit's closing line ("N tests, N failures, N skipped"), last, for whoever reads the tail.
closing="$(sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -E '^[0-9]+ (doctests?, )?tests?, [0-9]+ failures?' | tail -n 1)"
echo "${closing:-ExUnit printed no closing line} (counts: $passed passed, $failed failed, $skipped skipped)"
exit "$rc"
