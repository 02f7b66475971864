#!/usr/bin/env bash
# Prints the whole difference between vendor/sled and the published sled
# 0.34.7 (fetched into a temporary dir), then fails if any changed line lies
# outside a marked patch: a region opened by a comment `stepcache patch N
# begin` and closed by `stepcache patch N end` (vendor/README.md numbers the
# patches). CI runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/published-sled.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch_published_sled "$tmp"
python3 scripts/vendor-diff.py "$tmp/sled" vendor/sled
