#!/usr/bin/env bash
# Fails when a tracked file points outside the repository for its specs (they
# live in docs/), or when a relative Markdown link in README.md, BENCHMARKS.md
# or docs/ names a file that does not exist. Run from anywhere:
# bash scripts/check-doc-links.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

status=0

# Specs that are not in the repository. This script names them, so it is left out.
outside='DESIGN\.md|spec/KEY\.md|spec/API\.md|\.\./shared|/work/shared'
# Tracked files; without git metadata (an exported tree), every file but
# build outputs and installed packages.
search() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git grep -n -I -E "$outside" -- . ':!scripts/check-doc-links.sh'
    else
        grep -rnI -E "$outside" --exclude-dir=.git --exclude-dir=target \
            --exclude-dir=node_modules --exclude-dir=dist --exclude-dir=gen \
            --exclude=check-doc-links.sh .
    fi
}
if search; then
    echo "error: the lines above point outside the repository; point them at docs/ instead" >&2
    status=1
fi

# Relative links of README.md, BENCHMARKS.md and docs/*.md (fenced code blocks skipped).
python3 - README.md BENCHMARKS.md docs/*.md <<'PY' || status=1
import os, re, sys

link = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
bad = 0
for path in sys.argv[1:]:
    fenced = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                continue
            for target in link.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL, or an anchor in the same file
                file = target.split("#", 1)[0]
                if not os.path.exists(os.path.join(os.path.dirname(path), file)):
                    print(f"{path}:{n}: link to a missing file: {target}")
                    bad += 1
if bad:
    print(f"error: {bad} broken relative link(s)", file=sys.stderr)
    sys.exit(1)
PY

exit "$status"
