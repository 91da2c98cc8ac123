#!/bin/bash
# usage: stallprobe.sh CONF HOST PATH NRELOADS [ALTCONF]
# 1 shard pinned to CPU 1 (--cpus 1), every other edgeshard thread moved to CPU 0, one
# sequential keep-alive client (latprobe.py); N POST /reload (alternating CONF and ALTCONF
# if given, copied over $W/sp.toml). Prints each reload's time and latprobe's summary (max =
# the shard's worst stall). PERF=1: perf record -e cpu-clock --call-graph dwarf on the shard
# thread during the reloads ($W/sp.perf.data). BIN= the binary.
W=${W:-/tmp/rsw}
CONF=$1; H=$2; PA=$3; N=${4:-4}; ALT=${5:-$1}
read LP TLSP AP rest < $W/ports
cp $CONF $W/sp.toml
EXTRA="--cpus 1" $W/startes.sh $W/sp.toml sp > $W/sp.ready; P=$(cat $W/sp.pid)
(sleep ${LIFE:-600}; kill $P 2>/dev/null) & WD=$!
SHARD=""
for t in /proc/$P/task/*; do c=$(cat $t/comm); if [[ $c == shard-* ]]; then SHARD=$(basename $t); else taskset -pc 0 $(basename $t) >/dev/null; fi; done
sleep ${WARM:-2}
# RT=1 (default): the shard thread and the client at SCHED_FIFO 10 (client on CPU 0), so other
# users' compile jobs on this shared 2-core host add nothing; the stall is then the shard's own work.
if [ "${RT:-1}" = 1 ]; then chrt -f -p 10 $SHARD; RTC="taskset -c 0 chrt -f 10"; fi
# late threads (prober tasks, dns) moved too
for t in /proc/$P/task/*; do c=$(cat $t/comm); [[ $c == shard-* ]] || taskset -pc 0 $(basename $t) >/dev/null 2>&1; done
DUR=$((N*${PER:-2}+4))
($RTC python3 $W/latprobe.py $LP $H $PA $DUR $W/sp-lat.all > $W/sp-lat.txt) & LPID=$!
if [ -n "$PERF" ]; then perf record -q -e cpu-clock -F ${PERF_F:-2000} --call-graph dwarf,16384 -t $SHARD -o $W/sp.perf.data -- sleep $((DUR-1)) 2>/dev/null & PP=$!; fi
sleep 1.5
: > $W/sp-reloads.txt
for i in $(seq 1 $N); do
  if (( i % 2 == 1 )); then cp $ALT $W/sp.toml; else cp $CONF $W/sp.toml; fi
  t0=$(date +%s.%N)
  curl -s -o /dev/null -m 60 -XPOST -w "reload %{http_code} %{time_total}s\n" 127.0.0.1:$AP/reload
  echo "$t0 $(date +%s.%N)" >> $W/sp-reloads.txt
  sleep ${GAP:-1}
done
wait $LPID
[ -n "$PERF" ] && wait $PP
cat $W/sp-lat.txt; python3 $W/stalls.py $W/sp-lat.all $W/sp-reloads.txt; echo "rss $(awk '/VmRSS/{print $2}' /proc/$P/status)kB"
grep -o 'configuration reloaded.*' $W/sp.out $W/sp.err | head -20
kill $P; kill $WD 2>/dev/null; wait $P 2>/dev/null
