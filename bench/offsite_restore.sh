#!/usr/bin/env bash
# Benchmark (not a test, issue 15): one real base-backup bundle against a real S3 server (moto)
# on loopback, per data size, each on its own throwaway cluster:
#   1. `pgkeep offsite sync` of the bundle alone, encrypted and with `offsite.encrypt = false`,
#      next to the same file PUT with curl (the HTTP floor of the server, as bench/offsite.sh 4.)
#   2. `pgkeep bootstrap basebackup --yes` from the local bundle and archive vs the same with
#      the bundle and the archived WAL moved away (`--offsite`, the identity set): the same
#      cluster, the same bundle, the same WAL (what the backup is followed by).
#
# Usage: bench/offsite_restore.sh [SIZE_MIB ...]   (default `512 1024`)
#   SIZE_MIB of incompressible rows (pgcrypto `gen_random_bytes(1024)`, 7 a page), so the zstd
#   bundle is about as big as the data. The load is not archived (a flag file, as in
#   bench/restore.sh): no restore from the backup that follows needs it.
# Environment: PGKEEP (binary, default target/release/pgkeep, built when missing), PGKEEP_PG_BIN,
#   BENCH_DIR (default /var/tmp), REPEAT (default 2: restore rounds per contender, interleaved,
#   alternating who goes first, the best counts), WAL_MIB (default 128: random rows written
#   after the backup and archived; the WAL both restores replay), LOAD_WAL (default 0; 1: the
#   load is archived too, so the archive and the off-site copy also hold WAL older than the
#   bundle, as off-site does when retention keeps older base backups; no restore reads it).
# Needs root (the server runs as `postgres` via runuser, pgkeep as root, as bench/restore.sh)
# and moto_server. Page caches are not dropped (the machine is shared).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-2}
WAL_MIB=${WAL_MIB:-128}
LOAD_WAL=${LOAD_WAL:-0}
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(512 1024); fi
PGBIN=${PGKEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PGKEEP=${PGKEEP:-$ROOT/target/release/pgkeep}
if [ "$(id -u)" != 0 ]; then
    echo "run as root: the server runs as postgres (runuser), pgkeep as root" >&2
    exit 2
fi
[ -x "$PGKEEP" ] || (cd "$ROOT" && cargo build --release -p pgkeep)
command -v moto_server >/dev/null || { echo "moto_server missing: python3 -m pip install 'moto[server]'" >&2; exit 1; }
export PATH="$PGBIN:$PATH"

as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
best() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || a + 0 < b + 0) print a; else print b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f", a / 1048576 }'; }
rate() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / 1048576 / t }'; } # MiB/s
load() { cut -d' ' -f1-3 /proc/loadavg; }
# Seconds from $1 (epoch) to the first pgkeep log line of file $2 that contains $3.
at_line() {
    python3 - "$@" <<'EOF'
import sys, re
from datetime import datetime, timezone
t0, log, text = float(sys.argv[1]), sys.argv[2], sys.argv[3]
for line in open(log, errors="replace"):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    if m and text in line:
        t = datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
        print(f"{t.timestamp() - t0:.2f}"); break
else:
    print("?")
EOF
}

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pgkeep-offsite-restore.XXXXXX")
chmod 0755 "$WORK"
PGDATA=""
MOTO=""
stop_moto() { [ -n "$MOTO" ] && { kill "$MOTO" 2>/dev/null || true; wait "$MOTO" 2>/dev/null || true; }; MOTO=""; }
cleanup() {
    [ -n "$PGDATA" ] && as_pg pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    stop_moto
    rm -rf "$WORK"
}
trap cleanup EXIT
AUTH='Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'
# A fresh moto per size (it keeps every object; a restart frees them).
start_moto() {
    stop_moto
    PORT_S3=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    moto_server -H 127.0.0.1 -p "$PORT_S3" >"$WORK/moto.log" 2>&1 &
    MOTO=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT_S3/" && break; sleep 0.1; done
    curl -sf -X PUT -H "$AUTH" "http://127.0.0.1:$PORT_S3/bench" >/dev/null
    export PGKEEP_OFFSITE_ENDPOINT=http://127.0.0.1:$PORT_S3
}
stop_server() { as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; }
# Random rows of about $1 MiB (7 rows of 1024 random bytes fill a page).
random_rows() { psql -X -q -c "insert into r select gen_random_bytes(1024) from generate_series(1, $(($1 * 128 * 7)))"; }

RECIPIENT=$("$PGKEEP" offsite keygen --out "$WORK/id.key" 2>/dev/null)
printf '[offsite]\nencrypt = false\n' >"$WORK/plain.toml"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export PGKEEP_OFFSITE_RECIPIENTS=$RECIPIENT PGKEEP_OFFSITE_IDENTITY_FILE=$WORK/id.key
unset PGKEEP_OFFSITE_URL PGKEEP_LOG

