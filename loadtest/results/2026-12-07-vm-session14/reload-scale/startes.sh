#!/bin/bash
# usage: startes.sh CONFIG TAG [engine] ; starts edgeshard (BIN=, EXTRA= for --cpus/--shards), waits for ready, prints time-to-ready
W=${W:-/tmp/rsw}
BIN=${BIN:-/tmp/es-main}
CONF=$1; TAG=$2; ENG=${3:-uring}
t0=$(date +%s.%N)
nice $BIN run --config $CONF --io-engine $ENG $EXTRA > $W/$TAG.out 2> $W/$TAG.err &
echo $! > $W/$TAG.pid
for i in $(seq 1 1200); do grep -q 'ready shards' $W/$TAG.out $W/$TAG.err 2>/dev/null && break; sleep 0.05; done
t1=$(date +%s.%N)
echo "ready after $(echo "$t1 - $t0" | bc) s pid $(cat $W/$TAG.pid)"
