#!/bin/bash
# Where the proxy's heap goes at its peak under rss-under-load.sh's load (200 connections fetching
# 64 KiB for 15 s, one shard or one nginx worker on CPU 1, wrk and the origin on CPU 0), by
# allocation site, with heaptrack (`apt-get install heaptrack`).
# usage: heap-under-load.sh edgeshard|nginx
#   edgeshard needs a build on the system allocator (heaptrack hooks malloc; mimalloc bypasses
#   it): `cargo build --release --features system-alloc`, then ES=path/to/that/binary.
#   OUT=dir (default /tmp/heap-under-load): the heaptrack file and the folded peak stacks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ES=$(realpath "${ES:-$(dirname "$0")/../target/release/edgeshard}")
OUT=${OUT:-/tmp/heap-under-load}
command -v heaptrack >/dev/null || { echo "heaptrack not found: apt-get install heaptrack" >&2; exit 1; }
mkdir -p "$OUT" /tmp/prof/www && cd /tmp/prof
[ -f www/64k.bin ] || head -c 65536 /dev/urandom > www/64k.bin
prof_configs heap 18911 18913
cat > heap-nginx.conf <<'EOC'
worker_processes 1; daemon off; master_process off; pid /tmp/prof/heap-nginx.pid; error_log /tmp/prof/heap-nginx.err;
events { worker_connections 4096; }
http { access_log off; upstream o { server 127.0.0.1:18911; keepalive 1024; }
  server { listen 127.0.0.1:18914; location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffers 8 16k; } } }
EOC
taskset -c 0 nginx -c /tmp/prof/heap-origin.conf & O=$!
trap 'kill $O 2>/dev/null || true' EXIT
rm -f "$OUT/$1.zst"
if [ "$1" = edgeshard ]; then
  taskset -c 1 heaptrack -o "$OUT/$1" "$ES" run --config heap-es.toml --cpus 1 > "$OUT/$1.log" 2>&1 & H=$!; PORT=18913
else
  taskset -c 1 heaptrack -o "$OUT/$1" nginx -c /tmp/prof/heap-nginx.conf > "$OUT/$1.log" 2>&1 & H=$!; PORT=18914
fi
for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/64k.bin && break; sleep 0.2; done
taskset -c 0 wrk -t1 -c200 -d15s http://127.0.0.1:$PORT/64k.bin > "$OUT/$1-wrk.out"
# the traced process itself (heaptrack's wrapper shell has the command line too)
P=$(pgrep -f "^($ES run --config heap-es.toml|nginx -c /tmp/prof/heap-nginx.conf)")
kill "$P"; wait "$H" || true
heaptrack_print -f "$OUT/$1.zst" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --print-leaks 0 -F "$OUT/$1-peak.folded" --flamegraph-cost-type peak | grep 'peak heap'
echo "requests/s: $(awk '/Requests\/sec/{print $2}' "$OUT/$1-wrk.out")"
# the peak by the program's own frames (allocator and std frames dropped), largest first
python3 - "$OUT/$1-peak.folded" <<'EOP'
import collections, sys
skip = ('_R', 'grow', 'reserve', 'realloc', 'finish', 'do_reserve', 'alloc', '__rust', 'malloc',
        'with_capacity', 'from', '<alloc', 'allocate', 'try_alloc', 'ngx_alloc', 'ngx_palloc',
        'ngx_pnalloc', 'ngx_pcalloc', 'ngx_memalign', 'posix_memalign', 'box_new', 'new<>')
agg = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(' ')
    frames = [f for f in stack.split(';')[-16:] if not f.startswith(skip)]
    agg[';'.join(frames[:4])] += int(n)
for k, v in agg.most_common(8):
    print(f"{v / 1e6:6.2f} MB  {k}")
EOP
