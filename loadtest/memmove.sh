#!/bin/bash
# Does the proxy copy body bytes in user space? Counts every call of glibc's memmove/memcpy (a
# uprobe on each `__memmove_*` variant; glibc's memcpy variants are the same functions) made by
# one edgeshard shard while wrk fetches a file of SIZE bytes through it for 4 s, by size. A body
# copied in user space shows up as calls of about the read size (KiBs) per request; the head,
# the futures' moves and small buffers stay in the hundreds of bytes.
# usage: memmove.sh [SIZE]   (default 65536; ES=path/to/edgeshard, default the checkout's build)
#   Writes its work files under /tmp/prof.
#   needs root and perf (`apt-get install linux-perf`); CONNS=50
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SIZE=${1:-65536}; CONNS=${CONNS:-50}
ES=$(realpath "${ES:-$(dirname "$0")/../target/release/edgeshard}")
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
LIBC=$(ldd "$ES" | awk '/libc.so.6/{print $3}')
mkdir -p /tmp/prof/www && cd /tmp/prof
[ -f "www/$SIZE.bin" ] || head -c "$SIZE" /dev/urandom > "www/$SIZE.bin"
prof_configs mm 18931 18933
# Every variant glibc has (the one in use depends on the CPU), under names of our own so that
# only these probes are removed afterwards.
EVENTS=()
for f in $(perf probe -x "$LIBC" -F '__memmove_*unaligned*'); do
  ev="edgeshard_mm_${#EVENTS[@]}"
  perf probe -q -x "$LIBC" --add "$ev=$f len=%dx:u64" 2>/dev/null && EVENTS+=("probe_libc:$ev")
done
[ ${#EVENTS[@]} -gt 0 ] || { echo "no memmove variant could be probed in $LIBC" >&2; exit 1; }
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  for ev in "${EVENTS[@]}"; do perf probe -q -d "$ev" 2>/dev/null || true; done
}
trap cleanup EXIT
taskset -c 0 nginx -c /tmp/prof/mm-origin.conf & PIDS+=($!)
taskset -c 1 "$ES" run --config mm-es.toml --cpus 1 > mm-es.log 2>&1 & P=$!; PIDS+=($P)
URL=http://127.0.0.1:18933/$SIZE.bin
up=0
for _ in $(seq 100); do curl -sf -o /dev/null "$URL" && { up=1; break; }; sleep 0.1; done
[ "$up" = 1 ] || { echo "edgeshard did not answer on $URL (see /tmp/prof/mm-es.log)" >&2; exit 1; }
taskset -c 0 wrk -t1 -c"$CONNS" -d1s "$URL" > /dev/null   # warm-up: pools and buffers filled
ev_list=$(IFS=,; echo "${EVENTS[*]}")
perf record -q -e "$ev_list" -p "$P" -o mm.data -- sleep 5 2> mm-perf.err & R=$!; PIDS+=($R)
sleep 0.5
taskset -c 0 wrk -t1 -c"$CONNS" -d4s "$URL" > mm-wrk.out
wait $R || { echo "perf record failed:" >&2; cat mm-perf.err >&2; exit 1; }
REQ=$(awk '/requests in/{print $1}' mm-wrk.out)
[ -n "$REQ" ] && [ "$REQ" -gt 0 ] || { echo "wrk completed no request (mm-wrk.out)" >&2; exit 1; }
perf script -i mm.data 2>/dev/null | { grep -o 'len=[0-9]*' || true; } | cut -d= -f2 | python3 -c '
import sys, collections
req = int(sys.argv[1]); size = int(sys.argv[2])
v = [int(x) for x in sys.stdin]
if not v:
    sys.exit("no memmove/memcpy call was recorded: the probes missed the variant in use?")
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
