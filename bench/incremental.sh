#!/usr/bin/env bash
# Benchmark of incremental base backups (PostgreSQL 17+) against full ones, measured in the same
# run on the same machine. Not part of the test suite.
#
#   PGKEEP_PG_BIN=<17+ bin dir> bench/incremental.sh [PGBENCH_SCALE=20]
#
# Prints:
#   1. after 1 % of pgbench_accounts changed: `backup physical --incremental` vs a full
#      `backup physical` taken right after it (time, bundle size, ratios)
#   2. the same after 10 % changed
#   3. `bootstrap basebackup` from a chain of 1 full + 6 incrementals (1 % changed before each)
#      vs from a full base backup taken at the same point (time, ratio)
#
# "Changed" = one contiguous range of account rows updated (the blocks holding them and their
# new versions); a spread-out 1 % of rows would touch almost every block.
# Runs as root (the server runs as `postgres`) or as a non-root user who owns the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-20}

cargo build --release -q -p pgkeep
PGKEEP=$PWD/target/release/pgkeep
BIN=${PGKEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
MAJOR=$("$BIN/postgres" --version | awk '{print $3}' | cut -d. -f1)
if [ "$MAJOR" -lt 17 ]; then
  echo "PostgreSQL $MAJOR has no incremental base backups: set PGKEEP_PG_BIN to a 17+ bin directory" >&2
  echo "(scripts/fetch-pg18.sh prints one)" >&2
  exit 2
fi

if [ "$(id -u)" = 0 ]; then
  AS=(runuser -u postgres --)
  OWNER=postgres
else
  AS=()
  OWNER=$(id -un)
fi

SITE=$(mktemp -d /tmp/pgkeep-bench-XXXXXX)
PGDATA=$SITE/volume/data
PORT=$(( 20000 + RANDOM % 20000 ))
mkdir -p "$SITE"/{volume,wal,backups,run}
chown -R "$OWNER" "$SITE"
chmod 755 "$SITE"
cleanup() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$SITE"
}
trap cleanup EXIT

export PGHOST=$SITE/run PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
export PGKEEP_CONFIG=/dev/null PGKEEP_PGROOT=$SITE/volume PGDATA PGKEEP_WAL_ARCHIVE=$SITE/wal
export PGKEEP_BACKUPS=$SITE/backups PGKEEP_RUN_DIR=$SITE/run PGKEEP_PG_BIN=$BIN
export PGKEEP_UID=$(id -u "$OWNER") PGKEEP_GID=$(id -g "$OWNER")

now() { date +%s.%N; }
psql() { "$BIN/psql" "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

"${AS[@]}" "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$SITE/run'
listen_addresses = ''
wal_level = replica
max_wal_senders = 4
archive_mode = on
archive_command = '$PGKEEP wal push --archive $SITE/wal %p'
summarize_wal = on
max_wal_size = 2GB
EOF
"${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -l "$SITE/server.log" -w start >/dev/null
"${AS[@]}" "$BIN/pgbench" -h "$PGHOST" -p "$PORT" -i -q -s "$SCALE" postgres >/dev/null 2>&1
ROWS=$(( SCALE * 100000 ))
DB_SIZE=$(psql -XAtc "select pg_size_pretty(pg_database_size('postgres'))")
echo "pgbench scale $SCALE ($DB_SIZE), $(nproc) cores, PostgreSQL $("$BIN/postgres" --version | awk '{print $3}')"

FROM=1
change() { # $1 = percent of the account rows, a contiguous range after the previous one
  local n=$(( ROWS * $1 / 100 ))
  local to=$(( FROM + n - 1 ))
  if [ "$to" -gt "$ROWS" ]; then FROM=1; to=$n; fi
  psql -XAtqc "update pgbench_accounts set abalance = abalance + 1 where aid between $FROM and $to" >/dev/null
  psql -XAtqc "checkpoint" >/dev/null
  FROM=$(( to + 1 ))
}
backup() { # extra args; prints "seconds bytes name"
  local t0 t1 out
  t0=$(now); out=$("$PGKEEP" -q backup physical --no-prune --json "$@"); t1=$(now)
  local name size
  name=$(sed -n 's/^  "name": "\(.*\)",$/\1/p' <<<"$out")
  size=$(stat -c %s "$SITE/backups/$name")
  echo "$(secs "$t0" "$t1") $size $name"
}

backup >/dev/null
for pct in 1 10; do
  change "$pct"
  read -r t_incr s_incr incr < <(backup --incremental)
  read -r t_full s_full _ < <(backup)
  # The full just taken is the next round's parent: its incremental holds that round's change.
  printf '%d. %2d%% changed:     incremental %ss %s bytes  vs  full %ss %s bytes   time ratio %sx, size ratio %sx\n' \
    "$([ "$pct" = 1 ] && echo 1 || echo 2)" "$pct" "$t_incr" "$s_incr" "$t_full" "$s_full" \
    "$(ratio "$t_incr" "$t_full")" "$(ratio "$s_incr" "$s_full")"
done

# 3. A chain of 1 full + 6 incrementals, and a full at the same point.
read -r _ chain_size _ < <(backup)
for _ in 1 2 3 4 5 6; do
  change 1
  read -r _ size newest < <(backup --incremental)
  chain_size=$(( chain_size + size ))
done
psql -XAtqc "select pg_switch_wal()" >/dev/null
psql -XAtqc "checkpoint" >/dev/null
read -r _ _ full_now < <(backup)
want=$(psql -XAtc "select sum(abalance) from pgbench_accounts")
"${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
restore() { # $1 = bundle; prints seconds
  local t0 t1
  t0=$(now); "$PGKEEP" -q bootstrap basebackup --from "$1" --yes >/dev/null; t1=$(now)
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -l "$SITE/server.log" -w start >/dev/null
  local got
  got=$(psql -XAtc "select sum(abalance) from pgbench_accounts")
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  [ "$got" = "$want" ] || { echo "restore of $1 lost data: $got vs $want" >&2; exit 1; }
  secs "$t0" "$t1"
}
t_chain=$(restore "$newest")
t_full=$(restore "$full_now")
printf '3. bootstrap:        from 1 full + 6 incrementals %ss (%s bytes in the chain)  vs  from a full %ss (%s bytes)   ratio %sx\n' \
  "$t_chain" "$chain_size" "$t_full" "$(stat -c %s "$SITE/backups/$full_now")" "$(ratio "$t_chain" "$t_full")"
