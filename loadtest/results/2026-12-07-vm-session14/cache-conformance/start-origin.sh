#!/bin/bash
# Starts the suite's origin server on 127.0.0.1:18000 (server.mjs patched to bind 127.0.0.1).
SUITE=${SUITE:-/tmp/ct-suite/package}
cd "$SUITE"
npm_config_protocol=http npm_package_config_protocol=http npm_config_port=18000 npm_package_config_port=18000 \
  npm_config_pidfile=/tmp/ct-run/origin.pid npm_package_config_pidfile=/tmp/ct-run/origin.pid \
  exec node --no-warnings server/server.mjs
