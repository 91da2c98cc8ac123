#!/bin/bash
# usage: startes.sh CONFIG TAG [engine] ; starts edgeshard (2 shards), waits for ready, prints time-to-ready
BIN=${BIN:-/tmp/es-base}
CONF=$1; TAG=$2; ENG=${3:-uring}
t0=$(date +%s.%N)
nice $BIN run --config $CONF --io-engine $ENG $EXTRA > /tmp/review-scale/$TAG.out 2> /tmp/review-scale/$TAG.err &
echo $! > /tmp/review-scale/$TAG.pid
for i in $(seq 1 600); do grep -q 'ready shards' /tmp/review-scale/$TAG.out 2>/dev/null && break; sleep 0.05; done
t1=$(date +%s.%N)
echo "ready after $(echo "$t1 - $t0" | bc) s pid $(cat /tmp/review-scale/$TAG.pid)"
