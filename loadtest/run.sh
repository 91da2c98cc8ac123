#!/usr/bin/env bash
# edgeshard vs nginx (vs haproxy if asked, vs floor relay, vs direct-to-origin) benchmark matrix.
# See loadtest/README.md for every option. Quick reference (env vars):
#   DURATION=10 REPS=3 WARMUP=2 SHARDS=1 PROXY_CPUS=<last SHARDS cpus> CLIENT_CPUS=<the others>
#   ORIGIN_CPUS=<CLIENT_CPUS> CELLS=ka50,ka256,close,post1k,post64k,get64k,get1m,hosts1000,idle10k,rate
#   TARGETS=edgeshard,nginx,floor (optional: haproxy, e.g. TARGETS=edgeshard,nginx,haproxy,floor)
#   FLOOR_CELLS=ka50,ka256 DIRECT=1 IO_ENGINE=auto IDLE_CONNS=10000
#   RATE_LOADS=50,80 RATE_CONNS=50 RATE_BASE=<measured: nginx ka50 req/s>
#   OUT_DIR=loadtest/results/<date>-<host> BASE_PORT=18080 (haproxy: +4) KEEPALIVE=1024 SKIP_BUILD=0 FRESH=0
# Extra arguments are passed to driver.py matrix (e.g. --keep-tmp).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(uname -s)" = Linux ] || die "Linux only (/proc, taskset, io_uring)"
ensure_pkgs "wrk:wrk nginx:nginx taskset:util-linux"
command -v cargo >/dev/null || die "cargo not found (install rustup / Rust toolchain)"
PY="$(pick_python)"

NCPU=$(nproc)
SHARDS=${SHARDS:-1}
DURATION=${DURATION:-10}
REPS=${REPS:-3}
WARMUP=${WARMUP:-2}
OUT_DIR=${OUT_DIR:-$(default_out)}
CELLS=${CELLS:-ka50,ka256,close,post1k,post64k,get64k,get1m,hosts1000,idle10k,rate}
TARGETS=${TARGETS:-edgeshard,nginx,floor}
# haproxy is optional: installed only when asked for
case ",$TARGETS," in *,haproxy,*) ensure_pkgs "haproxy:haproxy" ;; esac
FLOOR_CELLS=${FLOOR_CELLS:-ka50,ka256}
IO_ENGINE=${IO_ENGINE:-auto}
IDLE_CONNS=${IDLE_CONNS:-10000}
BASE_PORT=${BASE_PORT:-18080}
KEEPALIVE=${KEEPALIVE:-1024}
RATE_LOADS=${RATE_LOADS:-50,80}
RATE_CONNS=${RATE_CONNS:-50}

case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
case ",$TARGETS," in *,floor,*) build_floor ;; esac
case ",$CELLS," in *,rate,*) build_rategen ;; esac

# raise the soft nofile limit to the hard one (10k idle connections need ~10.5k fds each side)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

args=(matrix --out "$OUT_DIR" --shards "$SHARDS" --duration "$DURATION" --reps "$REPS" --warmup "$WARMUP"
      --cells "$CELLS" --targets "$TARGETS" --floor-cells "$FLOOR_CELLS" --io-engine "$IO_ENGINE"
      --idle-conns "$IDLE_CONNS" --base-port "$BASE_PORT" --keepalive "$KEEPALIVE"
      --rate-loads "$RATE_LOADS" --rate-conns "$RATE_CONNS")
[ -n "${RATE_BASE:-}" ] && args+=(--rate-base "$RATE_BASE")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
[ -n "${ORIGIN_CPUS:-}" ] && args+=(--origin-cpus "$ORIGIN_CPUS")
[ "${DIRECT:-1}" = 0 ] && args+=(--no-direct)
[ "${FRESH:-0}" = 1 ] && args+=(--fresh)

log "host: $NCPU CPUs; shards=$SHARDS duration=${DURATION}s reps=$REPS -> $OUT_DIR"
# the driver stops everything it started (by PID) on exit, error, SIGINT and SIGTERM;
# overall bound: generous multiple of the expected wall time
# (about 12 runs per target over the default cells; direct counts as one)
NRUNS=$(( 12 * ($(tr -cd , <<<"$TARGETS" | wc -c) + 2) )); [ "$NRUNS" -lt 48 ] && NRUNS=48
BUDGET=${BUDGET_S:-$(( 600 + (DURATION + 3) * REPS * NRUNS + WARMUP * NRUNS ))}
exec timeout --signal=TERM --kill-after=60 "$BUDGET" "$PY" "$LOADTEST_DIR/driver.py" "${args[@]}" "$@"
