#!/usr/bin/env bash
# Fault scenario (issue 6): steady keep-alive GET load through edgeshard (1 shard, active HTTP
# health checks, outlier detection, retries) while backend b1 is killed and restarted twice and
# backend b2 hangs (SIGSTOP) for 5 s. Records every request's status and latency and the proxy's
# /metrics; writes fault.md, fault.json, fault.csv, fault-failures.csv, fault-metrics.csv,
# fault-metrics-end.prom, fault-edgeshard.toml and fault-edgeshard.log to OUT_DIR.
# About 45 s plus the build; bounded by BUDGET_S (default 170 s, the build is not included).
#   RATE=3000 CONNS=32 DURATION=30 WARMUP=2 SCHEDULE=5:kill:1,8:hang:2,... IO_ENGINE=auto
#   PROXY_CPUS= CLIENT_CPUS= BASE_PORT=18300 OUT_DIR=loadtest/results/<date>-<host>
#   EDGESHARD_BIN=${CARGO_TARGET_DIR:-target}/release/edgeshard  SKIP_BUILD=0
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "nginx:nginx-light taskset:util-linux"
build_edgeshard
PY="$(command -v python3 || echo /usr/bin/python3)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || PY=/usr/bin/python3
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "fault.py needs python >= 3.11 (asyncio.timeout)"
target_dir="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
case "$target_dir" in /*) ;; *) target_dir="$REPO_DIR/$target_dir" ;; esac
BIN="${EDGESHARD_BIN:-$target_dir/release/edgeshard}"
[ -x "$BIN" ] || die "no edgeshard binary at $BIN"

# the command as typed, with the variables that change the run, for fault.md
cmd=""
for v in CARGO_TARGET_DIR EDGESHARD_BIN SKIP_BUILD RATE CONNS DURATION WARMUP SCHEDULE IO_ENGINE \
         PROXY_CPUS CLIENT_CPUS BASE_PORT OUT_DIR BUDGET_S; do
  [ -n "${!v:-}" ] && cmd+="$v=${!v} "
done
cmd+="loadtest/fault.sh${*:+ $*}"

args=(--out "${OUT_DIR:-$(default_out)}" --edgeshard "$BIN" --rate "${RATE:-3000}" --conns "${CONNS:-32}"
      --duration "${DURATION:-30}" --warmup "${WARMUP:-2}" --io-engine "${IO_ENGINE:-auto}"
      --base-port "${BASE_PORT:-18300}" --command "$cmd")
[ -n "${SCHEDULE:-}" ] && args+=(--schedule "$SCHEDULE")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
log "fault scenario: $BIN"
exec timeout --signal=TERM --kill-after=20 "${BUDGET_S:-170}" "$PY" "$LOADTEST_DIR/fault.py" "${args[@]}" "$@"
