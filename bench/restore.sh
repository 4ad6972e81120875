#!/usr/bin/env bash
# Benchmark (not a test): pgkeep against pgBackRest on one throwaway cluster, the same data and
# the same WAL, measured in the same run (issue 17): full physical backup, restore + WAL replay
# until the server accepts writes, and archiving one segment. Then where pgkeep's restore time
# goes, step by step.
#
# Usage: bench/restore.sh [SCALE:TEXT_ROWS ...]
#   One argument per data size, each on its own fresh cluster, in order (default
#   `10:500000 20:1000000`: the second doubles the data). SCALE is the pgbench scale (10 is about
#   160 MB), TEXT_ROWS rows of random md5 text (~140 bytes each on disk; pgbench's own filler
#   compresses ~1000x, the text only ~2x, so compression is not free).
# Environment: PGKEEP (binary, default target/release/pgkeep, built when missing),
#   PGKEEP_PG_BIN (PostgreSQL bin dir), BENCH_DIR (where the cluster, the archives and the
#   repositories go, default /var/tmp), REPEAT (default 2: rounds per contender, interleaved and
#   alternating who goes first, the best counts), WAL_SECONDS (default 20: `pgbench -c2 -j2 -T`
#   after the backups; the WAL both restores replay), PUSH_SEGMENTS (default 8: segments per
#   archive-push round, 3 rounds).
#
# Needs root (the server runs as `postgres` via runuser) and pgBackRest: installs Debian's
# (`apt-get install -y pgbackrest`, 2.45) when missing and says so. pgBackRest runs with
# process-max = nproc, compress-type=zst (its default level 3), its repository on the same disk,
# archive-get synchronous (its default). The archive_command pushes each segment to both
# (`pgkeep wal push` then `pgbackrest archive-push`); it is switched off (a flag file) while the
# restore rounds run, so the servers the restores promote do not add timelines to the archives
# the next round reads. Page caches are not dropped (the machine is shared): both restores read
# a warm bundle / repository.
#
# Prints, per size:
#   backup   `pgkeep backup physical` / `pgbackrest backup --type=full`: time and stored size
#            (pgkeep: the bundle, its WAL included; pgBackRest: the backup plus the archived WAL
#            it needs)                                       target <= 0.8x time at <= 1.1x size
#   restore  `pgkeep bootstrap basebackup --yes --leave-running` / `pgbackrest restore` +
#            `pg_ctl start`, each from a full PGDATA that is emptied (pgBackRest's `rm` is timed),
#            until `select pg_is_in_recovery()` says f. No promote is needed for pgBackRest: its
#            default type replays to the end of the archive and ends recovery itself.
#                                                                              target <= 0.6x
#   wal push `pgkeep wal push` / `pgbackrest archive-push` per 16 MiB segment, into a fresh
#            archive each round (also `cp` + `sync FILE`)   target <= 0.5x (and <= 1.5x cp+sync)
#   steps    of the best restore round of each, from pgkeep's log lines and the server log, and
#            the pieces alone: `pgkeep backups verify`, the bundle's decompressor (`zstd -dc`, or
#            `gzip -dc` for an older gzip bundle) alone, with sha256sum, and into `tar -x`, `sync`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPEAT=${REPEAT:-2}
WAL_SECONDS=${WAL_SECONDS:-20}
PUSH_N=${PUSH_SEGMENTS:-8}
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(10:500000 20:1000000); fi
PGBIN=${PGKEEP_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PGKEEP=${PGKEEP:-$ROOT/target/release/pgkeep}
if [ "$(id -u)" != 0 ]; then
    echo "run as root: the server and pgBackRest run as postgres (runuser), pgkeep as root" >&2
    exit 2
fi
if [ ! -x "$PGKEEP" ]; then
    (cd "$ROOT" && cargo build --release -p pgkeep)
fi
if ! command -v pgbackrest >/dev/null; then
    echo "== pgbackrest is missing: installing it (apt-get install -y pgbackrest)"
    apt-get install -y pgbackrest >/dev/null
fi
export PATH="$PGBIN:$PATH"
CORES=$(nproc)

as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
best() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || a + 0 < b + 0) print a; else print b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f", a / 1048576 }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r + 0 <= t + 0) ? "met" : "NOT met" }'; }

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/pgkeep-restore-bench.XXXXXX")
chmod 0755 "$WORK"
PGDATA=""
cleanup() {
    [ -n "$PGDATA" ] && as_pg pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

stop_server() { as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; }
# Until the server answers and is out of recovery (polls every 50 ms).
wait_writable() {
    local deadline=$((SECONDS + 900))
    until [ "$(psql -X -Atc 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
        [ $SECONDS -gt $deadline ] && { echo "the server did not become writable" >&2; return 1; }
        sleep 0.05
    done
    psql -X -Atc 'select 1' >/dev/null
}

# The steps of one restore from pgkeep's log (tracing, RFC 3339) and the server log
# (log_line_prefix '%m'), as "name seconds" lines. $1 = pgkeep|pgbackrest.
steps() {
    python3 - "$@" <<'EOF'
import sys, re
from datetime import datetime, timezone
who, t0, t1, server_log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
extra = sys.argv[5] if len(sys.argv) > 5 else None
def ts_pg(line):
    m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC", line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp() if m else None
ev = {}
def first(key, t):
    ev.setdefault(key, t)
starts = 0; ready = 0; segs = 0
for line in open(server_log, errors="replace"):
    t = ts_pg(line)
    # (the log can hold an earlier server's lines: only this round's count)
    if t is None or t < t0: continue
    if "starting PostgreSQL" in line:
        starts += 1; first(f"start{starts}", t)
    elif "redo starts at" in line: first("redo_start", t)
    elif "redo done at" in line: first("redo_done", t)
    elif "database system is ready to accept connections" in line:
        ready += 1; first(f"ready{ready}", t)
    elif "database system is shut down" in line: first("shut_down", t)
    elif "restored log file" in line: segs += 1
if who == "pgkeep":
    for line in open(extra, errors="replace"):
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
        if not m: continue
        t = datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
        for key, text in [("checked", "bundle checked"), ("cleared", "emptied PGDATA"),
                          ("extract0", "extracting and verifying"),
                          ("restart0", "starting PostgreSQL")]:
            if text in line: first(key, t)
    order = [("pgkeep start-up, settings, manifest, archive checks", "t0", "checked"),
             ("extract + verify, one pass (decompress + sha256 + write)", "extract0", "cleared"),
             ("old contents aside, new in, chown, settings, spawn", "cleared", "start1"),
             ("server start to redo (data dir fsync, first segment)", "start1", "redo_start"),
             (f"replay ({segs} segments fetched)", "redo_start", "redo_done"),
             ("end of recovery (checkpoint, new timeline)", "redo_done", "ready1"),
             ("pgkeep sees it + fast stop (shutdown checkpoint)", "ready1", "shut_down"),
             ("restart with the restored configuration", "shut_down", "ready2"),
             ("until `select 1` out of recovery", "ready2", "t1")]
else:
    ev["restored"] = float(extra)
    order = [("pgbackrest restore (rm PGDATA, restore)", "t0", "restored"),
             ("pg_ctl start", "restored", "start1"),
             ("server start to redo (data dir fsync, first segment)", "start1", "redo_start"),
             (f"replay ({segs} segments fetched)", "redo_start", "redo_done"),
             ("end of recovery (checkpoint, new timeline)", "redo_done", "ready1"),
             ("until `select 1` out of recovery", "ready1", "t1")]
ev["t0"], ev["t1"] = t0, t1
for name, a, b in order:
    if a in ev and b in ev:
        print(f"      {name:<58} {ev[b] - ev[a]:7.2f} s")
    else:
        print(f"      {name:<58}       ? (no {a if a not in ev else b} line)")
print(f"      {'total':<58} {t1 - t0:7.2f} s")
EOF
}

echo "== pgkeep restore bench: $(date -u '+%F %H:%M UTC'), $CORES cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   $("$PGKEEP" --version), $(pgbackrest version), PostgreSQL $(postgres --version | awk '{print $3}')"
echo "   sizes: ${SIZES[*]}; REPEAT=$REPEAT, WAL_SECONDS=$WAL_SECONDS, PUSH_SEGMENTS=$PUSH_N"

SUMMARY=()
n=0
for size in "${SIZES[@]}"; do
    n=$((n + 1))
    SCALE=${size%%:*}
    TEXT_ROWS=${size#*:}
    SITE=$WORK/size$n
    PGROOT=$SITE/volume
    PGDATA=$PGROOT/data
    WAL=$SITE/wal
    REPO=$SITE/pgbackrest
    CONF=$SITE/pgbackrest.conf
    mkdir -p "$PGROOT" "$WAL" "$SITE/backups" "$SITE/run" "$REPO" "$SITE/logs"
    chown -R postgres: "$SITE"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export PGHOST=$SITE/run PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
    export PGKEEP_CONFIG=/dev/null PGKEEP_TARGET=local PGKEEP_PGROOT=$PGROOT PGDATA
    export PGKEEP_WAL_ARCHIVE=$WAL PGKEEP_BACKUPS=$SITE/backups PGKEEP_RUN_DIR=$SITE/run
    export PGKEEP_PG_BIN=$PGBIN PGKEEP_UID=$(id -u postgres) PGKEEP_GID=$(id -g postgres)
    unset PGKEEP_LOG

    cat >"$CONF" <<EOF
[global]
repo1-path=$REPO
repo1-retention-full=99
process-max=$CORES
compress-type=zst
start-fast=y
log-level-console=warn
log-level-file=off
lock-path=$SITE/pgbackrest-lock
spool-path=$SITE/pgbackrest-spool

[bench]
pg1-path=$PGDATA
pg1-socket-path=$SITE/run
pg1-port=$PORT
EOF
    chown postgres: "$CONF"
    BR=(pgbackrest --config="$CONF" --stanza=bench)

    as_pg initdb -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$SITE/run'
listen_addresses = ''
wal_level = replica
max_wal_senders = 4
max_wal_size = 2GB
log_timezone = 'UTC'
log_line_prefix = '%m [%p] '
log_checkpoints = on
archive_mode = on
archive_command = 'test -e $SITE/no-archive || { $PGKEEP wal push --archive $WAL %p && pgbackrest --config=$CONF --stanza=bench archive-push %p; }'
EOF
    as_pg pg_ctl -D "$PGDATA" -l "$SITE/logs/server.log" -w start >/dev/null
    as_pg "${BR[@]}" stanza-create >/dev/null
    echo
    echo "== size $n: pgbench scale $SCALE + $TEXT_ROWS rows of random text"
    pgbench -i -q -s "$SCALE" postgres >/dev/null 2>&1
    psql -X -q -c "create table random_text as select g as id, md5(random()::text) || md5(random()::text) || md5(random()::text) as t from generate_series(1, $TEXT_ROWS) g" \
        -c "alter table random_text add primary key (id)" -c "vacuum analyze" -c checkpoint
    as_pg "${BR[@]}" check >/dev/null
    DB_BYTES=$(psql -X -Atc "select sum(pg_database_size(oid)) from pg_database")
    echo "   cluster size $(mib "$DB_BYTES") MiB, load average $(cut -d' ' -f1-3 /proc/loadavg)"

    # --- backups -------------------------------------------------------------------------------
    T_KB=""; T_BB=""
    backup_pgkeep() {
        rm -f "$SITE"/backups/basebackup-*
        psql -X -q -c checkpoint; sync
        local a b; a=$(now); "$PGKEEP" -q backup physical >/dev/null; b=$(now)
        echo "   round $1: pgkeep backup physical            $(secs "$a" "$b") s"
        T_KB=$(best "$(secs "$a" "$b")" "$T_KB")
    }
    backup_pgbr() {
        psql -X -q -c checkpoint; sync
        local a b; a=$(now); as_pg "${BR[@]}" --type=full backup; b=$(now)
        echo "   round $1: pgbackrest backup --type=full     $(secs "$a" "$b") s"
        T_BB=$(best "$(secs "$a" "$b")" "$T_BB")
    }
    echo "-- backup (best of $REPEAT, interleaved)"
    for r in $(seq "$REPEAT"); do
        if [ $((r % 2)) = 1 ]; then backup_pgkeep "$r"; backup_pgbr "$r"; else backup_pgbr "$r"; backup_pgkeep "$r"; fi
    done
    BUNDLE=$(ls "$SITE"/backups/basebackup-*)
    S_K=$(stat -c %s "$BUNDLE")
    # pgBackRest: the newest backup's files plus the archived segments from its start to its stop.
    S_B=$(as_pg "${BR[@]}" info --output=json | python3 -c '
import sys, json, os, glob
info = json.load(sys.stdin)[0]
b = info["backup"][-1]
start, stop = b["archive"]["start"], b["archive"]["stop"]
repo, label = sys.argv[1], b["label"]
size = 0
for dp, _, fs in os.walk(os.path.join(repo, "backup", "bench", label)):
    size += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
for p in glob.glob(os.path.join(repo, "archive", "bench", "*", "*", "*")):
    seg = os.path.basename(p)[:24]
    if len(seg) == 24 and start <= seg <= stop:
        size += os.path.getsize(p)
print(size)' "$REPO")
    printf '   pgkeep     %6.2f s  %8s MiB (%s)\n' "$T_KB" "$(mib "$S_K")" "$(basename "$BUNDLE")"
    printf '   pgbackrest %6.2f s  %8s MiB (backup + its WAL, zst, process-max=%d)\n' "$T_BB" "$(mib "$S_B")" "$CORES"

    # --- the WAL both restores replay --------------------------------------------------------
    echo "-- pgbench -c2 -j2 -T $WAL_SECONDS (WAL archived by both), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    L0=$(psql -X -Atc "select pg_current_wal_lsn()")
    pgbench -n -c 2 -j 2 -T "$WAL_SECONDS" postgres 2>/dev/null | grep -E '^tps' | sed 's/^/   /' || true
    L1=$(psql -X -Atc "select pg_current_wal_lsn()")
    LAST=$(psql -X -Atc "select pg_walfile_name(pg_current_wal_lsn())")
    psql -X -Atc "select pg_switch_wal()" >/dev/null
    deadline=$((SECONDS + 300))
    until [ "$(psql -X -Atc "select coalesce(last_archived_wal, '') >= '$LAST' from pg_stat_archiver")" = t ]; do
        [ $SECONDS -gt $deadline ] && { echo "archiving did not catch up" >&2; exit 1; }
        sleep 0.2
    done
    WAL_BYTES=$(psql -X -Atc "select pg_wal_lsn_diff('$L1', '$L0')::bigint")
    echo "   $(mib "$WAL_BYTES") MiB of WAL written, archived by both through $LAST"
    stop_server
    touch "$SITE/no-archive"

    # --- restores -----------------------------------------------------------------------------
    T_KR=""; T_BR=""; BEST_K=""; BEST_B=""
    restore_pgkeep() {
        stop_server; sync
        local a b out=$SITE/logs/pgkeep-$1.out log=$SITE/logs/pgkeep-$1.log
        a=$(now)
        "$PGKEEP" bootstrap basebackup --yes --leave-running >"$out" 2>"$log" ||
            { cat "$out" "$log" >&2; exit 1; }
        wait_writable
        b=$(now)
        local t; t=$(secs "$a" "$b")
        echo "   round $1: pgkeep bootstrap basebackup       $t s"
        if [ -z "$T_KR" ] || [ "$(best "$t" "$T_KR")" = "$t" ]; then
            T_KR=$t
            BEST_K=(pgkeep "$a" "$b" "$(grep -o 'server log: [^)]*' "$out" | cut -d' ' -f3)" "$log")
        fi
    }
    restore_pgbr() {
        stop_server; sync
        local a b m log=$SITE/logs/pgbackrest-$1.server.log
        : >"$log"; chown postgres: "$log"
        a=$(now)
        rm -rf "$PGDATA"; install -d -m 0700 -o postgres -g postgres "$PGDATA"
        as_pg "${BR[@]}" restore
        m=$(now)
        BR_RESTORE_COMMAND=$(grep -h '^restore_command' "$PGDATA/postgresql.auto.conf" || echo '?')
        as_pg pg_ctl -D "$PGDATA" -l "$log" -W start >/dev/null
        wait_writable
        b=$(now)
        local t; t=$(secs "$a" "$b")
        echo "   round $1: pgbackrest restore + start        $t s"
        if [ -z "$T_BR" ] || [ "$(best "$t" "$T_BR")" = "$t" ]; then
            T_BR=$t
            BEST_B=(pgbackrest "$a" "$b" "$log" "$m")
        fi
    }
    echo "-- restore + replay until writable (best of $REPEAT, interleaved), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for r in $(seq "$REPEAT"); do
        if [ $((r % 2)) = 1 ]; then restore_pgkeep "$r"; restore_pgbr "$r"; else restore_pgbr "$r"; restore_pgkeep "$r"; fi
    done
    echo "   pgBackRest's $BR_RESTORE_COMMAND"
    stop_server
    echo "-- steps of the best round"
    echo "   pgkeep (${T_KR} s):"
    steps "${BEST_K[@]}"
    echo "   pgbackrest (${T_BR} s):"
    steps "${BEST_B[@]}"

    # --- the pieces of pgkeep's restore alone --------------------------------------------------
    echo "-- pieces alone (one run each), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    piece() { # label, command...
        local label=$1 a b; shift
        a=$(now); "$@"; b=$(now)
        printf '   %-62s %6.2f s\n' "$label" "$(secs "$a" "$b")"
    }
    SCRATCH=$SITE/scratch
    sync
    piece "pgkeep backups verify $(basename "$BUNDLE")" sh -c "'$PGKEEP' -q backups verify '$(basename "$BUNDLE")' >/dev/null"
    sync
    case "$BUNDLE" in
        *.zst) DEC="zstd -q -dc"; CODEC=zstd ;;
        *) DEC="gzip -dc"; CODEC=gzip ;;
    esac
    piece "$DEC bundle > /dev/null (decompress alone, one core)" sh -c "$DEC '$BUNDLE' >/dev/null"
    sync
    piece "$DEC bundle | sha256sum (decompress + one hash of the tar)" sh -c "$DEC '$BUNDLE' | sha256sum >/dev/null"
    mkdir -p "$SCRATCH"; sync
    piece "$DEC | tar -x (extract, no fsync)" sh -c "$DEC '$BUNDLE' | tar -x -C '$SCRATCH'"
    piece "sync (write back what tar wrote)" sync
    TAR_BYTES=$(du -sb "$SCRATCH" | cut -f1)
    rm -rf "$SCRATCH"
    printf '   sizes: tar %s MiB, bundle (%s) %s MiB, pgBackRest %s MiB\n' \
        "$(mib "$TAR_BYTES")" "$CODEC" "$(mib "$S_K")" "$(mib "$S_B")"

    # --- archiving one segment ------------------------------------------------------------------
    echo "-- archive one segment (ms per 16 MiB segment, $PUSH_N segments, best of 3 interleaved rounds)"
    SRC=$SITE/pushsrc
    mkdir -p "$SRC"
    mapfile -t segs < <(find "$WAL" -name '*.zst' -printf '%f\n' | grep -E '^[0-9A-F]{24}\.zst$' | sort | tail -n "$PUSH_N")
    for s in "${segs[@]}"; do "$PGKEEP" -q wal fetch --archive "$WAL" "${s%.zst}" "$SRC/${s%.zst}"; done
    chown -R postgres: "$SRC"
    P_CP=""; P_K=""; P_B=""
    for r in 1 2 3; do
        D=$SITE/push-$r
        mkdir -p "$D/cp" "$D/pgkeep" "$D/repo/archive/bench" "$D/repo/backup/bench"
        cp "$REPO"/archive/bench/archive.info* "$D/repo/archive/bench/"
        cp "$REPO"/backup/bench/backup.info* "$D/repo/backup/bench/"
        chown -R postgres: "$D"
        sync
        per() { awk -v t="$1" -v n="${#segs[@]}" 'BEGIN { printf "%.3f", 1000 * t / n }'; }
        a=$(now); as_pg sh -c "for f in '$SRC'/*; do cp \"\$f\" '$D/cp/' && sync \"$D/cp/\$(basename \"\$f\")\"; done"; b=$(now)
        c=$(awk -v a="$a" -v b="$b" 'BEGIN { print b - a }'); P_CP=$(best "$c" "$P_CP")
        a=$(now); as_pg sh -c "for f in '$SRC'/*; do '$PGKEEP' wal push --archive '$D/pgkeep' \"\$f\" || exit 1; done"; b=$(now)
        k=$(awk -v a="$a" -v b="$b" 'BEGIN { print b - a }'); P_K=$(best "$k" "$P_K")
        a=$(now); as_pg sh -c "for f in '$SRC'/*; do pgbackrest --config='$CONF' --stanza=bench --repo1-path='$D/repo' archive-push \"\$f\" || exit 1; done"; b=$(now)
        p=$(awk -v a="$a" -v b="$b" 'BEGIN { print b - a }'); P_B=$(best "$p" "$P_B")
        echo "   round $r: cp + sync $(per "$c") ms, pgkeep wal push $(per "$k") ms, pgbackrest archive-push $(per "$p") ms"
    done
    PK=$(per "$P_K"); PB=$(per "$P_B"); PC=$(per "$P_CP")
    PK=$(printf '%.1f' "$PK"); PB=$(printf '%.1f' "$PB"); PC=$(printf '%.1f' "$PC")
    ARCH_K=$(du -cb "$SITE"/push-1/pgkeep | tail -1 | cut -f1)
    ARCH_B=$(du -cb "$SITE"/push-1/repo/archive | tail -1 | cut -f1)
    echo "   pgkeep wal push $PK ms ($(mib "$ARCH_K") MiB stored), pgbackrest archive-push $PB ms ($(mib "$ARCH_B") MiB), cp + sync $PC ms (${#segs[@]} segments)"
    rm -rf "$SITE"/push-* "$SRC"

    # --- ratios -------------------------------------------------------------------------------
    RB=$(ratio "$T_KB" "$T_BB"); RS=$(ratio "$S_K" "$S_B"); RR=$(ratio "$T_KR" "$T_BR")
    RP=$(ratio "$PK" "$PB"); RC=$(ratio "$PK" "$PC")
    line=$(printf '%s | %s MiB | backup %ss vs %ss = %sx (%s), size %s vs %s MiB = %sx (%s) | restore %ss vs %ss = %sx (%s) | wal push %s vs %s ms = %sx (%s), vs cp+sync %s ms = %sx (%s)' \
        "$size" "$(mib "$DB_BYTES")" "$T_KB" "$T_BB" "$RB" "$(verdict "$RB" 0.8)" "$(mib "$S_K")" "$(mib "$S_B")" "$RS" "$(verdict "$RS" 1.1)" \
        "$T_KR" "$T_BR" "$RR" "$(verdict "$RR" 0.6)" "$PK" "$PB" "$RP" "$(verdict "$RP" 0.5)" "$PC" "$RC" "$(verdict "$RC" 1.5)")
    echo "-- ratios (pgkeep / pgBackRest): $line"
    SUMMARY+=("$line")

    as_pg pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$SITE"
    PGDATA=""
done

echo
echo "== summary (targets: backup <= 0.8x at size <= 1.1x, restore <= 0.6x, wal push <= 0.5x and <= 1.5x cp + sync); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
for l in "${SUMMARY[@]}"; do echo "   $l"; done
