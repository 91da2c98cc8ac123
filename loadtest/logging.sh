#!/usr/bin/env bash
# Access log on vs off (issue 4: throughput with logging on within 10 % of off): the same
# edgeshard config without and with `[log] access` (combined and json, to a file), on the
# ka50 cell, run back to back with the order rotating each repetition. Writes logging.md and
# logging.csv to OUT_DIR. Bounded by BUDGET_S (default 600 s).
#   REPS=3 DURATION=10 FORMATS=combined,json SHARDS=1 PROXY_CPUS= CLIENT_CPUS= IO_ENGINE=auto
#   OUT_DIR=loadtest/results/<date>-<host>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "wrk:wrk nginx:nginx-light"
build_edgeshard
PY="$(pick_python)"
args=(logging --out "${OUT_DIR:-$(default_out)}" --reps "${REPS:-3}" --duration "${DURATION:-10}"
      --formats "${FORMATS:-combined,json}" --shards "${SHARDS:-1}" --io-engine "${IO_ENGINE:-auto}"
      --base-port "${BASE_PORT:-18100}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-600}" "$PY" "$LOADTEST_DIR/driver.py" "${args[@]}" "$@"
