# nginx equivalent of genconf.py's hosts mode: U upstreams x backends, R routes as
# locations in H server blocks, first C hosts with their own TLS certificate, first X routes with a regex rewrite
import argparse
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--prefix")
p.add_argument("--routes", type=int, default=10000); p.add_argument("--upstreams", type=int, default=2000)
p.add_argument("--hosts", type=int, default=2000); p.add_argument("--live", default="")
p.add_argument("--dead", type=int, default=0); p.add_argument("--blackhole", type=int, default=0)
p.add_argument("--certs", type=int, default=0); p.add_argument("--certdir", default="/tmp/review-scale/certs")
p.add_argument("--listen", type=int); p.add_argument("--tls-listen", type=int, default=0)
p.add_argument("--regex", type=int, default=0)
a = p.parse_args(); L = []; w = L.append
w(f"worker_processes 2;\ndaemon off;\npid {a.prefix}/nginx.pid;\nerror_log {a.prefix}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\naccess_log off;\nserver_names_hash_max_size 8192;\nserver_names_hash_bucket_size 64;\nvariables_hash_max_size 2048;")
live = [int(x) for x in a.live.split(",") if x]
for u in range(a.upstreams):
    bs = [f"server 127.0.0.1:{pt};" for pt in live]
    if a.dead: bs.append(f"server 127.0.0.1:{a.dead};")
    if a.blackhole: bs.append(f"server 127.0.0.1:{a.blackhole};")
    w(f"upstream up{u} {{ {' '.join(bs)} keepalive 16; }}")
per = {}
for r in range(a.routes): per.setdefault(r % a.hosts, []).append(r)
for h, rs in per.items():
    w("server {")
    w(f"  listen 127.0.0.1:{a.listen};")
    if h < a.certs:
        w(f"  listen 127.0.0.1:{a.tls_listen} ssl;\n  ssl_certificate {a.certdir}/c{h}.pem;\n  ssl_certificate_key {a.certdir}/k{h}.pem;")
    w(f"  server_name h{h}.example.com;")
    for r in rs:
        w(f"  location /p{r // a.hosts}/ {{")
        if r < a.regex: w(f"    rewrite ^/p{r // a.hosts}/(v[0-9]+)/([a-z]+)/(.*)$ /$2/$1/$3 break;")
        w(f"    proxy_pass http://up{r % a.upstreams}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}")
    w("}")
w("}")
open(a.out, "w").write("\n".join(L))
