#!/usr/bin/env bash
# testssl.sh against edgeshard's TLS listener, once with an ECDSA P-256 and once with an RSA 2048
# certificate (generated like tls.sh's), every TLS setting at edgeshard's default. Writes
# testssl.md (protocols, suites, negotiation, vulnerabilities and renegotiation checks) and the raw
# testssl-<target>-<key>.json to OUT_DIR. About 2 min per target and key; bounded by BUDGET_S (1200 s).
#   TARGETS=edgeshard (add nginx for a reference) KEYS=ecdsa,rsa OUT_DIR=loadtest/results/<date>-<host>
#   BASE_PORT=18450 EDGESHARD=<path> SKIP_BUILD=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_pkgs "nginx:nginx-light openssl:openssl testssl:testssl.sh"
TARGETS="${TARGETS:-edgeshard}"
case ",$TARGETS," in *,edgeshard,*) build_edgeshard ;; esac
exec timeout --signal=TERM --kill-after=30 "${BUDGET_S:-1200}" python3 "$LOADTEST_DIR/tls.py" --testssl \
  --out "${OUT_DIR:-$(default_out)}" --targets "$TARGETS" --keys "${KEYS:-ecdsa,rsa}" --name "${NAME:-testssl}" \
  --base-port "${BASE_PORT:-18450}" \
  --edgeshard "${EDGESHARD:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/edgeshard}" "$@"
