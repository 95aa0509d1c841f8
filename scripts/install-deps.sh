#!/usr/bin/env bash
# Installs what quic_dist needs when it is missing: Erlang/OTP (with headers for the NIF),
# Elixir, a C toolchain, and checks for cargo. Safe to run again: it only installs what is absent.
set -euo pipefail

need=()
command -v erl >/dev/null 2>&1 || need+=(erlang-nox)
command -v erlc >/dev/null 2>&1 || need+=(erlang-nox)
[ -n "$(ls /usr/lib/erlang/usr/include/erl_nif.h 2>/dev/null)" ] || need+=(erlang-dev)
[ -d /usr/lib/erlang/lib/common_test-* ] 2>/dev/null || need+=(erlang-common-test)
ls -d /usr/lib/erlang/lib/kernel-*/src >/dev/null 2>&1 || need+=(erlang-src)
command -v elixir >/dev/null 2>&1 || need+=(elixir)
command -v epmd >/dev/null 2>&1 || need+=(erlang-base)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v make >/dev/null 2>&1 || need+=(make)
# The fault tests build network namespaces with ip, tc, nft and ethtool (as root only; without them
# those tests are counted as skipped): install them when we can, never fail for them.
optional=()
command -v ip >/dev/null 2>&1 || optional+=(iproute2)
command -v tc >/dev/null 2>&1 || optional+=(iproute2)
command -v nft >/dev/null 2>&1 || optional+=(nftables)
command -v ethtool >/dev/null 2>&1 || optional+=(ethtool)
if [ "$(id -u)" = 0 ]; then need+=("${optional[@]}"); fi

if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ]; then
    echo "installing: $pkgs" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # shellcheck disable=SC2086
    apt-get install -y -qq $pkgs >&2
  else
    echo "missing packages: $pkgs" >&2
    echo "run: sudo apt-get update && sudo apt-get install -y $pkgs" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "cargo is in $HOME/.cargo/bin but not on PATH: export PATH=\$HOME/.cargo/bin:\$PATH" >&2
  else
    echo "cargo (Rust 1.80 or later) is missing: install it with rustup (https://rustup.rs)" >&2
  fi
  exit 1
fi
