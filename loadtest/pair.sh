#!/usr/bin/env bash
# A/B of two edgeshard builds that this shared, noisy host can resolve: both run at once, one
# shard each, on the same CPU, each loaded by its own wrk (keep-alive GETs of a small page from
# one nginx origin), so every disturbance falls on both. Per repetition: each build's CPU-µs
# per request (utime+stime / requests) and the ratio B/A; then the medians. Sequential runs
# of one build here differ by 15 % from one minute to the next; the paired ratio by ~1 %.
# Bounded: REPS x DURATION seconds plus start-up, and `timeout` over the whole script.
#   loadtest/pair.sh A_BINARY B_BINARY [plain|tls]
#   REPS=6 DURATION=8 CONNS=50 PAGE_BYTES=45 PROXY_CPU=1 CLIENT_CPU=0 BASE_PORT=18650 OUT=file.md
#   A_SERVER='...' B_SERVER='...': [server] lines for one side only, to A/B two configurations
#   of one build (e.g. B_SERVER='splice_min_bytes = "32KiB"'; lines split on ';').
#   WRK_HEADER='Connection: close': a header on every request (a connection per request).
#   BODY_BYTES=N: keep-alive POSTs of an N-byte body (loadtest/bench.lua) to a location the
#   origin answers with `return 200`, as run.sh's post1k/post64k cells do.
#   CACHE=1: the route caches (`cache = { size = "64MiB", max_object = "8MiB" }`) and the origin
#   marks the page cacheable, so every measured request is a cache hit (checked: X-Cache: HIT).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -ge 2 ] || die "usage: loadtest/pair.sh A_BINARY B_BINARY [plain|tls]"
A=$(realpath "$1"); B=$(realpath "$2"); KIND=${3:-plain}
[ -x "$A" ] && [ -x "$B" ] || die "both builds must be executables"
case $KIND in plain) SCHEME=http ;; tls) SCHEME=https ;; *) die "kind: plain or tls" ;; esac
ensure_pkgs "wrk:wrk nginx:nginx openssl:openssl"
REPS=${REPS:-6}; DURATION=${DURATION:-8}; CONNS=${CONNS:-50}; PAGE_BYTES=${PAGE_BYTES:-45}
PROXY_CPU=${PROXY_CPU:-1}; CLIENT_CPU=${CLIENT_CPU:-0}; PORT=${BASE_PORT:-18650}

DIR=$(mktemp -d /tmp/edgeshard-pair-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

mkdir -p "$DIR/www"
head -c "$PAGE_BYTES" /dev/zero | tr '\0' x > "$DIR/www/index.html"
cat > "$DIR/origin.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $DIR/origin.pid; error_log $DIR/origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; client_max_body_size 16m; client_body_buffer_size 128k;
       server { listen 127.0.0.1:$PORT; root $DIR/www; ${CACHE:+add_header Cache-Control "max-age=3600";}
                location = /post { default_type text/plain; return 200 "hello from origin\n"; } } }
EOF
taskset -c "$CLIENT_CPU" nginx -c "$DIR/origin.conf" & PIDS+=($!)

