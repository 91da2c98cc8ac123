#!/bin/bash
# pathological config checks
cd /tmp/review-scale
base() { printf '[[listener]]\naddress = "127.0.0.1:55433"\n[[upstream]]\nname = "u"\nbackends = [{ address = "127.0.0.1:58393" }]\n'; }
t() { echo "== $1"; /usr/bin/time -f '   [%e s, %M KB, exit %x]' /tmp/es-base check --config p.toml 2>&1 | grep -v '^upstream \|^listener' | cut -c1-300 | head -6; }
{ base; printf '[[upstream]]\nname = "u"\nbackends = [{ address = "127.0.0.1:1" }]\n[[route]]\nupstream = "u"\n'; } > p.toml; t dup-upstream
{ base; printf '[[route]]\nname = "a"\nupstream = "u"\n[[route]]\nname = "a"\nupstream = "u"\n'; } > p.toml; t dup-route
{ base; printf '[[route]]\nhost = "%s.example.com"\nupstream = "u"\n' $(python3 -c 'print("a"*300)'); } > p.toml; t long-host
{ base; printf '[[route]]\nhost = "%s.example.com"\nupstream = "u"\n' $(python3 -c 'print("a"*100)'); } > p.toml; t label-100
{ base; printf '[[route]]\npath_prefix = "/%s"\nupstream = "u"\n' $(python3 -c 'print("a"*100000)'); } > p.toml; t path-100k
{ base; printf '[[route]]\nhost = "h.example.com"\nupstream = "u"\n[[route]]\nhost = "H.EXAMPLE.COM"\nupstream = "u"\n'; } > p.toml; t dup-host-case
{ base; printf '[[route]]\nupstream = "u"\nrewrite.regex = "%s"\nrewrite.replace = "/"\n' $(python3 -c 'print("(a|b)"*5000)'); } > p.toml; t regex-long
{ base; printf '[[route]]\nupstream = "u"\nrewrite.regex = "%s"\nrewrite.replace = "/"\n' $(python3 -c 'print("("*2000 + "a" + ")"*2000)'); } > p.toml; t regex-nest2000
{ base; printf '[[route]]\nupstream = "u"\nrewrite.regex = "%s"\nrewrite.replace = "/"\n' $(python3 -c 'print("("*300 + "a" + ")"*300)'); } > p.toml; t regex-nest300
{ base; python3 -c 'print("x = " + "["*5000 + "]"*5000)'; } > p.toml; t toml-nest5000
{ base; python3 -c 'print("[server]\nserver_header = \"" + "a"*50_000_000 + "\"")'; } > p.toml; t toml-50MB-string
{ base; printf '[[route]]\nhost = "*.com"\nupstream = "u"\n[[route]]\nhost = "*"\nupstream = "u"\n'; } > p.toml; t wildcard-tld
