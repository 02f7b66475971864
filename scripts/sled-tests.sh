#!/usr/bin/env bash
# Runs the published sled 0.34.7's own test suite (its tests/ directory, the
# crash-recovery tests among them) against vendor/sled's source: the
# published crate is fetched into a work dir and its src/ replaced by ours.
# Features as sled's own CI runs them (`testing`: random delays at its
# atomic operations, crashes injected at them in the crash tests, failpoints).
#
#   scripts/sled-tests.sh [extra cargo test args]
#
# SLED_TEST_DIR (default: a temporary dir) keeps the work dir and its build
# between runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
source scripts/published-sled.sh
work=${SLED_TEST_DIR:-}
if [[ -z $work ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
rm -rf "$work/sled"
fetch_published_sled "$work"
rm -rf "$work/sled/src"
cp -r "$ROOT/vendor/sled/src" "$work/sled/src"
cd "$work/sled"
# The one line of the published tests that current compilers refuse (a
# subscriber polled through `&mut self` but bound without `mut`).
sed -i 's/^            let sub = db.watch_prefix(b"k1");$/            let mut sub = db.watch_prefix(b"k1");/' tests/test_tree.rs
export CARGO_TARGET_DIR=$work/target
# The published lockfile: the versions sled's tests were released with.
cargo test --release --locked --no-default-features --features testing "$@"
