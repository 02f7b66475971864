#!/usr/bin/env bash
# sled beside PostgreSQL in one run: floor, lookup-hit and put at 10k
# preloaded executions, 64 concurrent clients, each on a fresh store.
#   STEPCACHE_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres \
#     bash scripts/bench-postgres.sh
# (or: bash scripts/ci-postgres.sh bash scripts/bench-postgres.sh)
# With bench/.venv (bench/setup-mlmd.sh), ML Metadata on the same PostgreSQL
# follows: 8 processes (MLMD_PROCESSES), one connection each, as KFP's drivers.
# For durable figures, run it against a cluster with fsync,
# synchronous_commit and full_page_writes on (ci-postgres.sh turns them off).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${STEPCACHE_TEST_POSTGRES:?set it to a PostgreSQL URL (see scripts/ci-postgres.sh)}"
BENCH=target/release/stepcache-bench
ARGS=(--preload "${N:-10000}" --rounds "${ROUNDS:-2}" --duration "${DURATION:-3}" --warmup 0.5
      floor lookup-hit put)
DB="bench_$(date +%s)"
psql "$STEPCACHE_TEST_POSTGRES" -qc "CREATE DATABASE $DB"
PG_URL="${STEPCACHE_TEST_POSTGRES%/*}/$DB"

echo "== sled (hot hits on, the default)"
"$BENCH" "${ARGS[@]}"
echo "== sled --hot-hits 0 (every hit read from the store)"
"$BENCH" --hot-hits 0 "${ARGS[@]}"
echo "== PostgreSQL $(psql "$STEPCACHE_TEST_POSTGRES" -Atc 'SHOW server_version') (--store)"
"$BENCH" --store "$PG_URL" "${ARGS[@]}"
psql "$STEPCACHE_TEST_POSTGRES" -qc "DROP DATABASE $DB"
if [ -x bench/.venv/bin/python ]; then
    MLMD_DB="mlmd_$(date +%s)"
    echo "== ML Metadata on the same PostgreSQL, ${MLMD_PROCESSES:-8} processes"
    bench/.venv/bin/python bench/mlmd_peer.py --backend postgresql \
        --pg-url "${STEPCACHE_TEST_POSTGRES%/*}/$MLMD_DB" --processes "${MLMD_PROCESSES:-8}" \
        --preload "${N:-10000}" --count "${MLMD_COUNT:-2000}" --max-seconds "${MLMD_MAX_SECONDS:-900}" \
        --workloads put,lookup-filter,lookup-hit 2>&1 | grep -v '^I[0-9]'
    psql "$STEPCACHE_TEST_POSTGRES" -qc "DROP DATABASE $MLMD_DB"
fi
