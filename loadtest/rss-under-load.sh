#!/bin/bash
# RSS of the proxy: before, at the end of 200 connections fetching 64 KiB for 20 s, and AFTER s
# (default 5) after; and what the kernel's socket queues hold for it meanwhile.
# usage: rss-under-load.sh edgeshard|nginx   (ES=path/to/edgeshard, default the checkout's release build)
source "$(dirname "$0")/lib.sh"
ES=$(realpath "${ES:-$(dirname "$0")/../target/release/edgeshard}")
mkdir -p /tmp/prof/www && cd /tmp/prof
[ -f www/64k.bin ] || head -c 65536 /dev/urandom > www/64k.bin
prof_configs rss 18901 18903
taskset -c 0 nginx -c /tmp/prof/rss-origin.conf &
rss() { for p in "$@"; do awk '/VmRSS/{print $2}' /proc/$p/status; done | paste -sd+ | bc; }
if [ "$1" = edgeshard ]; then
  taskset -c 1 "$ES" run --config rss-es.toml --cpus 1 > rss-es.log 2>&1 & P=$!; PORT=18903; PIDS=$P
else
  cat > px.conf <<EOC
worker_processes 1; daemon off; pid /tmp/prof/px.pid; error_log /tmp/prof/px.err;
events { worker_connections 4096; }
http { access_log off; upstream o { server 127.0.0.1:18901; keepalive 1024; }
  server { listen 127.0.0.1:18904; location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffers 8 16k; } } }
EOC
  taskset -c 1 nginx -c /tmp/prof/px.conf & P=$!; PORT=18904
fi
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/64k.bin && break; sleep 0.1; done
sleep 1
[ "$1" = nginx ] && PIDS="$(cat /tmp/prof/px.pid) $(pgrep -P $(cat /tmp/prof/px.pid))"
b=$(rss $PIDS)
taskset -c 0 wrk -t1 -c200 -d20s http://127.0.0.1:$PORT/64k.bin > rss-wrk.out & W=$!
# Bytes the kernel holds for the proxy (not in its RSS): responses written but not yet read by
# the client (Send-Q of its client sockets) and responses not yet read from the origin (Recv-Q
# of its upstream sockets), sampled every 0.5 s from 5 s to 18 s; the median of each.
sample_queues() {
  sleep 5
  local stop=$((SECONDS + 13))
  while [ "$SECONDS" -lt "$stop" ]; do
    echo "$(ss -tnH state established "( sport = :$PORT )" | awk '{s += $2} END {print int(s / 1024)}')" \
      "$(ss -tnH state established "( dport = :18901 )" | awk '{s += $1} END {print int(s / 1024)}')"
    sleep 0.5
  done > rss-queues.txt
}
sample_queues & Q=$!
sleep 19; d=$(rss $PIDS); wait $W; wait $Q
sleep "${AFTER:-5}"; a=$(rss $PIDS)
med() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
sendq=$(cut -d' ' -f1 rss-queues.txt | med); recvq=$(cut -d' ' -f2 rss-queues.txt | med)
echo "$1: rps=$(grep Requests/sec rss-wrk.out | awk '{print $2}') rss_kb before=$b during=$d after${AFTER:-5}s=$a growth=$((d-b)) left=$((a-b)) kernel_kb(median) client_sendq=$sendq upstream_recvq=$recvq"
if [ "$1" = edgeshard ]; then kill $P; else kill $(cat /tmp/prof/px.pid); fi
kill $(cat /tmp/prof/rss-origin.pid); wait 2>/dev/null
