#!/usr/bin/env bash
# Response cache and compression (issue 18): 1 edgeshard shard vs 1 nginx worker pinned to the same
# CPU, same origin. Cache hits of a 1 KiB and a 64 KiB object (edgeshard's per-shard memory cache vs
# nginx proxy_cache in a tmpfs directory): requests/s and proxy CPU-us/request, wrk -c 50; a 1 MiB JSON
# body relayed as is (id1m) and gzip level 6 (both), zstd 3 and br 4 (edgeshard): proxy CPU-us per
# MiB of input and the compression ratio. Medians of REPS repetitions, order rotating.
# Writes edge.md, edge.csv, edge-env.txt (+ the configs) to OUT_DIR. Bounded by BUDGET_S (default 600 s).
#   REPS=5 DURATION=4 WARMUP=1 CELLS=hit1k,hit64k,id1m,gzip1m,zstd1m,br1m (also gzip1m-1, gzip1m-9)
#   TARGETS=edgeshard,nginx WRK_CONNS=50 COMP_CONNS=8 PROXY_CPUS= CLIENT_CPUS= IO_ENGINE=auto
#   BASE_PORT=18600 OUT_DIR=loadtest/results/<date>-<host> NAME=edge
#   EDGESHARD=<path> (default: the release build, under $CARGO_TARGET_DIR when set) SKIP_BUILD=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "wrk:wrk nginx:nginx-light"
TARGETS="${TARGETS:-edgeshard,nginx}"
case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
args=(--out "${OUT_DIR:-$(default_out)}" --reps "${REPS:-5}" --duration "${DURATION:-4}" --warmup "${WARMUP:-1}"
      --cells "${CELLS:-hit1k,hit64k,id1m,gzip1m,zstd1m,br1m}" --targets "$TARGETS"
      --wrk-conns "${WRK_CONNS:-50}" --comp-conns "${COMP_CONNS:-8}" --io-engine "${IO_ENGINE:-auto}"
      --base-port "${BASE_PORT:-18600}" --name "${NAME:-edge}"
      --edgeshard "${EDGESHARD:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/edgeshard}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-600}" python3 "$LOADTEST_DIR/edge.py" "${args[@]}" "$@"
