#!/usr/bin/env bash
# Benchmark of pgkeep's physical backups and WAL archiving against the bare PostgreSQL tools,
# measured in the same run on the same machine. Not part of the test suite.
#
#   [PUSH_ROUNDS=5] bench/physical.sh [PGBENCH_SCALE=20] [PGBENCH_SECONDS=60] [PUSH_SEGMENTS=16]
#
# Prints:
#   1. backup: `pgkeep backup physical` vs `pg_basebackup -Ft -X stream -z -c fast` (target <= 1.0x)
#   2. wal push per 16 MiB segment vs `cp` + `sync FILE`                          (target <= 1.5x)
#      for the default and the alternatives (one thread, a fast level, none), best of PUSH_ROUNDS
#   3. archive lag (archive_status/*.ready) while pgbench runs with archive_command = pgkeep
#   4. replay time of N segments: restore_command = `pgkeep wal fetch` vs `cp`
#
# Runs as root (the server runs as `postgres`) or as a non-root user who owns the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${1:-20}
SECONDS_RUN=${2:-60}
PUSH_N=${3:-16}
PUSH_ROUNDS=${PUSH_ROUNDS:-5}

cargo build --release -q -p pgkeep
PGKEEP=$PWD/target/release/pgkeep
BIN=${PGKEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

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
mkdir -p "$SITE"/{volume,wal,backups,run,bare,plain,pushsrc,pushdst,cpdst}
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ms() { awk -v s="$1" 'BEGIN { printf "%.1f", s * 1000 }'; }

"${AS[@]}" "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$SITE/run'
listen_addresses = ''
wal_level = replica
max_wal_senders = 4
archive_mode = on
archive_command = '$PGKEEP wal push --archive $SITE/wal %p'
synchronous_commit = off
max_wal_size = 2GB
EOF
"${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -l "$SITE/server.log" -w start >/dev/null
"${AS[@]}" "$BIN/pgbench" -h "$PGHOST" -p "$PORT" -i -q -s "$SCALE" postgres >/dev/null 2>&1
DB_SIZE=$(psql -XAtc "select pg_size_pretty(pg_database_size('postgres'))")
echo "pgbench scale $SCALE ($DB_SIZE), $(nproc) cores, PostgreSQL $("$BIN/postgres" --version | awk '{print $3}')"

# 1. Backups: alternate the two, two rounds each, keep the best of each.
best_pgkeep=999999; best_bare=999999
for round in 1 2; do
  rm -rf "$SITE/bare"/*
  t0=$(now); "$BIN/pg_basebackup" -D "$SITE/bare" -Ft -X stream -z -c fast; t1=$(now)
  bare=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  rm -f "$SITE/backups"/basebackup-*
  t0=$(now); "$PGKEEP" -q backup physical >/dev/null; t1=$(now)
  mine=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  best_bare=$(awk -v a="$best_bare" -v b="$bare" 'BEGIN { print (b < a) ? b : a }')
  best_pgkeep=$(awk -v a="$best_pgkeep" -v b="$mine" 'BEGIN { print (b < a) ? b : a }')
done
bare_size=$(du -cb "$SITE/bare"/*.gz "$SITE/bare/backup_manifest" | tail -1 | cut -f1)
mine_size=$(stat -c %s "$SITE"/backups/basebackup-*)
printf '1. backup physical:  pgkeep %.2fs (%s bytes)  vs  pg_basebackup -Ft -X stream -z %.2fs (%s bytes)  ratio %sx\n' \
  "$best_pgkeep" "$mine_size" "$best_bare" "$bare_size" "$(ratio "$best_pgkeep" "$best_bare")"

# 3. Archive lag while pgbench writes for a while.
before=$(psql -XAtc "select archived_count from pg_stat_archiver")
"${AS[@]}" "$BIN/pgbench" -h "$PGHOST" -p "$PORT" -c 2 -j 2 -T "$SECONDS_RUN" postgres >"$SITE/pgbench.out" 2>&1 &
bench_pid=$!
max_ready=0; sum_ready=0; samples=0
while kill -0 "$bench_pid" 2>/dev/null; do
  r=$(find "$PGDATA/pg_wal/archive_status" -name '*.ready' | wc -l)
  [ "$r" -gt "$max_ready" ] && max_ready=$r
  sum_ready=$((sum_ready + r)); samples=$((samples + 1))
  sleep 1
done
wait "$bench_pid" || true
after=$(psql -XAtc "select archived_count from pg_stat_archiver")
failed=$(psql -XAtc "select failed_count from pg_stat_archiver")
tps=$(grep -Eo 'tps = [0-9.]+' "$SITE/pgbench.out" | head -1 | awk '{print $3}')
printf '3. archive lag:      max %d, mean %s segments waiting (.ready) during %ss of pgbench (%s tps); %d segments archived, %d failures\n' \
  "$max_ready" "$(awk -v s="$sum_ready" -v n="$samples" 'BEGIN { printf "%.1f", s / (n ? n : 1) }')" "$SECONDS_RUN" "$tps" \
  "$((after - before))" "$failed"

# 2. wal push per segment: real WAL from the pgbench run above (the newest segments), uncompressed.
# Every variant and the bare `cp` + `sync FILE` run in the same interleaved rounds (fsync latency on
# a shared machine drifts), each round into an empty directory; best / median / worst per variant.
mapfile -t segs < <(ls "$SITE/wal" | grep -E '^[0-9A-F]{24}\.zst$' | tail -n "$PUSH_N")
for s in "${segs[@]}"; do
  "$PGKEEP" wal fetch --archive "$SITE/wal" "${s%.zst}" "$SITE/pushsrc/${s%.zst}"
done
n=${#segs[@]}
in_bytes=$(du -cb "$SITE"/pushsrc/* | tail -1 | cut -f1)
variants=("cp + sync" "default" "--zstd-level=1" "--zstd-level=-1" "--zstd-level=-2" "--zstd-level=-3" "--zstd-threads 1" "--compress none")
declare -A times sizes
for round in $(seq 1 "$PUSH_ROUNDS"); do
  for v in "${variants[@]}"; do
    rm -rf "$SITE/pushdst"; mkdir "$SITE/pushdst"
    read -ra opts <<<"$v"; [ "$v" = default ] && opts=()
    sync
    t0=$(now)
    if [ "$v" = "cp + sync" ]; then
      for f in "$SITE"/pushsrc/*; do cp "$f" "$SITE/pushdst/" && sync "$SITE/pushdst/$(basename "$f")"; done
    else
      for f in "$SITE"/pushsrc/*; do "$PGKEEP" wal push "${opts[@]}" --archive "$SITE/pushdst" "$f"; done
    fi
    t1=$(now)
    times[$v]+="$(awk -v a="$t0" -v b="$t1" -v n="$n" 'BEGIN { print (b - a) / n }') "
    sizes[$v]=$(du -cb "$SITE"/pushdst/* | tail -1 | cut -f1)
  done
done
stats() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[1], v[int((NR + 1) / 2)], v[NR] }'; }
read -r cp_best cp_med cp_worst < <(stats "${times[cp + sync]}")
read -r d_best d_med d_worst < <(stats "${times[default]}")
printf '2. wal push:         %s ms/segment  vs  cp + sync %s ms/segment  ratio %sx  (best of %d rounds; medians %s vs %s ms, ratio %sx; %d segments, stored %s%% of the size)\n' \
  "$(ms "$d_best")" "$(ms "$cp_best")" "$(ratio "$d_best" "$cp_best")" "$PUSH_ROUNDS" "$(ms "$d_med")" "$(ms "$cp_med")" \
  "$(ratio "$d_med" "$cp_med")" "$n" "$(awk -v a="${sizes[default]}" -v b="$in_bytes" 'BEGIN { printf "%.1f", 100 * a / b }')"
echo "   per variant, ms/segment best / median / worst, ratio to cp + sync (best, median), stored bytes (default = zstd level -2, threads = min(CPUs, 4)):"
for v in "${variants[@]}"; do
  read -r b m w < <(stats "${times[$v]}")
  printf '   %-20s %6s / %6s / %6s   %5sx %5sx   %11s bytes (%5.1f%%)\n' "$v" "$(ms "$b")" "$(ms "$m")" "$(ms "$w")" \
    "$(ratio "$b" "$cp_best")" "$(ratio "$m" "$cp_med")" "${sizes[$v]}" "$(awk -v a="${sizes[$v]}" -v b="$in_bytes" 'BEGIN { print 100 * a / b }')"
done

# 4. Replay: restore the bare base backup (taken before the pgbench run), replay all archived WAL.
psql -XAtc "select pg_switch_wal()" >/dev/null
sleep 3
"${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
for s in "$SITE"/wal/*; do
  b=$(basename "$s"); b=${b%.zst}
  "$PGKEEP" wal fetch --archive "$SITE/wal" "$b" "$SITE/plain/$b"
done
chown -R "$OWNER" "$SITE/plain"
replay() { # $1 = restore_command; prints seconds and segments
  rm -rf "$PGDATA"; mkdir -m 700 "$PGDATA"
  tar -xzf "$SITE/bare/base.tar.gz" -C "$PGDATA"
  tar -xzf "$SITE/bare/pg_wal.tar.gz" -C "$PGDATA/pg_wal"
  touch "$PGDATA/recovery.signal"
  printf "restore_command = '%s'\nrecovery_target_action = 'promote'\n" "$1" >>"$PGDATA/postgresql.auto.conf"
  chown -R "$OWNER" "$PGDATA"; chmod 700 "$PGDATA"
  : >"$SITE/replay.log"; chown "$OWNER" "$SITE/replay.log"
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -l "$SITE/replay.log" -W start >/dev/null
  until [ "$(psql -XAtc 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.2; done
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  local start end segs
  start=$(grep -m1 'redo starts at' "$SITE/replay.log" | awk '{print $2}')
  end=$(grep -m1 'redo done at' "$SITE/replay.log" | awk '{print $2}')
  segs=$(grep -c 'restored log file' "$SITE/replay.log")
  awk -v a="$start" -v b="$end" -v n="$segs" 'BEGIN {
    split(a, x, ":"); split(b, y, ":");
    printf "%.3f %d\n", (y[1]*3600 + y[2]*60 + y[3]) - (x[1]*3600 + x[2]*60 + x[3]), n }'
}
read -r t_pgkeep n_pgkeep < <(replay "$PGKEEP wal fetch --archive $SITE/wal %f %p")
read -r t_cp n_cp < <(replay "cp $SITE/plain/%f %p")
printf '4. replay:           pgkeep wal fetch %ss for %d segments  vs  cp %ss for %d segments  ratio %sx\n' \
  "$t_pgkeep" "$n_pgkeep" "$t_cp" "$n_cp" "$(ratio "$t_pgkeep" "$t_cp")"