echo "== pgkeep off-site bundle bench: $(date -u '+%F %H:%M UTC'), $(nproc) cores, load average $(load)"
echo "   $("$PGKEEP" --version), PostgreSQL $(postgres --version | awk '{print $3}'), moto $(python3 -c 'import moto; print(moto.__version__)')"
echo "   sizes (MiB): ${SIZES[*]}; REPEAT=$REPEAT, WAL_MIB=$WAL_MIB, LOAD_WAL=$LOAD_WAL"
SUMMARY=()
for SIZE in "${SIZES[@]}"; do
    SITE=$WORK/size$SIZE
    PGROOT=$SITE/volume
    PGDATA=$PGROOT/data
    WAL=$SITE/wal
    BK=$SITE/backups
    mkdir -p "$PGROOT" "$WAL" "$BK" "$SITE/run" "$SITE/logs" "$SITE/aside/backups" "$SITE/aside/wal" "$SITE/nowal"
    chown -R postgres: "$SITE"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export PGHOST=$SITE/run PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
    export PGKEEP_CONFIG=/dev/null PGKEEP_TARGET=local PGKEEP_PGROOT=$PGROOT PGDATA
    export PGKEEP_WAL_ARCHIVE=$WAL PGKEEP_BACKUPS=$BK PGKEEP_RUN_DIR=$SITE/run
    export PGKEEP_PG_BIN=$PGBIN PGKEEP_UID=$(id -u postgres) PGKEEP_GID=$(id -g postgres)
    start_moto

    as_pg initdb -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$SITE/run'
