#!/usr/bin/env bash
# sled beside PostgreSQL in one run: floor, lookup-hit and put at 10k
# preloaded executions, 64 concurrent clients, each on a fresh store.
#   STEPCACHE_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres \
#     bash scripts/bench-postgres.sh
# (or: bash scripts/ci-postgres.sh bash scripts/bench-postgres.sh)
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
