#!/usr/bin/env bash
# Records golden data for edgeshard's ketama ring (src/balance/ketama.rs): which backend a real
# nginx picks with `hash $arg_key consistent;` for 2,000 keys over four server lists, plus the
# sequence nginx picks for an empty key (its smooth weighted round-robin fallback).
#
# Usage: tests/golden/nginx_chash/record.sh [/path/to/nginx]
# Writes three.txt, weighted5.txt, ten.txt, weighted5_minus.txt and empty_key.txt next to this
# script. A private nginx runs from a mktemp prefix (its own config, logs, pid), on free
# 127.0.0.1 ports chosen at run time; it is stopped by PID at the end and bounded by `timeout`.
# Needs bash, python3 and coreutils. The backend names (127.0.0.1:PORT, as written in the
# `server` lines) are part of the ring, so every data file lists the servers it used.
#
# File format (one record a line, '#' lines are comments):
#   server NAME WEIGHT         in upstream order
#   pick KEY NAME              nginx sent ?key=KEY to NAME
#   empty NAME                 (empty_key.txt) the n-th request without a key went to NAME
set -euo pipefail

NGINX=${1:-/usr/sbin/nginx}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
NGINX_PID=
cleanup() {
    if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# 10 backend ports + 5 front ports, free at the time of asking (bound to :0, then released).
read -r -a PORTS <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(15):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
)"
B=("${PORTS[@]:0:10}")
F=("${PORTS[@]:10:5}")
name() { echo "127.0.0.1:${B[$1]}"; }

# name:weight lists, in upstream order. weighted5_minus is weighted5 without its third server.
LIST_three="$(name 0):1 $(name 1):1 $(name 2):1"
LIST_weighted5="$(name 0):1 $(name 1):2 $(name 2):3 $(name 3):1 $(name 4):5"
LIST_ten="$(for i in 0 1 2 3 4 5 6 7 8 9; do printf '%s:1 ' "$(name $i)"; done)"
LIST_weighted5_minus="$(name 0):1 $(name 1):2 $(name 3):1 $(name 4):5"
LISTS="three weighted5 ten weighted5_minus"

upstream_block() { # $1 upstream name, $2 "name:weight ..." list, $3 extra directive
    echo "    upstream $1 {"
    [ -n "$3" ] && echo "        $3"
    for sw in $2; do echo "        server ${sw%:*} weight=${sw##*:} max_fails=0;"; done
    echo "    }"
}

mkdir -p "$TMP/logs"
{
    echo "worker_processes 1;"
    echo "error_log $TMP/logs/error.log warn;"
    echo "pid $TMP/nginx.pid;"
    echo "events { worker_connections 256; }"
    echo "http {"
    echo "    access_log off;"
    echo "    client_body_temp_path $TMP/body; proxy_temp_path $TMP/proxy;"
    echo "    fastcgi_temp_path $TMP/fcgi; uwsgi_temp_path $TMP/uwsgi; scgi_temp_path $TMP/scgi;"
    for i in 0 1 2 3 4 5 6 7 8 9; do
        echo "    server { listen 127.0.0.1:${B[$i]}; location / { return 200 \"\$server_addr:\$server_port\"; } }"
    done
    k=0
    for l in $LISTS; do
        v="LIST_$l"
        upstream_block "up_$l" "${!v}" "hash \$arg_key consistent;"
        echo "    server { listen 127.0.0.1:${F[$k]}; location / { proxy_pass http://up_$l; add_header X-Upstream \$upstream_addr always; } }"
        k=$((k + 1))
    done
    # Empty key: nginx falls back to its smooth weighted round robin. A separate upstream, so
    # that its round-robin state starts from zero.
    upstream_block "up_empty" "$LIST_weighted5" "hash \$arg_key consistent;"
    echo "    server { listen 127.0.0.1:${F[4]}; location / { proxy_pass http://up_empty; add_header X-Upstream \$upstream_addr always; } }"
    echo "}"
} >"$TMP/nginx.conf"

"$NGINX" -t -q -p "$TMP" -c "$TMP/nginx.conf"
timeout 300 "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" -g "daemon off;" &
NGINX_PID=$!

VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
READY="${B[0]}" FRONTS="${F[*]}" LISTS="$LISTS" OUTDIR="$HERE" VERSION="$VERSION" \
LIST_three="$LIST_three" LIST_weighted5="$LIST_weighted5" LIST_ten="$LIST_ten" \
LIST_weighted5_minus="$LIST_weighted5_minus" timeout 240 python3 - <<'PY'
import hashlib, http.client, os, time

fronts = os.environ["FRONTS"].split()
lists = os.environ["LISTS"].split()
outdir, version = os.environ["OUTDIR"], os.environ["VERSION"]

def keys():
    # 2,000 keys of the shapes hash_key produces: ids, hex tokens, IPv4 and IPv6 texts, paths.
    out = []
    for i in range(2000):
        h = hashlib.sha1(str(i).encode()).hexdigest()
        shape = i % 5
        if shape == 0:
            out.append(f"user{i}")
        elif shape == 1:
            out.append(h[: 8 + i % 24])
        elif shape == 2:
            out.append(f"10.{i % 7}.{i // 256}.{i % 256}")
        elif shape == 3:
            out.append(f"2001:db8::{i:x}")
        else:
            out.append(f"/img/{h[:6]}/{i}.png")
    return out

# Wait for nginx on a backend port (a request to a front port would move round-robin state).
for _ in range(100):
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(os.environ["READY"]), timeout=5)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
        break
    except OSError:
        time.sleep(0.05)
else:
    raise SystemExit("nginx did not start")

def get(conn, target):
    conn.request("GET", target)
    r = conn.getresponse()
    body = r.read().decode()
    up = r.getheader("X-Upstream")
    if r.status != 200 or up != body:
        raise SystemExit(f"{target}: status {r.status}, upstream {up!r}, body {body!r}")
    return body

def header(f, servers, what):
    f.write(f"# {what}\n# Recorded from {version} by tests/golden/nginx_chash/record.sh"
            f" on {time.strftime('%Y-%m-%d')}; do not edit by hand.\n")
    for sw in servers:
        name, weight = sw.rsplit(":", 1)
        f.write(f"server {name} {weight}\n")

# Empty key: 24 requests without ?key=, from fresh round-robin state.
conn = http.client.HTTPConnection("127.0.0.1", int(fronts[4]), timeout=5)
with open(os.path.join(outdir, "empty_key.txt"), "w") as f:
    header(f, os.environ["LIST_weighted5"].split(),
           "hash $arg_key consistent; requests without a key, in order")
    for _ in range(24):
        f.write(f"empty {get(conn, '/')}\n")
conn.close()

total = 0
for port, l in zip(fronts, lists):
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
    with open(os.path.join(outdir, f"{l}.txt"), "w") as f:
        header(f, os.environ[f"LIST_{l}"].split(), "hash $arg_key consistent; key -> server")
        for k in keys():
            f.write(f"pick {k} {get(conn, '/?key=' + k)}\n")
            total += 1
    conn.close()
print(f"recorded {total} keyed picks over {len(lists)} server lists with {version}")
PY
