#!/usr/bin/env bash
# Benchmark (not a test): what `wal.stream = sync` costs a committing client. pgbench (TPC-B,
# one client, so every transaction waits for its own commit) against one throwaway cluster with
# archive_command = `pgkeep wal push`, in three modes interleaved ROUNDS times:
#   off    no stream
#   async  `pgkeep wal stream` beside the server
#   sync   `pgkeep wal stream --synchronous` and synchronous_standby_names = 'pgkeep'
# Prints each mode's best and median TPS and mean latency, and sync's latency / off's.
#
# Usage: bench/stream_latency.sh [SECONDS=15] ; env: ROUNDS (2), PGKEEP (target/debug/pgkeep),
# PGKEEP_PG_BIN, BENCH_DIR (/var/tmp). Runs as root (the server and the stream run as postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-15}
ROUNDS=${ROUNDS:-2}
PGBIN=${PGKEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PGKEEP=${PGKEEP:-$PWD/target/debug/pgkeep}
[ -x "$PGKEEP" ] || cargo build -p pgkeep
U=postgres
DIR=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pgkeep-stream-bench.XXXX")
chown $U "$DIR"; chmod 755 "$DIR"
PORT=55433
as() { runuser -u $U -- env "$@"; }
cleanup() {
    [ -n "${STREAM:-}" ] && kill "$STREAM" 2>/dev/null || true
    as "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
mkdir -p "$DIR/wal" && chown $U "$DIR/wal"
as "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
cat >> "$DIR/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
archive_mode = on
archive_command = '$PGKEEP wal push --archive $DIR/wal %p'
EOF
as "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w start >/dev/null
PSQL() { as "$PGBIN/psql" -h "$DIR" -p $PORT -U postgres -Atqc "$1" postgres; }
as "$PGBIN/pgbench" -h "$DIR" -p $PORT -U postgres -i -s 5 -q postgres >/dev/null 2>&1
ENV=(PGKEEP_CONFIG=/dev/null PGHOST="$DIR" PGPORT=$PORT PGUSER=postgres PGKEEP_DATABASE=postgres PGKEEP_WAL_ARCHIVE="$DIR/wal" PGKEEP_PG_BIN="$PGBIN")

run_mode() {
    local mode=$1 out
    STREAM=
    PSQL "alter system set synchronous_standby_names = '$([ "$mode" = sync ] && echo pgkeep)'" >/dev/null
    PSQL "select pg_reload_conf()" >/dev/null
    if [ "$mode" != off ]; then
        # setpriv execs (runuser forks and does not pass SIGTERM on), so $! is the stream
        # itself; its stdout must not hold this function's pipe open.
        setpriv --reuid=$U --regid=$U --init-groups env "${ENV[@]}" "$PGKEEP" wal stream \
            $([ "$mode" = sync ] && echo --synchronous) >/dev/null 2>>"$DIR/stream.log" &
        STREAM=$!
        local n=0
        # In sync mode the stream must be the synchronous standby, or the figure measures nothing.
        local want="state = 'streaming'"
        [ "$mode" = sync ] && want="$want and sync_state = 'sync'"
        until [ "$(PSQL "select count(*) from pg_stat_replication where application_name = 'pgkeep' and $want")" = 1 ]; do
            n=$((n + 1)); [ $n -lt 150 ] || { echo "the stream did not connect:" >&2; tail -5 "$DIR/stream.log" >&2; exit 1; }
            sleep 0.2
        done
    fi
    out=$(as "$PGBIN/pgbench" -h "$DIR" -p $PORT -U postgres -n -c 1 -T "$SECONDS_PER_RUN" postgres 2>&1)
    if [ -n "$STREAM" ]; then kill "$STREAM"; wait "$STREAM" 2>/dev/null || true; STREAM=; fi
    # pgbench prints the latency line before the tps line: pick each by name.
    echo "$mode $(echo "$out" | awk '/^tps/{print $3}') $(echo "$out" | awk '/latency average/{print $4}')"
}
: > "$DIR/results"
for r in $(seq "$ROUNDS"); do
    for m in off async sync; do run_mode $m | tee -a "$DIR/results"; done
done
echo "best of $ROUNDS (tps, latency ms):"
for m in off async sync; do
    sort -k2 -nr "$DIR/results" | awk -v m=$m '$1==m{print; exit}'
done | tee "$DIR/best"
awk '$1=="off"{o=$3} $1=="sync"{s=$3} END{printf "sync latency / off latency (best): %.2fx\n", s/o}' "$DIR/best"
# Medians: one slow round (the disk's fsync time moves a lot on a shared machine) does not move them.
echo "median of $ROUNDS (tps, latency ms):"
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for m in off async sync; do
    echo "$m $(awk -v m=$m '$1==m{print $2}' "$DIR/results" | median) $(awk -v m=$m '$1==m{print $3}' "$DIR/results" | median)"
done | tee "$DIR/median"
awk '$1=="off"{o=$3} $1=="sync"{s=$3} $1=="async"{a=$3} END{printf "median latency: async / off %.2fx, sync / off %.2fx (+%.3f ms a commit)\n", a/o, s/o, s-o}' "$DIR/median"
