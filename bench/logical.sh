#!/usr/bin/env bash
# Benchmark (not a test): `pgkeep backup logical` and `pgkeep restore dump` against the bare
# PostgreSQL tools and the seed-style shell pipeline, all measured in one run on one machine.
#
# Usage: bench/logical.sh [SCALE] [TEXT_ROWS]
#   SCALE      pgbench scale (default 50; 100 is about 1.5 GB)
#   TEXT_ROWS  rows of random md5 text added to the database (default 2000000). pgbench's own
#              filler compresses about 1000x, so without this compression would cost nothing.
# Environment: PGKEEP (binary, default target/release/pgkeep, built when missing),
#              PGKEEP_PG_BIN (PostgreSQL bin dir), BENCH_DIR (where the throwaway cluster and the
#              dumps go, default /var/tmp), JOBS (default 2), REPEAT (default 2: each contender
#              runs REPEAT times, interleaved with the others, and its best time counts, so
#              neither goes first with cold caches or pays for the other's checkpoint).
#
# Prints the wall time of each contender and the ratios:
#   pgkeep backup logical  /  bare `pg_dump -Fd -j2`            (target: <= 1.15)
#   pgkeep backup logical  /  seed pipeline                     (target: <= 0.5)
#     seed pipeline = pg_dump -Fd -j2; pg_dump | gzip; pg_dumpall -g; psql > tsv; tar czf
#   pgkeep restore dump    /  bare `pg_restore -j2` (into a fresh database each)  (target: <= 1.1)
set -euo pipefail

SCALE=${1:-50}
TEXT_ROWS=${2:-2000000}
JOBS=${JOBS:-2}
REPEAT=${REPEAT:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGKEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PGKEEP=${PGKEEP:-$ROOT/target/release/pgkeep}
if [ ! -x "$PGKEEP" ]; then
    (cd "$ROOT" && cargo build --release -p pgkeep)
fi
export PATH="$PGBIN:$PATH"

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pgkeep-bench.XXXXXX")
chmod 0755 "$WORK"
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    as_pg pg_ctl -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/run" "$WORK/backups"
[ "$(id -u)" = 0 ] && chown postgres "$WORK" "$WORK/run"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg initdb -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$WORK/run'
listen_addresses = ''
shared_buffers = 256MB
max_wal_size = 4GB
EOF
as_pg pg_ctl -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

export PGHOST="$WORK/run" PGPORT="$PORT" PGUSER=postgres
export PGKEEP_RUN_DIR="$WORK/run" PGKEEP_BACKUPS="$WORK/backups" PGKEEP_PG_BIN="$PGBIN"
export PGKEEP_CONFIG=/dev/null PGKEEP_TARGET=local
unset PGPASSWORD PGDATABASE

echo "== building the database: pgbench scale $SCALE + $TEXT_ROWS rows of random text"
createdb bench
pgbench -i -q -s "$SCALE" bench >/dev/null 2>&1
psql -X -q -d bench -c "create table random_text as select g as id, md5(random()::text) || md5(random()::text) || md5(random()::text) as t from generate_series(1, $TEXT_ROWS) g" \
    -c "alter table random_text add primary key (id)" -c "vacuum analyze"
echo "database size: $(psql -X -Atc "select pg_size_pretty(pg_database_size('bench'))" -d bench), cores: $(nproc), jobs: $JOBS"
echo "pg_dump: $(pg_dump --version); pgkeep: $("$PGKEEP" --version)"

# wall time of a command in seconds (3 decimals)
timed() {
    sync
    local s e
    s=$(date +%s%N)
    # (errexit is off inside $(...): a failed run must not be timed as a fast one)
    "$@" || { echo "bench: $* failed" >&2; return 1; }
    e=$(date +%s%N)
    echo $(((e - s) / 1000000)) | awk '{printf "%.3f", $1 / 1000}'
}

bare_dump() { pg_dump -Fd -j "$JOBS" -f "$WORK/bare.dir" bench; }
pgkeep_backup() { PGKEEP_DATABASE=bench "$PGKEEP" -q backup logical -j "$JOBS" >/dev/null; }
seed_pipeline() {
    local d="$WORK/seed"
    mkdir -p "$d"
    pg_dump -Fd -j "$JOBS" -f "$d/records.dir" bench
    pg_dump bench | gzip >"$d/records.sql.gz"
    pg_dumpall -g >"$d/globals.sql"
    psql -X -d bench -AtF $'\t' -c "select name, setting, unit, source from pg_settings" >"$d/pg_settings.tsv"
    psql -X -d bench -AtF $'\t' -c "select extname, extversion from pg_extension" >"$d/extensions.tsv"
    tar czf "$WORK/seed-nightly.tar.gz" -C "$d" .
}
bare_restore() {
    createdb bench_bare
    pg_restore -j "$JOBS" -d bench_bare "$WORK/bare.dir"
}
# pgkeep's log (timestamps and step names) is kept per run for the step breakdown below.
pgkeep_restore() {
    PGKEEP_DATABASE=bench_pgkeep PGKEEP_LOG=info "$PGKEEP" --log-format text restore dump -j "$JOBS" --json \
        >/dev/null 2>"$WORK/restore-$1.log" || { cat "$WORK/restore-$1.log" >&2; return 1; }
}
# Seconds from each `step=` log line to the next one (the last step, `done`, has no length).
steps() {
    python3 - "$1" <<'PY'
import re, sys
from datetime import datetime
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)\s+\S+\s.*?step=\"?([\w-]+)", line)
    if m:
        rows.append((datetime.fromisoformat(m.group(1).replace("Z", "+00:00")), m.group(2)))
