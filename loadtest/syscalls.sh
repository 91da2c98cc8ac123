#!/usr/bin/env bash
# Syscalls per request: strace -c -f attached (by PID, every thread) to edgeshard and to nginx
# (master + workers) while h2load --h1 sends exactly N, then 2N, keep-alive GETs;
# (count(2N) - count(N)) / N removes attach/startup noise. Bounded: each h2load <= 300 s,
# whole script <= BUDGET_S (default 900 s).
#   REQUESTS=20000 CONNS=16 TARGETS=edgeshard,nginx[,floor] SHARDS=1 PROXY_CPUS= CLIENT_CPUS=
#   IO_ENGINE=auto OUT_DIR=loadtest/results/<date>-<host>
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "strace:strace h2load:nghttp2-client nginx:nginx"
TARGETS=${TARGETS:-edgeshard,nginx}
case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
case ",$TARGETS," in *,floor,*) build_floor ;; esac
PY="$(pick_python)"
args=(syscalls --out "${OUT_DIR:-$(default_out)}" --targets "$TARGETS" --requests "${REQUESTS:-20000}"
      --conns "${CONNS:-16}" --shards "${SHARDS:-1}" --io-engine "${IO_ENGINE:-auto}" --base-port "${BASE_PORT:-18090}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-900}" "$PY" "$LOADTEST_DIR/driver.py" "${args[@]}" "$@"
