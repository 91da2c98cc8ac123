#!/bin/bash
# 2 shards x 256 keep-alive connections, small GET; prints wrk rps/p99, proxy CPU-us/req, upstream connects per 1000 req
BIN=$1
cd /tmp/prof
nginx -c /tmp/prof/origin.conf &
$BIN run --config es-plain.toml --cpus 0,1 > es256.log 2>&1 & ES=$!
for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18903/small.txt && break; sleep 0.1; done
wrk -t2 -c256 -d3s http://127.0.0.1:18903/small.txt > /dev/null
t0=$(awk '{print $14+$15}' /proc/$ES/stat)
wrk -t2 -c256 -d8s --latency http://127.0.0.1:18903/small.txt > wrk256.out
t1=$(awk '{print $14+$15}' /proc/$ES/stat)
n=$(grep "requests in" wrk256.out | awk '{print $1}')
kill $ES; wait $ES 2>/dev/null; kill $(cat /tmp/prof/origin.pid); wait 2>/dev/null
c=$(grep -o "connects=[0-9]*" es256.log | cut -d= -f2 | paste -sd+ | bc)
r=$(grep -o " requests=[0-9]*" es256.log | cut -d= -f2 | paste -sd+ | bc)
echo "rps=$(grep Requests/sec wrk256.out | awk '{print $2}') p99=$(grep ' 99%' wrk256.out | awk '{print $2}') cpu_us_per=$(( (t1-t0)*10000/n )) connects=$c requests=$r per1000=$(echo "scale=1; $c*1000/$r" | bc)"
