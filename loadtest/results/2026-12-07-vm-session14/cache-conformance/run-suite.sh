#!/bin/bash
# Runs http-cache-tests 0.4.5 through a proxy and writes JSON results.
# usage: run-suite.sh NAME BASE_URL [TEST_ID]
#   e.g. run-suite.sh edgeshard http://127.0.0.1:18002
# Needs the origin (start-origin.sh) running on 127.0.0.1:18000 and the proxy started.
set -u
SUITE=${SUITE:-/tmp/ct-suite/package}
OUTDIR=${OUTDIR:-/tmp/ct-run/results}
mkdir -p "$OUTDIR"
name=$1 base=$2 id=${3:-}
cd "$SUITE"
if [ -z "$id" ]; then
  npm_config_base=$base npm_package_config_base=$base npm_config_id= npm_package_config_id= \
    timeout 600 node --no-warnings cli.mjs > "$OUTDIR/$name.json" 2> "$OUTDIR/$name.err"
  echo "rc=$? -> $OUTDIR/$name.json"
else
  npm_config_base=$base npm_package_config_base=$base npm_config_id=$id npm_package_config_id=$id \
    timeout 120 node --no-warnings cli.mjs
fi
