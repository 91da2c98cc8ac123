# shared helpers for the loadtest/*.sh wrappers (sourced, not executed)
LOADTEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$LOADTEST_DIR/.." && pwd)"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt-get install the given packages if the given commands are missing (root only)
ensure_pkgs() { # ensure_pkgs "cmd:pkg cmd:pkg ..."
  local missing=() pair
  for pair in $1; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  log "installing ${missing[*]} (apt-get)"
  timeout 300 apt-get update -qq || log "apt-get update failed, trying install anyway"
  # never let the package's postinst start the system nginx service (invoke-rc.d and
  # deb-systemd-invoke both honour /usr/sbin/policy-rc.d exit code 101 = "action forbidden")
  local made_policy=0 rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || die "apt-get install ${missing[*]} failed"
}

# a python3 that can import matplotlib if any can (Debian's python3-matplotlib lives in /usr/bin/python3)
pick_python() {
  local p
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import matplotlib' >/dev/null 2>&1; then echo "$p"; return; fi
  done
  if [ "${INSTALL_PLOTS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing python3-matplotlib for the plots (INSTALL_PLOTS=0 to skip)"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq python3-matplotlib >/dev/null 2>&1 || true
    if /usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1; then echo /usr/bin/python3; return; fi
  fi
  log "matplotlib not available: summary.md without plots"
  command -v python3 || echo /usr/bin/python3
}

build_edgeshard() {
  [ "${SKIP_BUILD:-0}" = 1 ] && return 0
  log "cargo build --release (edgeshard)"
  (cd "$REPO_DIR" && timeout "${BUILD_TIMEOUT:-1200}" cargo build --release --bin edgeshard) \
    || die "edgeshard release build failed"
}

build_floor() {
  [ "${SKIP_BUILD:-0}" = 1 ] && return 0
  log "cargo build --release (loadtest/floor)"
  (cd "$LOADTEST_DIR/floor" && timeout "${BUILD_TIMEOUT:-1200}" cargo build --release) \
    || die "floor build failed"
}

build_rategen() {
  [ "${SKIP_BUILD:-0}" = 1 ] && [ -x "$LOADTEST_DIR/rategen/target/release/rategen" ] && return 0
  log "cargo build --release (loadtest/rategen)"
  (cd "$LOADTEST_DIR/rategen" && timeout "${BUILD_TIMEOUT:-1200}" cargo build --release) \
    || die "rategen build failed"
}

# default output dir: loadtest/results/<YYYY-MM-DD>-<hostname>[-suffix]
default_out() { echo "$LOADTEST_DIR/results/$(date +%F)-$(hostname -s)${1:+-$1}"; }

# The single-shard probes' setup (rss-under-load.sh, heap-under-load.sh, memmove.sh): in
# /tmp/prof, NAME-origin.conf (one nginx worker serving /tmp/prof/www on 127.0.0.1:ORIGIN_PORT,
# pid file NAME-origin.pid) and NAME-es.toml (edgeshard on 127.0.0.1:PROXY_PORT, one route to
# that origin, defaults otherwise). Each probe uses its own NAME and ports.
prof_configs() { # prof_configs NAME ORIGIN_PORT PROXY_PORT
  local name=$1 origin=$2 proxy=$3
  mkdir -p /tmp/prof/www
  cat > "/tmp/prof/$name-origin.conf" <<EOC
worker_processes 1; daemon off; pid /tmp/prof/$name-origin.pid; error_log /tmp/prof/$name-origin.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$origin; root /tmp/prof/www; } }
EOC
  cat > "/tmp/prof/$name-es.toml" <<EOC
[[listener]]
address = "127.0.0.1:$proxy"
[[upstream]]
name = "origin"
backends = [{ address = "127.0.0.1:$origin" }]
[[route]]
path_prefix = "/"
upstream = "origin"
EOC
}
