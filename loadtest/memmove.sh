#!/bin/bash
# Does the proxy copy body bytes in user space? Counts every call of glibc's memmove/memcpy (a
# uprobe on each `__memmove_*` variant; glibc's memcpy variants are the same functions) made by
# one edgeshard shard while wrk fetches a file of SIZE bytes through it for 4 s, by size. A body
# copied in user space shows up as calls of about the read size (KiBs) per request; the head,
# the futures' moves and small buffers stay in the hundreds of bytes.
# usage: memmove.sh [SIZE]   (default 65536; ES=path/to/edgeshard, default the checkout's build)
#   needs root and perf (`apt-get install linux-perf`); CONNS=50
set -euo pipefail
SIZE=${1:-65536}; CONNS=${CONNS:-50}
ES=$(realpath "${ES:-$(dirname "$0")/../target/release/edgeshard}")
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
LIBC=$(ldd "$ES" | awk '/libc.so.6/{print $3}')
mkdir -p /tmp/prof/www && cd /tmp/prof
[ -f "www/$SIZE.bin" ] || head -c "$SIZE" /dev/urandom > "www/$SIZE.bin"
cat > mm-origin.conf <<'EOC'
worker_processes 1; daemon off; pid /tmp/prof/mm-origin.pid; error_log /tmp/prof/mm-origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:18931; root /tmp/prof/www; } }
EOC
cat > mm-es.toml <<'EOC'
[[listener]]
address = "127.0.0.1:18933"
[[upstream]]
name = "origin"
backends = [{ address = "127.0.0.1:18931" }]
[[route]]
path_prefix = "/"
upstream = "origin"
EOC
perf probe -q -d 'probe_libc:*' 2>/dev/null || true
added=0
for f in $(perf probe -x "$LIBC" -F '__memmove_*unaligned_erms'); do
  perf probe -q -x "$LIBC" --add "$f len=%dx:u64" && added=$((added + 1))
done
[ "$added" -gt 0 ] || { echo "no memmove variant could be probed in $LIBC" >&2; exit 1; }
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; perf probe -q -d 'probe_libc:*' 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 0 nginx -c /tmp/prof/mm-origin.conf & PIDS+=($!)
taskset -c 1 "$ES" run --config mm-es.toml --cpus 1 > mm-es.log 2>&1 & P=$!; PIDS+=($P)
URL=http://127.0.0.1:18933/$SIZE.bin
for _ in $(seq 100); do curl -sf -o /dev/null "$URL" && break; sleep 0.1; done
taskset -c 0 wrk -t1 -c"$CONNS" -d1s "$URL" > /dev/null   # warm-up: pools and buffers filled
perf record -q -e 'probe_libc:*' -p "$P" -o mm.data -- sleep 5 2>/dev/null & R=$!
sleep 0.5
taskset -c 0 wrk -t1 -c"$CONNS" -d4s "$URL" > mm-wrk.out
wait $R
REQ=$(awk '/requests in/{print $1}' mm-wrk.out)
perf script -i mm.data 2>/dev/null | grep -o 'len=[0-9]*' | cut -d= -f2 | python3 -c '
import sys, collections
req = int(sys.argv[1]); size = int(sys.argv[2])
v = [int(x) for x in sys.stdin]
edges = [64, 256, 1024, 4096, 16384, 1 << 62]
names = ["<=64", "65-256", "257-1024", "1025-4096", "4097-16384", ">16384"]
c = collections.Counter(next(n for e, n in zip(edges, names) if x <= e) for x in v)
print(f"{size}-byte responses, {req} requests while recording (the probes slow the shard)")
print(f"memmove/memcpy calls: {len(v)} ({len(v) / req:.1f} per request), "
      f"{sum(v)} bytes ({sum(v) / req:.0f} per request), largest {max(v) if v else 0}")
print("| size | calls | per request |\n|---|---|---|")
for n in names:
    print(f"| {n} | {c[n]} | {c[n] / req:.2f} |")
' "$REQ" "$SIZE"
