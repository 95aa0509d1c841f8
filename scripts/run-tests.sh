#!/usr/bin/env bash
# Runs every test suite (Rust, Erlang multi-node, Elixir) even when one fails, then prints a
# per-suite breakdown, the failed tests by name, and one summary line:
# "summary: N passed, N failed, N skipped".
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/_build/test-results"
rm -rf "$OUT"
mkdir -p "$OUT"
epmd -daemon >/dev/null 2>&1 || true

status=0
for suite in rust erlang elixir mix; do
  echo "=== $suite tests ==="
  start=$(date +%s)
  if ! "$ROOT/scripts/run-$suite-tests.sh"; then status=1; fi
  [ -f "$OUT/$suite.counts" ] || { echo "0 1 0" > "$OUT/$suite.counts"; status=1; }
  echo "=== $suite tests done in $(( $(date +%s) - start )) s ==="
done

total_p=0; total_f=0; total_s=0; parts=()
for suite in rust erlang elixir mix; do
  read -r p f s < "$OUT/$suite.counts"
  total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
  parts+=("$suite $p/$f/$s")
done
# Name what failed right above the summary: CI logs are often read from the end.
for suite in rust erlang elixir mix; do
  [ -s "$OUT/$suite.failures" ] || continue
  while IFS= read -r line; do echo "FAILED ($suite): $line"; done < "$OUT/$suite.failures"
done
echo "suites (passed/failed/skipped): $(IFS=,; echo "${parts[*]}" | sed 's/,/, /g')"
echo "summary: $total_p passed, $total_f failed, $total_s skipped"
[ "$total_f" -eq 0 ] || status=1
exit $status
