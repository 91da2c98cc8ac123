#!/bin/bash
# usage: setup.sh -- in /tmp/rsw (W=): ports, 400 certs, backend nginx (2 ports), blackhole, configs big/huge (+ B variants)
# Run it from this directory in the repository (it finds session 13's generators beside it); W is the work directory.
# Everything on 127.0.0.1. Processes started here record their pid in $W/*.pid; stop with stop.sh.
W=${W:-/tmp/rsw}
# The generators unchanged from session 13's scale review: used from there, not copied.
CS=$(cd "$(dirname "$0")/../../2026-12-07-vm-session13/config-scale" && pwd)
cd $W
[ -f ports ] || python3 $CS/freeport.py 8 > ports
read LP TLSP AP BE1 BE2 DEAD BH DNSP < ports
[ -d certs ] || python3 $CS/gencerts.py 400 $W/certs
mkdir -p nbe/logs
cat > nbe/nginx.conf <<NG
worker_processes 1;
daemon off;
pid $W/nbe/nginx.pid;
error_log $W/nbe/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$BE1 backlog=4096; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$BE2 backlog=4096; location / { return 200 "ok\n"; } }
}
NG
if ! [ -f nbe.pid ] || ! kill -0 $(cat nbe.pid) 2>/dev/null; then
  timeout 7200 nice nginx -p $W/nbe -c $W/nbe/nginx.conf >/dev/null 2>&1 & echo $! > nbe.pid
fi
# the backend worker on CPU 0 at SCHED_FIFO 10 (see stallprobe.sh, RT)
sleep 0.5; for w in $(pgrep -f "nginx: worker process" ); do grep -q $W/nbe /proc/$(awk '{print $4}' /proc/$w/stat)/cmdline && { taskset -pc 0 $w >/dev/null; chrt -f -p 10 $w; }; done
if ! [ -f bh.pid ] || ! kill -0 $(cat bh.pid) 2>/dev/null; then
  python3 $CS/blackhole.py $BH 7200 >/dev/null 2>&1 & echo $! > bh.pid
fi
G="python3 $CS/genconf.py --listen $LP --admin $AP --live $BE1,$BE2 --certdir $W/certs"
$G --out big.toml  --routes 10000 --upstreams 2000 --dead $DEAD --blackhole $BH --certs 400 --tls-listen $TLSP --hc 5s --regex 500
$G --out bigB.toml --routes 10000 --upstreams 2000 --dead $DEAD --blackhole $BH --certs 400 --tls-listen $TLSP --hc 5s --regex 500 --tag b
$G --out huge.toml --routes 40000 --upstreams 20000 --hosts 5000 --dead $DEAD
$G --out hugeB.toml --routes 40000 --upstreams 20000 --hosts 5000 --dead $DEAD --tag b
$G --out dns.toml  --routes 2000 --upstreams 2000 --dns $DNSP
echo "ports: listen $LP tls $TLSP admin $AP backends $BE1 $BE2 dead $DEAD blackhole $BH dns $DNSP"
# The probe's own route: host probe.example.com to an upstream of the two live ports only (every
# generated upstream also has a refused and a blackholed backend, which would add connect timeouts).
for f in big bigB huge hugeB; do
  grep -q probe.example.com $f.toml || printf '\n[[upstream]]\nname = "probe"\nbackends = [{ address = "127.0.0.1:%s" }, { address = "127.0.0.1:%s" }]\n\n[[route]]\nname = "probe"\nhost = "probe.example.com"\nupstream = "probe"\n' $BE1 $BE2 >> $f.toml
done
