#!/usr/bin/env bash
# CI for the TypeScript SDK (clients/typescript): npm ci from the committed
# lockfile, the stubs generated from proto/ by buf (never committed), tsc
# --strict, and the node:test suite against real servers (plain, TLS with
# tokens) on free ports.
#
# Assumes target/release/stepcache exists (CI builds it first); set
# STEPCACHE_BIN to test another binary. Needs Node >= 20.19 and npm.
set -euo pipefail
cd "$(dirname "$0")/../clients/typescript"
export STEPCACHE_BIN=${STEPCACHE_BIN:-$PWD/../../target/release/stepcache}

if [[ ! -x $STEPCACHE_BIN ]]; then
  echo "typescript-ci: $STEPCACHE_BIN is missing: run 'cargo build --release' first" >&2
  exit 1
fi

# @noble/hashes (BLAKE3) and Connect need Node 20.19 or newer.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "typescript-ci: Node $(node --version) is too old: the SDK needs Node >= 20.19" >&2
  exit 1
fi
echo "== typescript-ci: node $(node --version), npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== typescript-ci: generate (buf), tsc, node --test"
npm test
echo "typescript-ci: all passed"
