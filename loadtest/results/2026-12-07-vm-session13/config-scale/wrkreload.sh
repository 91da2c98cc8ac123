#!/bin/bash
# usage: wrkreload.sh "RELOAD COMMAND" TAG -- wrk 12 s (1 thread, 32 conns) with 5 reloads 2 s apart
LP=$(cut -d' ' -f1 /tmp/review-scale/ports.es)
(nice wrk -t1 -c32 -d12s --latency -H 'Host: h3.example.com' http://127.0.0.1:$LP/p0/x > /tmp/review-scale/wr-$2.txt) & sleep 1.5
for i in 1 2 3 4 5; do eval "$1" > /dev/null; sleep 2; done; wait
echo "$2: $(egrep 'Latency  |99%|Requests/sec|Non-2xx|Socket errors' /tmp/review-scale/wr-$2.txt | tr -s ' ' | tr '\n' ' ')"
