#!/usr/bin/env bash
# The README's test command: installs what the integration suite uses as real clients (curl,
# wrk, ss, openssl, dnsmasq, python3 with prometheus_client and websockets) when it is
# missing, then runs `cargo test` with any arguments given. Installs with apt-get (Debian/Ubuntu; as root, or
# through sudo) and pip. .ci/run calls it after fmt and clippy.
#
# Every proxy test runs on io_uring and on epoll; if io_uring is unavailable the io_uring tests
# fail and say why. To run only the epoll ones on purpose: EDGESHARD_TEST_ENGINES=epoll.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "tests/run.sh: need root (or sudo) to run: $*" >&2
    return 1
  fi
}
apt_updated=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || {
    echo "tests/run.sh: no apt-get here; install these yourself, then run cargo test: $*" >&2
    return 1
  }
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The shared rate-limit store test's server (tests/rate_limit_store.rs).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The DNS discovery test's name server (tests/dns.rs).
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}"
  apt_install "${need[@]}"
fi

# The observability tests parse /metrics with Prometheus's own Python parser; the WebSocket
# test uses the `websockets` library on both ends of the proxy. pip first (any Python), then
# Debian's packages (a system Python that refuses pip installs).
py_module() { # module pip-name debian-package
  python3 -c "import $1" 2>/dev/null && return 0
  echo "tests/run.sh: installing the Python module $1"
  python3 -m pip install -q "$2" 2>/dev/null \
    || python3 -m pip install -q --user "$2" 2>/dev/null \
    || apt_install "$3"
  python3 -c "import $1" || {
    echo "tests/run.sh: could not install the Python module $1 ($2)" >&2
    return 1
  }
}
py_module prometheus_client prometheus_client python3-prometheus-client
py_module websockets websockets python3-websockets

exec cargo test "$@"
