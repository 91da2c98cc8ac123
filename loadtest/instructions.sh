#!/usr/bin/env bash
# User-space instructions per request: edgeshard (1 shard) and nginx (1 worker, master_process off)
# each started under valgrind --tool=callgrind, serve exactly N then (fresh process) 2N keep-alive
# GETs from h2load --h1, stop with SIGTERM; (Ir(2N) - Ir(N)) / N. Slow (valgrind is ~50x):
# bounded by TIMEOUT per h2load (default 300 s) and BUDGET_S overall (default 1500 s).
#   REQUESTS=5000 CONNS=16 TARGETS=edgeshard,nginx[,floor] IO_ENGINE=epoll OUT_DIR=...
# IO_ENGINE defaults to epoll: valgrind 3.19 treats io_uring_enter as non-blocking and the whole
# process (valgrind runs one thread at a time) freezes while a shard waits in it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "valgrind:valgrind h2load:nghttp2-client nginx:nginx"
TARGETS=${TARGETS:-edgeshard,nginx}
case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
case ",$TARGETS," in *,floor,*) build_floor ;; esac
PY="$(pick_python)"
args=(instructions --out "${OUT_DIR:-$(default_out)}" --targets "$TARGETS" --requests "${REQUESTS:-5000}"
      --conns "${CONNS:-16}" --io-engine "${IO_ENGINE:-epoll}" --timeout "${TIMEOUT:-300}" --base-port "${BASE_PORT:-18100}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-1500}" "$PY" "$LOADTEST_DIR/driver.py" "${args[@]}" "$@"
