# Run as: ip netns add segs; ip netns exec segs bash run.sh; ip netns del segs (paths under /tmp/segs, binary /tmp/es-7b1a8d0)
set -e
ip link set lo up
cd /tmp/segs
taskset -c 0 nginx -c /tmp/segs/origin.conf & O=$!
taskset -c 1 nginx -c /tmp/segs/proxy.conf & N=$!
taskset -c 1 /tmp/es-7b1a8d0 run --config /tmp/segs/es.toml --shards 1 > es.log 2>&1 & E=$!
for p in 20001 20002 20003; do for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done; done
for rep in 1 2; do
for port in 20002 20003 20001; do
  nstat -n >/dev/null
  out=$(taskset -c 0 wrk -t1 -c50 -d3s http://127.0.0.1:$port/ | awk '/requests in/{print $1}')
  nstat -z TcpOutSegs TcpExtDelayedACKs TcpExtTCPPureAcks TcpExtTCPHPAcks TcpExtTCPHPHits TcpRetransSegs 2>/dev/null | awk -v n=$out -v p=$port 'NR>1{printf "%s %s=%.3f ", p, $1, $2/n} END{print " req=" n}'
done
done
kill $O $N $E
