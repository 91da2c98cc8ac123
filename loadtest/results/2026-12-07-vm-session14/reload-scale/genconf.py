import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--routes", type=int, default=10000)
p.add_argument("--upstreams", type=int, default=2000)
p.add_argument("--live", default="")          # comma list of live backend ports
p.add_argument("--dead", type=int, default=0)  # closed port (refused)
p.add_argument("--blackhole", type=int, default=0)
p.add_argument("--certs", type=int, default=0)
p.add_argument("--certdir", default="/tmp/review-scale/certs")
p.add_argument("--listen", type=int, required=True)
p.add_argument("--tls-listen", type=int, default=0)
p.add_argument("--admin", type=int, default=0)
p.add_argument("--hc", default="")            # health check interval, "" = none
p.add_argument("--hc-timeout", default="2s")
p.add_argument("--hc-type", default="http")
p.add_argument("--regex", type=int, default=0)  # routes with rewrite.regex
p.add_argument("--mode", default="hosts")      # hosts: route i host h{i%H}; paths: all any-host with distinct prefixes
p.add_argument("--hosts", type=int, default=2000)
p.add_argument("--tag", default="")
p.add_argument("--dns", type=int, default=0)   # fake DNS port: each upstream also gets n{u}.svc:LIVE0
p.add_argument("--dns-count", type=int, default=0)  # only the first N upstreams get a name            # appended to route names to force a change
a = p.parse_args()
L = []
w = L.append
w("[server]\nshutdown_timeout = \"5s\"\n")
w(f"[[listener]]\naddress = \"127.0.0.1:{a.listen}\"\n")
if a.certs:
    w(f"[[listener]]\naddress = \"127.0.0.1:{a.tls_listen}\"")
    w("tls.certificates = [")
    for i in range(a.certs):
        w(f'  {{ cert = "{a.certdir}/c{i}.pem", key = "{a.certdir}/k{i}.pem"{", default = true" if i == 0 else ""} }},')
    w("]\n")
if a.dns:
    w(f"[dns]\nservers = [\"127.0.0.1:{a.dns}\"]\nmin_ttl = \"1s\"\n")
if a.admin:
    w(f"[admin]\naddress = \"127.0.0.1:{a.admin}\"\n")
live = [int(x) for x in a.live.split(",") if x]
for u in range(a.upstreams):
    w(f"[[upstream]]\nname = \"up{u}\"")
    bs = [f'{{ address = "127.0.0.1:{pt}" }}' for pt in live]
    if a.dead: bs.append(f'{{ address = "127.0.0.1:{a.dead}" }}')
    if a.blackhole: bs.append(f'{{ address = "127.0.0.1:{a.blackhole}" }}')
    if a.dns and u < (a.dns_count or a.upstreams): bs.append(f'{{ address = "n{u}.svc:{live[0]}" }}')
    w("backends = [" + ", ".join(bs) + "]")
    if a.hc:
        w(f"[upstream.health_check]\ntype = \"{a.hc_type}\"\ninterval = \"{a.hc}\"\ntimeout = \"{a.hc_timeout}\"")
        if a.hc_type == "http": w("path = \"/health\"")
    w("")
for r in range(a.routes):
    w("[[route]]")
    w(f"name = \"r{r}{a.tag}\"")
    if a.mode == "hosts":
        w(f"host = \"h{r % a.hosts}.example.com\"")
        w(f"path_prefix = \"/p{r // a.hosts}/\"")
    else:
        w(f"path_prefix = \"/p{r}/\"")
    w(f"upstream = \"up{r % a.upstreams}\"")
    if r < a.regex:
        w(f"rewrite.regex = \"^/p{r // a.hosts if a.mode=='hosts' else r}/(v[0-9]+)/([a-z]+)/(.*)$\"")
        w("rewrite.replace = \"/$2/$1/$3\"")
    w("")
open(a.out, "w").write("\n".join(L))
