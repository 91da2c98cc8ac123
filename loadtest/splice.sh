#!/usr/bin/env bash
# Copy vs splice per response size (issue 7): edgeshard with `splice = "off"`, edgeshard
# splicing every Content-Length body, and nginx, on keep-alive GETs of 16 KiB, 64 KiB, 256 KiB
# and 1 MiB files; CPU-us/request and req/s, order rotating per repetition. The default
# `server.splice_min_bytes` comes from this table. Writes splice.md and splice.csv to OUT_DIR.
# Bounded by BUDGET_S (default 900 s).
#   REPS=3 DURATION=8 CELLS=get16k,get64k,get256k,get1m SHARDS=1 PROXY_CPUS= CLIENT_CPUS=
#   IO_ENGINE=auto OUT_DIR=loadtest/results/<date>-<host>
#   HOST_CC=bbr,cubic (runs everything once per host congestion control; sysctl, restored;
#   needs root)  NAME=splice (output file stem)
#   VARIANTS=splice-off,splice-all (base[:key=value,...] adds [server] keys, e.g.
#   splice-all:splice_pipe_bytes=262144)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "wrk:wrk nginx:nginx-light"
build_edgeshard
PY="$(pick_python)"
args=(splice --out "${OUT_DIR:-$(default_out)}" --reps "${REPS:-3}" --duration "${DURATION:-8}"
      --cells "${CELLS:-get16k,get64k,get256k,get1m}" --shards "${SHARDS:-1}" --io-engine "${IO_ENGINE:-auto}"
      --base-port "${BASE_PORT:-18200}" --variants "${VARIANTS:-splice-off,splice-all}"
      --host-cc "${HOST_CC:-}" --name "${NAME:-splice}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-900}" "$PY" "$LOADTEST_DIR/driver.py" "${args[@]}" "$@"