listen_addresses = ''
wal_level = replica
max_wal_size = 1GB
log_timezone = 'UTC'
log_line_prefix = '%m [%p] '
archive_mode = on
archive_command = 'test -e $SITE/no-archive || $PGKEEP wal push --archive $WAL %p'
EOF
    [ "$LOAD_WAL" = 1 ] || touch "$SITE/no-archive"
    as_pg pg_ctl -D "$PGDATA" -l "$SITE/logs/server.log" -w start >/dev/null
    echo
    echo "== $SIZE MiB of random rows"
    psql -X -q -c "create extension pgcrypto" -c "create table r (b bytea)"
    random_rows "$SIZE"
    psql -X -q -c checkpoint
    rm -f "$SITE/no-archive"
    "$PGKEEP" -q backup physical --no-prune >/dev/null
    random_rows "$WAL_MIB"
    LAST=$(psql -X -Atc "select pg_walfile_name(pg_current_wal_lsn())")
    psql -X -Atc "select pg_switch_wal()" >/dev/null
    deadline=$((SECONDS + 600))
    until [ "$(psql -X -Atc "select coalesce(last_archived_wal, '') >= '$LAST' from pg_stat_archiver")" = t ]; do
        [ $SECONDS -gt $deadline ] && { echo "archiving did not catch up" >&2; exit 1; }
        sleep 0.2
    done
    DB_BYTES=$(psql -X -Atc "select pg_database_size('postgres')")
    stop_server
    touch "$SITE/no-archive"
    BUNDLE=$(ls "$BK"/basebackup-*)
    B_BYTES=$(stat -c %s "$BUNDLE")
    WAL_BYTES=$(du -cb "$WAL" | tail -1 | cut -f1)
    echo "   database $(mib "$DB_BYTES") MiB; bundle $(basename "$BUNDLE") $(mib "$B_BYTES") MiB;" \
        "archive $(mib "$WAL_BYTES") MiB ($(ls "$WAL" | wc -l) files); load average $(load)"

    # --- 1. the bundle alone up: curl, pgkeep plain, pgkeep encrypted --------------------------
    echo "-- 1. one bundle up ($(mib "$B_BYTES") MiB), load average $(load)"
    sync
    a=$(now); curl -sf -X PUT -T "$BUNDLE" -H "$AUTH" "http://127.0.0.1:$PORT_S3/bench/curl/$(basename "$BUNDLE")" >/dev/null; b=$(now)
    T_C=$(secs "$a" "$b")
    # No WAL archive here: the bundle is all that goes up.
    up() { # PREFIX [--config FILE]
        local p=$1; shift
        PGKEEP_WAL_ARCHIVE=$SITE/nowal PGKEEP_OFFSITE_URL=s3://bench/$p "$PGKEEP" "$@" -q offsite sync --no-prune >/dev/null
    }
    a=$(now); up plain --config "$WORK/plain.toml"; b=$(now); T_P=$(secs "$a" "$b")
    a=$(now); up enc; b=$(now); T_E=$(secs "$a" "$b")
    a=$(now); "$PGKEEP" -q backups verify "$(basename "$BUNDLE")" >/dev/null; b=$(now); T_V=$(secs "$a" "$b")
    printf '   curl PUT (one request, no verify, no encryption) %7.2f s %7s MiB/s\n' "$T_C" "$(rate "$B_BYTES" "$T_C")"
    printf '   pgkeep offsite sync, encrypt = false            %7.2f s %7s MiB/s  %sx curl\n' "$T_P" "$(rate "$B_BYTES" "$T_P")" "$(ratio "$T_P" "$T_C")"
    printf '   pgkeep offsite sync, encrypted                  %7.2f s %7s MiB/s  %sx curl, %sx plain\n' "$T_E" "$(rate "$B_BYTES" "$T_E")" "$(ratio "$T_E" "$T_C")" "$(ratio "$T_E" "$T_P")"
    printf '   (of which the verify before upload, alone: pgkeep backups verify %.2f s)\n' "$T_V"

    # --- 2. restore: local vs off-site -------------------------------------------------------
    export PGKEEP_OFFSITE_URL=s3://bench/enc
    a=$(now); "$PGKEEP" -q offsite sync --no-prune >/dev/null; b=$(now)
    echo "   (the archive's $(ls "$WAL" | wc -l) files up to the same prefix, encrypted: $(secs "$a" "$b") s)"
    unset PGKEEP_OFFSITE_URL
    echo "-- 2. bootstrap basebackup --yes until it returns (best of $REPEAT, interleaved), load average $(load)"
    T_L=""; T_O=""; T_D=""
    restore_local() {
        local a b out=$SITE/logs/local-$1.out log=$SITE/logs/local-$1.log
        sync; a=$(now)
        "$PGKEEP" bootstrap basebackup --yes >"$out" 2>"$log" || { cat "$out" "$log" >&2; exit 1; }
        b=$(now)
        echo "   round $1: local                      $(secs "$a" "$b") s"
        T_L=$(best "$(secs "$a" "$b")" "$T_L")
    }
    restore_offsite() {
        local a b d out=$SITE/logs/offsite-$1.out log=$SITE/logs/offsite-$1.log
        find "$BK" -mindepth 1 -maxdepth 1 -exec mv -t "$SITE/aside/backups" {} +
        find "$WAL" -mindepth 1 -maxdepth 1 -exec mv -t "$SITE/aside/wal" {} +
        sync; a=$(now)
        PGKEEP_OFFSITE_URL=s3://bench/enc "$PGKEEP" bootstrap basebackup --offsite --yes >"$out" 2>"$log" ||
            { cat "$out" "$log" >&2; exit 1; }
        b=$(now)
        d=$(at_line "$a" "$log" "off-site copies are on the local volumes")
        echo "   round $1: off-site                   $(secs "$a" "$b") s (bundle and WAL down, decrypted, checked after $d s;" \
            "$(grep -o 'wal_files=[0-9]*' "$log" | head -1))"
        if [ -z "$T_O" ] || [ "$(best "$(secs "$a" "$b")" "$T_O")" = "$(secs "$a" "$b")" ]; then T_D=$d; fi
        T_O=$(best "$(secs "$a" "$b")" "$T_O")
        find "$BK" "$WAL" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
        find "$SITE/aside/backups" -mindepth 1 -maxdepth 1 -exec mv -t "$BK" {} +
        find "$SITE/aside/wal" -mindepth 1 -maxdepth 1 -exec mv -t "$WAL" {} +
    }
    for r in $(seq "$REPEAT"); do
        if [ $((r % 2)) = 1 ]; then restore_local "$r"; restore_offsite "$r"; else restore_offsite "$r"; restore_local "$r"; fi
    done
    D_BYTES=$((B_BYTES + WAL_BYTES))
    printf '   local %.2f s, off-site %.2f s: %sx (the download part %s s, %s MiB/s for %s MiB)\n' \
        "$T_L" "$T_O" "$(ratio "$T_O" "$T_L")" "$T_D" "$(rate "$D_BYTES" "$T_D")" "$(mib "$D_BYTES")"
    SUMMARY+=("$(printf '%5s MiB | bundle %s MiB: curl %s, plain %s, encrypted %s MiB/s (%sx curl, %sx plain) | restore local %s s, off-site %s s = %sx' \
        "$SIZE" "$(mib "$B_BYTES")" "$(rate "$B_BYTES" "$T_C")" "$(rate "$B_BYTES" "$T_P")" "$(rate "$B_BYTES" "$T_E")" \
        "$(ratio "$T_E" "$T_C")" "$(ratio "$T_E" "$T_P")" "$T_L" "$T_O" "$(ratio "$T_O" "$T_L")")")
    stop_server
    rm -rf "$SITE"
    PGDATA=""
done

echo
echo "== summary; load average now $(load)"
for l in "${SUMMARY[@]}"; do echo "   $l"; done