tls=""
if [ "$KIND" = tls ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
  tls="tls = { certificates = [ { cert = \"$DIR/cert.pem\", key = \"$DIR/key.pem\" } ] }"
fi
route_cache=""
[ -n "${CACHE:-}" ] && route_cache='cache = { size = "64MiB", max_object = "8MiB" }'
for side in a b; do
  port=$((PORT + 1)); [ $side = b ] && port=$((PORT + 2))
  extra=A_SERVER; [ $side = b ] && extra=B_SERVER
  { [ -n "${!extra:-}" ] && printf '[server]\n%s\n' "$(tr ';' '\n' <<< "${!extra}")"; true; } > "$DIR/$side.toml"
  cat >> "$DIR/$side.toml" <<EOF
[[listener]]
address = "127.0.0.1:$port"
$tls
[[upstream]]
name = "origin"
backends = [{ address = "127.0.0.1:$PORT" }]
max_idle_per_backend = 1024
[[route]]
path_prefix = "/"
upstream = "origin"
$route_cache
EOF
done
taskset -c "$PROXY_CPU" "$A" run --config "$DIR/a.toml" --shards 1 > "$DIR/a.log" 2>&1 & PA=$!; PIDS+=($PA)
taskset -c "$PROXY_CPU" "$B" run --config "$DIR/b.toml" --shards 1 > "$DIR/b.log" 2>&1 & PB=$!; PIDS+=($PB)
for port in $PORT $((PORT + 1)) $((PORT + 2)); do
  deadline=$((SECONDS + 10))
  until (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing listens on 127.0.0.1:$port (see $DIR)"
    sleep 0.1
  done
done

if [ -n "${CACHE:-}" ]; then
  for port in $((PORT + 1)) $((PORT + 2)); do
    curl -s -k -o /dev/null "$SCHEME://127.0.0.1:$port/"
    hit=$(curl -s -k -o /dev/null -D - "$SCHEME://127.0.0.1:$port/" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache"{print $2}')
    [ "$hit" = HIT ] || die "CACHE=1: 127.0.0.1:$port answered X-Cache: ${hit:-none}, not HIT"
  done
fi
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
path=/; post=()
if [ -n "${BODY_BYTES:-}" ]; then path=/post; post=(-s "$LOADTEST_DIR/bench.lua"); fi
ticks=$(getconf CLK_TCK)
rows=()
for r in $(seq "$REPS"); do
  a0=$(cpu $PA); b0=$(cpu $PB)
  WRK_BODY_BYTES=${BODY_BYTES:-0} taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${post[@]}" ${WRK_HEADER:+-H "$WRK_HEADER"} "$SCHEME://127.0.0.1:$((PORT + 1))$path" > "$DIR/wa" 2>&1 & wa=$!
  WRK_BODY_BYTES=${BODY_BYTES:-0} taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${post[@]}" ${WRK_HEADER:+-H "$WRK_HEADER"} "$SCHEME://127.0.0.1:$((PORT + 2))$path" > "$DIR/wb" 2>&1 & wb=$!
  wait $wa $wb
  a1=$(cpu $PA); b1=$(cpu $PB)
  ra=$(awk '/requests in/{print $1}' "$DIR/wa"); rb=$(awk '/requests in/{print $1}' "$DIR/wb")
  grep -q "Non-2xx\|Socket errors" "$DIR/wa" "$DIR/wb" && log "rep $r: wrk reported errors"
  rows+=("$(python3 -c "a=($a1-$a0)*1e6/$ticks/$ra; b=($b1-$b0)*1e6/$ticks/$rb; print(f'{a:.2f} {b:.2f} {b/a:.3f} {$ra} {$rb}')")")
  log "rep $r: ${rows[-1]}"
done

python3 - "$A${A_SERVER:+ with [server] $A_SERVER}" "$B${B_SERVER:+ with [server] $B_SERVER}" "$KIND" "$REPS" "$DURATION" "$CONNS" "$PAGE_BYTES" "${rows[@]}" <<'EOF' | tee "${OUT:-/dev/null}"
import statistics, sys, platform, os
a, b, kind, reps, dur, conns, page, *rows = sys.argv[1:]
hdr = f" -H '{os.environ['WRK_HEADER']}'" if os.environ.get("WRK_HEADER") else ""
rows = [r.split() for r in rows]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"# pair A/B ({kind}): A = `{a}`, B = `{b}`\n")
what = "cached " if os.environ.get("CACHE") else ""
load = f"POSTs of {os.environ['BODY_BYTES']} bytes" if os.environ.get("BODY_BYTES") else f"{what}{page}-byte page"
print(f"Both on one CPU at once, {reps} x {dur} s, wrk -c{conns} each{hdr}, {load}; host {platform.node()}, "
      f"{os.cpu_count()} CPUs, Linux {platform.release()}.\n")
print("| rep | A CPU-µs/req | B CPU-µs/req | B/A | A requests | B requests |\n|---|---|---|---|---|---|")
for i, r in enumerate(rows, 1):
    print(f"| {i} | {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |")
print(f"| median | {med(0):.2f} | {med(1):.2f} | **{med(2):.3f}** | | |")
EOF
