#!/usr/bin/env bash
# Splice vs copy in upgraded tunnels: edgeshard with `splice = "off"` and with the default
# (bulk tunnel directions spliced), N connections upgraded to a backend that streams as fast
# as it can; proxy CPU-us per MiB moved and MiB/s, order rotating per repetition. Writes
# tunnel.md and tunnel.csv to OUT_DIR. Bounded by BUDGET_S (default 900 s).
#   REPS=3 DURATION=8 WARMUP=1 CONNS=1,8,64 SHARDS=1 PROXY_CPUS= CLIENT_CPUS= IO_ENGINE=auto
#   OUT_DIR=loadtest/results/<date>-<host> VARIANTS=copy,splice
#   EDGESHARD=<path> (default: the release build, under $CARGO_TARGET_DIR when set)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_edgeshard
args=(--out "${OUT_DIR:-$(default_out)}" --reps "${REPS:-3}" --duration "${DURATION:-8}"
      --warmup "${WARMUP:-1}" --conns "${CONNS:-1,8,64}" --shards "${SHARDS:-1}"
      --io-engine "${IO_ENGINE:-auto}" --base-port "${BASE_PORT:-18300}" --variants "${VARIANTS:-copy,splice}"
      --edgeshard "${EDGESHARD:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/edgeshard}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-900}" python3 "$LOADTEST_DIR/tunnel.py" "${args[@]}" "$@"
