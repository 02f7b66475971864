#!/usr/bin/env bash
# buf lint (STANDARD) and buf breaking (FILE) on proto/, as configured in buf.yaml.
#
# breaking compares against the newest commit before HEAD that has proto/
# (normally HEAD~1). In a shallow clone the history is deepened as needed; when
# no earlier commit has proto/ (or history cannot be had), that check is skipped
# with a message. buf comes from npm (@bufbuild/buf) into ./node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF=node_modules/.bin/buf
if [[ ! -x $BUF ]]; then
  echo "buf-check: installing @bufbuild/buf into ./node_modules"
  npm install --no-save --no-audit --no-fund --loglevel=error @bufbuild/buf
fi
echo "buf-check: $($BUF --version) lint"
$BUF lint
echo "buf-check: lint clean"

# The base: the first ancestor of HEAD (first parents) that has proto/.
find_base() {
  local rev
  for rev in $(git rev-list --first-parent --skip=1 HEAD 2>/dev/null); do
    if git cat-file -e "$rev:proto" 2>/dev/null; then
      echo "$rev"
      return 0
    fi
  done
  return 1
}

base=$(find_base || true)
if [[ -z $base && $(git rev-parse --is-shallow-repository 2>/dev/null) == true ]]; then
  echo "buf-check: shallow clone: fetching more history for the breaking check"
  for depth in 10 100; do
    git fetch --quiet --deepen="$depth" 2>/dev/null || break
    base=$(find_base || true)
    [[ -n $base ]] && break
  done
fi
if [[ -z $base ]]; then
  echo "buf-check: SKIP breaking: no commit before HEAD has proto/ (or its history is not available)"
  exit 0
fi

# Check the base out of git into a temporary directory: this works the same in
# a worktree, a shallow clone or a full one.
against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base" proto | tar -x -C "$against"
echo "buf-check: breaking (FILE) against $(git log -1 --format='%h %s' "$base")"
$BUF breaking --against "$against/proto"
echo "buf-check: no breaking change"
