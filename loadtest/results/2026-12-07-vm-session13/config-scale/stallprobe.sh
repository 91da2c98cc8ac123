#!/bin/bash
# usage: stallprobe.sh CONF HOST PATH NRELOADS -- 1 shard on cpu1, other threads on cpu0; latency probe during reloads
CONF=$1; H=$2; PA=$3; N=${4:-4}
LP=$(cut -d' ' -f1 /tmp/review-scale/ports.es); AP=$(cut -d' ' -f3 /tmp/review-scale/ports.es)
EXTRA="--cpus 1" /tmp/review-scale/startes.sh $CONF sp > /dev/null; P=$(cat /tmp/review-scale/sp.pid)
for t in /proc/$P/task/*; do c=$(cat $t/comm); [[ $c == shard-* ]] || taskset -pc 0 $(basename $t) >/dev/null; done
sleep ${WARM:-2}
(python3 /tmp/review-scale/latprobe.py $LP $H $PA $((N*1+3)) > /tmp/review-scale/sp-lat.txt) & sleep 1
for i in $(seq 1 $N); do curl -s -o /dev/null -m 60 -XPOST -w "reload %{http_code} %{time_total}s\n" 127.0.0.1:$AP/reload; sleep 0.3; done; wait
head -3 /tmp/review-scale/sp-lat.txt; echo "rss $(awk '/VmRSS/{print $2}' /proc/$P/status)kB"; kill $P; wait $P 2>/dev/null
