#!/usr/bin/env bash
# The end-to-end suite on a throwaway kubebox cluster (a real single-node Kubernetes 1.20 on
# this machine, loopback only): install (cached), start, build and import the e2e image, run the
# suite, and always stop the cluster again, also when the tests fail. Needs root on Debian
# bookworm, like kubebox itself.
#
# Usage: e2e/kubebox.sh [extra args for the test binary, e.g. a test name]
# Env:   KUBEBOX  path of the kubebox script (default: ../shared/kubebox/kubebox beside the checkout)
#        PGKEEP_E2E_PG_MAJOR  the image's PostgreSQL major: 18 (default, the default image's) or 15.
#                 The host side (pgkeep reading the volumes, the host dump) uses the same major.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBOX=${KUBEBOX:-$(cd .. && pwd)/shared/kubebox/kubebox}
[ -f "$KUBEBOX" ] || { echo "kubebox not found at $KUBEBOX: set KUBEBOX to the kubebox script" >&2; exit 1; }
export KUBEBOX
kubebox() { bash "$KUBEBOX" "$@"; }

kubebox install
# Leftover state from an interrupted run makes `up` refuse; `down` is idempotent.
kubebox down
trap 'kubebox down' EXIT
# The off-site disaster test runs an S3 server on the host that pods reach on the bridge.
PGKEEP_E2E_S3_PORT=${PGKEEP_E2E_S3_PORT:-19700}
KUBEBOX_HOST_PORTS="$PGKEEP_E2E_S3_PORT" kubebox up
eval "$(kubebox env)"
export PGKEEP_E2E_S3_ADDR=10.88.0.1:$PGKEEP_E2E_S3_PORT

PGKEEP_E2E_PG_MAJOR=${PGKEEP_E2E_PG_MAJOR:-18}
export PGKEEP_E2E_PG_MAJOR
# The host's pgkeep verifies the bundles the pods wrote (an 18 dump needs an 18 pg_restore).
if [ "$PGKEEP_E2E_PG_MAJOR" = 18 ]; then
  PGKEEP_PG_BIN=$(scripts/fetch-pg18.sh)
else
  PGKEEP_PG_BIN=/usr/lib/postgresql/$PGKEEP_E2E_PG_MAJOR/bin
fi
export PGKEEP_PG_BIN
PGKEEP_E2E_IMAGE=$(e2e/kubebox-image.sh)
PGKEEP_E2E_PV_ROOT=$KUBEBOX_STATE/pv
export PGKEEP_E2E_IMAGE PGKEEP_E2E_PV_ROOT
echo "e2e image: $PGKEEP_E2E_IMAGE" >&2

cargo test -p pgkeep --features e2e --test e2e --locked -- --test-threads=1 --nocapture "$@"
