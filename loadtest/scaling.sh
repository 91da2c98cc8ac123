#!/usr/bin/env bash
# Scaling matrix: edgeshard with 1,2,4,8 shards vs nginx with 1,2,4,8 workers, on a bigger host.
# For each count S that fits (S proxy CPUs + at least S CPUs left for wrk/origin), runs run.sh with
# SHARDS=S PROXY_CPUS=<S cpus> CLIENT_CPUS=<the rest> into $OUT_DIR/shards-S, then writes
# $OUT_DIR/scaling.md (+ scaling.png).
#   COUNTS="1 2 4 8"  CELLS=ka50,ka256,close,post64k,get64k (default; idle10k and hosts1000 are per-core
#   properties)  DURATION/REPS/... as for run.sh   OUT_DIR=loadtest/results/<date>-<host>-scaling
#   PROXY_FIRST_CPU=0: proxies get CPUs [PROXY_FIRST_CPU, +S), clients get every other CPU.
#   ALLOW_OVERLAP=1 runs counts that do not fit (numbers then include interference).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NCPU=$(nproc)
COUNTS=${COUNTS:-"1 2 4 8"}
export CELLS=${CELLS:-ka50,ka256,close,post64k,get64k}
export TARGETS=${TARGETS:-edgeshard,nginx}
OUT_DIR=${OUT_DIR:-$(default_out scaling)}
FIRST=${PROXY_FIRST_CPU:-0}
mkdir -p "$OUT_DIR"

# build once, then skip in the per-count runs
case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
case ",$TARGETS," in *,floor,*) build_floor ;; esac
export SKIP_BUILD=1

dirs=()
for S in $COUNTS; do
  if [ $((FIRST + S)) -gt "$NCPU" ] || { [ $((NCPU - S)) -lt "$S" ] && [ "${ALLOW_OVERLAP:-0}" != 1 ]; }; then
    log "skip S=$S: needs $S proxy CPUs and >= $S client/origin CPUs, host has $NCPU"
    continue
  fi
  proxy=$(seq -s, "$FIRST" $((FIRST + S - 1)))
  client=$(for c in $(seq 0 $((NCPU - 1))); do case ",$proxy," in *,$c,*) ;; *) printf '%s,' "$c";; esac; done)
  client=${client%,}
  [ -n "$client" ] || client=$proxy
  log "=== S=$S proxy CPUs $proxy, client/origin CPUs $client"
  SHARDS=$S PROXY_CPUS=$proxy CLIENT_CPUS=$client OUT_DIR="$OUT_DIR/shards-$S" \
    "$LOADTEST_DIR/run.sh" "$@" || log "S=$S failed (continuing)"
  dirs+=("$OUT_DIR/shards-$S")
done
[ ${#dirs[@]} -gt 0 ] || die "no shard count fits on $NCPU CPUs (set ALLOW_OVERLAP=1 to force)"
PY="$(pick_python)"
timeout 120 "$PY" "$LOADTEST_DIR/driver.py" scaling --out "$OUT_DIR" "${dirs[@]}"
log "done: $OUT_DIR/scaling.md"
