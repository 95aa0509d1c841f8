#!/usr/bin/env bash
# make demo: two nodes over QUIC on loopback (see erlang/examples/quic_dist_demo.erl).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
EX="$ROOT/_build/examples/ebin"
mkdir -p "$EX"
erlc -o "$EX" "$ROOT/erlang/examples/quic_dist_demo.erl"
export QUIC_DIST_ERL_FLAGS="$(make -s -C "$ROOT" print-erl-flags)"
epmd -daemon
cookie="demo_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# shellcheck disable=SC2086
exec erl -noshell -name demo_a@127.0.0.1 -setcookie "$cookie" $QUIC_DIST_ERL_FLAGS -pa "$EX" \
  -run quic_dist_demo run
