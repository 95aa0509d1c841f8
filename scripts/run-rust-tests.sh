#!/usr/bin/env bash
# Rust suites: the sans-IO core's unit tests and the transport's loopback tests.
# Writes _build/test-results/rust.counts as "PASSED FAILED SKIPPED".
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/_build/test-results"
mkdir -p "$OUT"
cd "$ROOT"
cargo test --workspace --release 2>&1 | tee "$OUT/rust.log"
rc=${PIPESTATUS[0]}
read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed;?$/) p += $i
      if ($(i+1) ~ /^failed;?$/) f += $i
      if ($(i+1) ~ /^ignored;?$/) s += $i
    } } END { print p+0, f+0, s+0 }' "$OUT/rust.log")
# The failed tests by name, for the runner's last lines.
grep -E '^test .* \.\.\. FAILED$' "$OUT/rust.log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' \
  > "$OUT/rust.failures"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then   # build failure counts as a failure
  failed=1
  echo "cargo test exited with status $rc before any test failed (build error?)" >> "$OUT/rust.failures"
fi
[ -s "$OUT/rust.failures" ] || rm -f "$OUT/rust.failures"
echo "$passed $failed $ignored" > "$OUT/rust.counts"
exit "$rc"
