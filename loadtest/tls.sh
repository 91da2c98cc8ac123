#!/usr/bin/env bash
# TLS termination (issue 14): 1 edgeshard shard vs 1 nginx worker pinned to the same CPU, same
# certificate (ECDSA P-256 and RSA 2048, generated with openssl req), same origin. Full and resumed
# (TLS 1.3 tickets) handshakes/s and server CPU-us per handshake, keep-alive small GETs and 1 MiB
# GETs over TLS (CPU-us per response), memory per idle TLS connection, p99 of keep-alive requests
# with and without a concurrent full-handshake flood. Medians of REPS repetitions, order rotating.
# Writes tls.md, tls.csv, tls-env.txt (+ the configs) to OUT_DIR. Bounded by BUDGET_S (default 900 s).
#   REPS=3 DURATION=4 WARMUP=1 KEYS=ecdsa,rsa CELLS=full,resumed,ka,get1m,paced,flood,idle
#   TARGETS=edgeshard,nginx (nginx alone works without a TLS-capable edgeshard build)
#   HS_THREADS=16 (tlsgen handshake threads) WRK_CONNS=50 PACED_CONNS=16 PACED_RATE=1000 IDLE_CONNS=2000
#   PROXY_CPUS= CLIENT_CPUS= IO_ENGINE=auto BASE_PORT=18400 OUT_DIR=loadtest/results/<date>-<host>
#   EDGESHARD=<path> (default: the release build, under $CARGO_TARGET_DIR when set) SKIP_BUILD=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "wrk:wrk nginx:nginx-light openssl:openssl"
TARGETS="${TARGETS:-edgeshard,nginx}"
case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$LOADTEST_DIR/tlsgen/target/release/tlsgen" ]; then
  log "cargo build --release (loadtest/tlsgen)"
  (cd "$LOADTEST_DIR/tlsgen" && timeout "${BUILD_TIMEOUT:-1200}" cargo build --release) || die "tlsgen build failed"
fi
args=(--out "${OUT_DIR:-$(default_out)}" --reps "${REPS:-3}" --duration "${DURATION:-4}" --warmup "${WARMUP:-1}"
      --keys "${KEYS:-ecdsa,rsa}" --cells "${CELLS:-full,resumed,ka,get1m,paced,flood,idle}" --targets "$TARGETS"
      --hs-threads "${HS_THREADS:-16}" --wrk-conns "${WRK_CONNS:-50}" --paced-conns "${PACED_CONNS:-16}"
      --paced-rate "${PACED_RATE:-1000}" --idle-conns "${IDLE_CONNS:-2000}" --io-engine "${IO_ENGINE:-auto}"
      --base-port "${BASE_PORT:-18400}" --name "${NAME:-tls}"
      --edgeshard "${EDGESHARD:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/edgeshard}")
[ -n "${PROXY_CPUS:-}" ] && args+=(--proxy-cpus "$PROXY_CPUS")
[ -n "${CLIENT_CPUS:-}" ] && args+=(--client-cpus "$CLIENT_CPUS")
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-900}" python3 "$LOADTEST_DIR/tls.py" "${args[@]}" "$@"