for (t, name), (t2, _) in zip(rows, rows[1:]):
    print(f"    {name:<16} {(t2 - t).total_seconds():6.3f} s")
PY
}

best() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || a + 0 < b + 0) print a; else print b }'; }
T_BARE=""; T_PGKEEP=""; T_BARE_R=""; T_PGKEEP_R=""; BEST_R=1

echo "== backup (best of $REPEAT, interleaved)"
for i in $(seq "$REPEAT"); do
    rm -rf "$WORK/bare.dir"
    rm -f "$WORK"/backups/nightly-*.tar.gz
    t=$(timed bare_dump); echo "  run $i: bare pg_dump -Fd -j$JOBS ${t}s"; T_BARE=$(best "$t" "$T_BARE")
    t=$(timed pgkeep_backup); echo "  run $i: pgkeep backup logical ${t}s"; T_PGKEEP=$(best "$t" "$T_PGKEEP")
done
echo "bare pg_dump -Fd -j$JOBS        ${T_BARE}s  $(du -sb "$WORK/bare.dir" | cut -f1) bytes"
echo "pgkeep backup logical          ${T_PGKEEP}s  $(du -cb "$WORK"/backups/nightly-*.tar.gz | tail -1 | cut -f1) bytes"
T_SEED=$(timed seed_pipeline)
echo "seed-style pipeline            ${T_SEED}s  $(du -b "$WORK/seed-nightly.tar.gz" | cut -f1) bytes"
rm -rf "$WORK/seed" "$WORK/seed-nightly.tar.gz"

echo "== restore (each into a fresh database, nothing else restored beside it; best of $REPEAT, interleaved)"
for i in $(seq "$REPEAT"); do
    dropdb --if-exists bench_bare 2>/dev/null; dropdb --if-exists bench_pgkeep 2>/dev/null
    psql -X -q -d postgres -c checkpoint
    t=$(timed bare_restore); echo "  run $i: bare pg_restore -j$JOBS ${t}s"; T_BARE_R=$(best "$t" "$T_BARE_R")
    # The restored copy goes before the next contender runs: autovacuum would otherwise
    # vacuum and analyze its fresh 1 GB beside that contender's restore.
    dropdb bench_bare
    psql -X -q -d postgres -c checkpoint
    t=$(timed pgkeep_restore "$i"); echo "  run $i: pgkeep restore dump ${t}s"
    [ "$(best "$t" "$T_PGKEEP_R")" = "$t" ] && BEST_R=$i
    T_PGKEEP_R=$(best "$t" "$T_PGKEEP_R")
done
echo "pgkeep restore dump, steps of its best run (run $BEST_R; from its log):"
steps "$WORK/restore-$BEST_R.log"
# How many of the checks (exact count, ANALYZE) were taken beside pg_restore and kept.
grep -o 'checks taken beside pg_restore.*' "$WORK/restore-$BEST_R.log" | sed 's/^/    /' || true
echo "bare pg_restore -j$JOBS          ${T_BARE_R}s"
echo "pgkeep restore dump            ${T_PGKEEP_R}s  (verify + extract + globals + pg_restore + ANALYZE + matviews + exact counts)"

echo "== ratios"
awk -v a="$T_PGKEEP" -v b="$T_BARE" -v s="$T_SEED" -v r="$T_PGKEEP_R" -v br="$T_BARE_R" 'BEGIN {
    printf "backup  pgkeep / bare pg_dump -Fd -j2   %.2fx  (target <= 1.15)\n", a / b
    printf "backup  pgkeep / seed pipeline          %.2fx  (target <= 0.50)\n", a / s
    printf "restore pgkeep / bare pg_restore -j2    %.2fx  (target <= 1.10)\n", r / br
}'
