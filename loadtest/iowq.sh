#!/usr/bin/env bash
# Kernel worker threads under many concurrent spliced transfers (issue 7): one io_uring shard
# splicing every body with a pipe per transfer, wrk keeping CONNS GETs of a 1 MiB file in flight;
# the proxy's threads (iou-wrk ones counted apart), sockets and pipes sampled every second.
# Writes iowq.md to OUT_DIR. Needs root (raises RLIMIT_NOFILE). Bounded by BUDGET_S (300 s).
#   CONNS=10000 DURATION=20 OUT_DIR=loadtest/results/<date>-<host>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "wrk:wrk nginx:nginx-light"
build_edgeshard
PY="$(pick_python)"
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-300}" "$PY" "$LOADTEST_DIR/driver.py" iowq \
  --out "${OUT_DIR:-$(default_out)}" --conns "${CONNS:-10000}" --duration "${DURATION:-20}" \
  --base-port "${BASE_PORT:-18300}" "$@"
