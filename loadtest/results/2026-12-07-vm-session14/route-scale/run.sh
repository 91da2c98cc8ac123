#!/bin/bash
# A/B of route lookup at scale: A (2affb0f) and B (path index), 1 shard each on CPU 1, one
# nginx origin on CPU 0, wrk (1 thread, 16 connections, 5 s) on CPU 0 against each in turn.
# ROUTES=10000|2; paths /p0/x (a route) and /zzz/x (no route: 404).
set -u
A=$1; B=$2; SUF=${SUF:-}
cd /tmp/rt
mkdir -p www; echo hello > www/index.html
cat > origin.conf <<EOC
worker_processes 1; daemon off; master_process off; pid /tmp/rt/origin.pid; error_log /tmp/rt/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
       server { listen 127.0.0.1:18900; location / { return 200 "ok\n"; } } }
EOC
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
taskset -c 0 nginx -c /tmp/rt/origin.conf & pids+=($!)
taskset -c 1 $A run --config a$SUF.toml --shards 1 > a.out 2>&1 & pids+=($!)
taskset -c 1 $B run --config b$SUF.toml --shards 1 > b.out 2>&1 & pids+=($!)
for i in $(seq 100); do grep -q ready a.out && grep -q ready b.out && break; sleep 0.2; done
for path in /p0/x /zzz/x; do
  for rep in 1 2 3; do
    for side in a b; do
      port=18901; [ $side = b ] && port=18902
      r=$(taskset -c 0 wrk -t1 -c16 -d5s http://127.0.0.1:$port$path 2>&1 | awk '/Requests\/sec/ {print $2}')
      echo "$path $rep $side $r"
    done
  done
done
