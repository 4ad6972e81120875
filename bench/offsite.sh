#!/usr/bin/env bash
# Benchmark of `pgkeep offsite sync` and off-site `wal fetch` against a real S3 server (moto) on
# loopback. Not part of the test suite.
#
#   [PGKEEP=path/to/pgkeep] [LAT_N=8] bench/offsite.sh [SIZE_MIB=1024]
#
# The data is SIZE_MIB of incompressible WAL-like segments (16 MiB, page-headed like PostgreSQL
# 15 segments of one system), so every byte goes through the whole path: verify, age-encrypt,
# upload (two multipart parts per segment). Prints, measured in the same run with the same S3
# client and the same verification:
#   1. sync throughput, encrypted vs `offsite.encrypt = false` (the plain upload)  -> ratio
#   2. per-segment upload latency (one segment per sync), encrypted vs plain        -> ratio
#   3. per-segment `wal fetch` from off-site vs from the local archive              -> ratio
#   4. the same data PUT file by file with curl (the HTTP floor of the server), vs pgkeep plain and encrypted
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-1024}
N=$(( SIZE_MIB / 16 ))
LAT_N=${LAT_N:-8}

if [ -z "${PGKEEP:-}" ]; then
  cargo build --release -q -p pgkeep
  PGKEEP=$PWD/target/release/pgkeep
fi
command -v moto_server >/dev/null || { echo "moto_server missing: python3 -m pip install 'moto[server]'" >&2; exit 1; }

SITE=$(mktemp -d /tmp/pgkeep-bench-offsite-XXXXXX)
PORT=$(( 20000 + RANDOM % 20000 ))
moto_server -H 127.0.0.1 -p "$PORT" >"$SITE/moto.log" 2>&1 &
MOTO=$!
cleanup() { kill "$MOTO" 2>/dev/null || true; wait "$MOTO" 2>/dev/null || true; rm -rf "$SITE"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
curl -s -X PUT -H 'Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0' \
  "http://127.0.0.1:$PORT/bench" >/dev/null

# WAL-like segments of system 7 (as pgkeep-testkit's wal_like makes them).
gen() { # DIR FIRST COUNT
  python3 - "$@" <<'PY'
import os, struct, sys
d, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SEG = 16 << 20
for segno in range(first, first + count):
    name = "00000001%08X%08X" % (segno >> 8, segno & 0xFF)
    data = bytearray(os.urandom(SEG))
    for i in range(SEG // 8192):
        o = i * 8192
        struct.pack_into("<HHIQ", data, o, 0xD110, 2 if i == 0 else 0, 1, segno * SEG + o)
        if i == 0:
            struct.pack_into("<QII", data, o + 24, 7, SEG, 8192)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
PY
}
mkdir -p "$SITE"/{wal,lat,backups,pg_wal}
gen "$SITE/wal" 16 "$N"
gen "$SITE/lat" 4096 "$LAT_N"
RECIPIENT=$("$PGKEEP" offsite keygen --out "$SITE/id.key" 2>/dev/null)
printf '[offsite]\nencrypt = false\n' >"$SITE/plain.toml"

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export PGKEEP_OFFSITE_ENDPOINT=http://127.0.0.1:$PORT PGKEEP_OFFSITE_RECIPIENTS=$RECIPIENT
export PGKEEP_OFFSITE_IDENTITY_FILE=$SITE/id.key PGDATA=$SITE/nodata PGKEEP_BACKUPS=$SITE/backups
now() { date +%s.%N; }
sync_run() { # PREFIX ARCHIVE [CONFIG]
  local cfg=()
  [ -n "${3:-}" ] && cfg=(--config "$3")
  PGKEEP_OFFSITE_URL=s3://bench/$1 PGKEEP_WAL_ARCHIVE=$2 "$PGKEEP" "${cfg[@]}" -q offsite sync >/dev/null
}

echo "1. sync of $SIZE_MIB MiB ($N segments)"
t0=$(now); sync_run plain "$SITE/wal" "$SITE/plain.toml"; t1=$(now)
sync_run enc "$SITE/wal"; t2=$(now)
python3 - "$t0" "$t1" "$t2" "$SIZE_MIB" <<'PY'
import sys
t0, t1, t2, mib = map(float, sys.argv[1:])
p, e = t1 - t0, t2 - t1
print(f"   plain     {p:7.2f} s  {mib/p:7.1f} MiB/s")
print(f"   encrypted {e:7.2f} s  {mib/e:7.1f} MiB/s   ratio {e/p:.2f}x")
PY

echo "2. per-segment upload latency ($LAT_N segments, one sync each)"
one_by_one() { # PREFIX [CONFIG]
  rm -rf "$SITE/one"; mkdir -p "$SITE/one"
  for f in "$SITE"/lat/*; do
    cp "$f" "$SITE/one/"
    sync_run "$1" "$SITE/one" "${2:-}"
  done
}
t0=$(now); one_by_one lplain "$SITE/plain.toml"; t1=$(now); one_by_one lenc; t2=$(now)
python3 - "$t0" "$t1" "$t2" "$LAT_N" <<'PY'
import sys
t0, t1, t2, n = map(float, sys.argv[1:])
p, e = (t1 - t0) / n, (t2 - t1) / n
print(f"   plain     {p*1000:7.0f} ms per segment (a whole `offsite sync` process each)")
print(f"   encrypted {e*1000:7.0f} ms per segment   ratio {e/p:.2f}x")
PY

echo "3. wal fetch per segment: off-site (download + decrypt + check) vs local archive"
fetch_all() { # ARCHIVE EXTRA...
  local a=$1; shift
  for f in "$SITE"/lat/*; do
    n=$(basename "$f")
    PGKEEP_OFFSITE_URL=s3://bench/lenc "$PGKEEP" -q wal fetch "$n" "$SITE/pg_wal/$n" --archive "$a" --sysid 7 "$@"
    rm -f "$SITE/pg_wal/$n"
  done
}
t0=$(now); fetch_all "$SITE/lat"; t1=$(now); fetch_all "$SITE/nowhere" --offsite; t2=$(now)
python3 - "$t0" "$t1" "$t2" "$LAT_N" <<'PY'
import sys
t0, t1, t2, n = map(float, sys.argv[1:])
l, o = (t1 - t0) / n, (t2 - t1) / n
print(f"   local     {l*1000:7.0f} ms per segment")
print(f"   off-site  {o*1000:7.0f} ms per segment   ratio {o/l:.2f}x")
PY

echo "4. the same $SIZE_MIB MiB with a bare HTTP client (curl PUT per file, no verify, no encryption)"
t0=$(now)
for f in "$SITE"/wal/*; do
  curl -sf -X PUT -T "$f" -H 'Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0' \
    "http://127.0.0.1:$PORT/bench/bare/$(basename "$f")" >/dev/null
done
t1=$(now)
t2=$(now); sync_run plain2 "$SITE/wal" "$SITE/plain.toml"; t3=$(now)
sync_run enc2 "$SITE/wal"; t4=$(now)
python3 - "$t0" "$t1" "$t2" "$t3" "$t4" "$SIZE_MIB" <<'PY'
import sys
t0, t1, t2, t3, t4, mib = map(float, sys.argv[1:])
b, p, e = t1 - t0, t3 - t2, t4 - t3
print(f"   curl PUT  {b:7.2f} s  {mib/b:7.1f} MiB/s")
print(f"   pgkeep plain     {p:7.2f} s   ratio {p/b:.2f}x")
print(f"   pgkeep encrypted {e:7.2f} s   ratio {e/b:.2f}x")
PY
