#!/bin/bash
# syscalls per keep-alive request of one edgeshard build: strace -c -f on the process while
# wrk -c50 -d3s fetches a 45-byte page (origin nginx on CPU 0, proxy on CPU 1).
# usage: sys.sh BINARY [PAGE]
cd /work/main && source loadtest/lib.sh
ES=$1; PAGE=${2:-small.html}
prof_configs sys 18911 18913
cd /tmp/prof
[ -f www/small.html ] || head -c 45 /dev/zero | tr '\0' a > www/small.html
[ -f www/64k.bin ] || head -c 65536 /dev/urandom > www/64k.bin
taskset -c 0 nginx -c /tmp/prof/sys-origin.conf &
taskset -c 1 "$ES" run --config sys-es.toml --cpus 1 > sys-es.log 2>&1 & P=$!
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18913/$PAGE && break; sleep 0.1; done
taskset -c 0 wrk -t1 -c50 -d2s http://127.0.0.1:18913/$PAGE > /dev/null
strace -c -f -p $P -o /tmp/prof/sys-strace.txt & S=$!
sleep 0.5
taskset -c 0 wrk -t1 -c50 -d3s http://127.0.0.1:18913/$PAGE > /tmp/prof/sys-wrk.txt
kill -INT $S; wait $S 2>/dev/null
req=$(awk '/requests in/{print $1}' /tmp/prof/sys-wrk.txt)
tot=$(awk '/ total$/{print $4}' /tmp/prof/sys-strace.txt)
echo "$(basename $ES) page=$PAGE requests=$req syscalls=$tot per_request=$(echo "scale=2; $tot/$req" | bc)"
grep -E "^ *[0-9]" /tmp/prof/sys-strace.txt | sort -k4 -n -r | head -6
kill $P; kill $(cat /tmp/prof/sys-origin.pid); wait 2>/dev/null
