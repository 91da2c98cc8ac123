#!/bin/bash
# usage: dnschurn.sh [SECONDS] -- edgeshard (BIN=, default 2 shards) on dns.toml: 2,000 upstreams, each with
# a HOST:PORT backend whose answer fakedns.py changes at every TTL (1 s, min_ttl 1s). After WARM s,
# measures over SECONDS: process CPU (utime+stime, exited dns-lookup threads included), the
# dns thread's and the shards' CPU, rebuilds ("dns: backends updated" lines), resolutions.
W=${W:-/tmp/rsw}; S=${1:-15}
read LP TLSP AP BE1 BE2 DEAD BH DNSP < $W/ports
python3 $W/fakedns.py $DNSP $((S+40)) > $W/fakedns.log 2>&1 & FD=$!
sleep 0.5
$W/startes.sh $W/dns.toml dc > $W/dc.ready; P=$(cat $W/dc.pid)
(sleep $((S+60)); kill $P 2>/dev/null) & WD=$!
sleep ${WARM:-8}
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
tcpu() { for t in /proc/$P/task/*; do c=$(cat $t/comm); { [[ $1 == dns-exact && $c == dns ]] || [[ $1 != dns-exact && $c == $1* ]]; } && awk '{s+=$14+$15} END {print s+0}' $t/stat; done | awk '{s+=$1} END {print s+0}'; }
r0=$(grep -c 'dns: backends updated' $W/dc.err $W/dc.out | awk -F: '{s+=$2} END {print s}')
q0=$(curl -s 127.0.0.1:$AP/metrics | awk '/^edgeshard_dns_resolutions_total/ {s+=$2} END {print s+0}')
p0=$(cpu $P); d0=$(tcpu dns-exact); s0=$(tcpu shard); th0=$(ls /proc/$P/task | wc -l)
sleep $S
p1=$(cpu $P); d1=$(tcpu dns-exact); s1=$(tcpu shard)
r1=$(grep -c 'dns: backends updated' $W/dc.err $W/dc.out | awk -F: '{s+=$2} END {print s}')
q1=$(curl -s 127.0.0.1:$AP/metrics | awk '/^edgeshard_dns_resolutions_total/ {s+=$2} END {print s+0}')
echo "window ${S}s: process CPU $(echo "scale=1; 100*($p1-$p0)/$tick/$S" | bc) % of a core; dns thread(s) $(echo "scale=1; 100*($d1-$d0)/$tick/$S" | bc) %; shards $(echo "scale=1; 100*($s1-$s0)/$tick/$S" | bc) %"
echo "rebuilds $((r1-r0)) ($(echo "scale=2; ($r1-$r0)/$S" | bc)/s); resolutions $(echo "$q1-$q0" | bc); threads now $(ls /proc/$P/task | wc -l)"
grep -o 'dns: backends updated.*' $W/dc.err $W/dc.out | tail -3
grep -o 'dns: coalesc.*' $W/dc.err $W/dc.out | tail -2
kill $P; kill $FD; kill $WD 2>/dev/null; wait $P 2>/dev/null
