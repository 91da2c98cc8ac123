#!/bin/bash
# usage: reload-loop.sh PID ADMINPORT N [CONF_A CONF_B LIVE]  -- POST /reload N times, report latency, RSS, fds, threads
P=$1; AP=$2; N=$3; A=$4; B=$5; LIVE=$6
for i in $(seq 1 $N); do
  if [ -n "$A" ]; then if [ $((i%2)) = 1 ]; then cp $B $LIVE; else cp $A $LIVE; fi; fi
  r=$(curl -s -m 60 -XPOST -w ' %{http_code} %{time_total}' 127.0.0.1:$AP/reload)
  echo "reload $i: code/time=$(echo $r | awk '{print $(NF-1), $NF}') gen=$(echo $r | grep -o '"generation":[0-9]*') rss=$(awk '/VmRSS/{print $2}' /proc/$P/status)kB fds=$(ls /proc/$P/fd | wc -l) thr=$(awk '/Threads/{print $2}' /proc/$P/status)"
done
