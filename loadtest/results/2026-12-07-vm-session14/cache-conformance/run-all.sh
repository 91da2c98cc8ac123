#!/bin/bash
# Reproduces the whole comparison on 127.0.0.1: http-cache-tests 0.4.5's origin on :18000,
# edgeshard (config edgeshard.toml) on :18002, nginx (config nginx.conf) on :18003; runs the
# suite's CLI through each proxy, then summarises. Stops only the processes it started.
#
# Prerequisites (once):
#   mkdir -p /tmp/ct-suite && cd /tmp/ct-suite && npm pack http-cache-tests@0.4.5 && \
#     tar xzf http-cache-tests-0.4.5.tgz && cd package && npm install --omit=dev
#   # bind the origin to 127.0.0.1 only (upstream listens on every address):
#   sed -i "s/^server.listen(port)$/server.listen(port, '127.0.0.1')/" server/server.mjs
#   edgeshard built: CARGO_TARGET_DIR=/tmp/ct-target cargo build --release   (or EDGESHARD=...)
#   nginx installed (apt-get install nginx); tested with 1.22.1
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=${SUITE:-/tmp/ct-suite/package}
EDGESHARD=${EDGESHARD:-/tmp/ct-target/release/edgeshard}
ENGINE=${ENGINE:-auto}
export OUTDIR=${OUTDIR:-$HERE/results}
mkdir -p "$OUTDIR" /tmp/ct-nginx
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

SUITE=$SUITE "$HERE/start-origin.sh" > "$OUTDIR/origin.log" 2>&1 & pids+=($!)
wait_port 18000
"$EDGESHARD" check --config "$HERE/edgeshard.toml" >/dev/null || exit 1
"$EDGESHARD" run --config "$HERE/edgeshard.toml" --shards 1 --io-engine "$ENGINE" > "$OUTDIR/edgeshard.stdout" 2> "$OUTDIR/edgeshard.stderr" & pids+=($!)
wait_port 18002
nginx -p /tmp/ct-nginx -c "$HERE/nginx.conf" > "$OUTDIR/nginx.stdout" 2>&1 & pids+=($!)
wait_port 18003

SUITE=$SUITE "$HERE/run-suite.sh" edgeshard http://127.0.0.1:18002
SUITE=$SUITE "$HERE/run-suite.sh" nginx http://127.0.0.1:18003
node "$HERE/summarize.mjs" "$SUITE" "$OUTDIR/edgeshard.json" "$OUTDIR/nginx.json" | tee "$OUTDIR/summary.txt"
