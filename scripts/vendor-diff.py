#!/usr/bin/env python3
"""Diff a vendored crate against its published release; fail on unmarked hunks.

Usage: vendor-diff.py PUBLISHED VENDORED

Prints every difference as a unified diff, then checks that each changed line
of the vendored copy (and each place where lines were removed) lies inside a
marked patch: a region that a comment `stepcache patch N begin` opens and
`stepcache patch N end` closes, in any comment syntax. Every source file and
the manifest of the published crate must be in the vendored copy; files the
copy leaves out (tests, docs, art) are listed. Exit status 1 on any failure.
"""

import difflib
import re
import sys
from pathlib import Path

MARK = re.compile(r"stepcache patch (\d+) (begin|end)\b")
# What the vendored copy must keep: the code and the manifest.
REQUIRED = re.compile(r"^(src/.*|Cargo\.toml)$")


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def regions(lines: list[str], path: str, problems: list[str]) -> list[tuple[int, int, int]]:
    """The marked regions of a file as (patch, first line, last line), 1-based."""
    found, open_at = [], None
    for number, line in enumerate(lines, 1):
        m = MARK.search(line)
        if not m:
            continue
        patch, kind = int(m.group(1)), m.group(2)
        if kind == "begin":
            if open_at is not None:
                problems.append(f"{path}:{number}: patch {patch} begins inside patch {open_at[0]}")
            open_at = (patch, number)
        elif open_at is None or open_at[0] != patch:
            problems.append(f"{path}:{number}: patch {patch} ends where it did not begin")
        else:
            found.append((patch, open_at[1], number))
            open_at = None
    if open_at is not None:
        problems.append(f"{path}:{open_at[1]}: patch {open_at[0]} never ends")
    return found


def main() -> int:
    published, vendored = Path(sys.argv[1]), Path(sys.argv[2])
    theirs, ours = files(published), files(vendored)
    problems: list[str] = []
    for path in sorted(ours - theirs):
        problems.append(f"{path}: not in the published crate")
    left_out = sorted(theirs - ours)
    for path in left_out:
        if REQUIRED.match(path):
            problems.append(f"{path}: in the published crate, missing here")
    patches: dict[int, int] = {}
    changed_files = 0
    for path in sorted(theirs & ours):
        old = (published / path).read_text(errors="replace").splitlines(keepends=True)
        new = (vendored / path).read_text(errors="replace").splitlines(keepends=True)
        if old == new:
            continue
        changed_files += 1
        sys.stdout.writelines(
            difflib.unified_diff(old, new, f"published/{path}", f"vendored/{path}")
        )
        marked = regions(new, path, problems)
        for patch, _, _ in marked:
            patches[patch] = patches.get(patch, 0) + 1
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            # Blank lines added or removed at a change's edges are layout,
            # not code: they need not sit inside the markers.
            while j1 < j2 and not new[j1].strip():
                j1 += 1
            while j2 > j1 and not new[j2 - 1].strip():
                j2 -= 1
            if j1 == j2 and all(not line.strip() for line in old[i1:i2]):
                continue
            # Changed lines j1+1..j2 (1-based); a pure removal sits between
            # lines j1 and j1+1, so a region must hold both of them.
            first, last = (j1 + 1, j2) if j2 > j1 else (j1, j1 + 1)
            if not any(lo <= first and last <= hi for _, lo, hi in marked):
                problems.append(f"{path}:{first}-{last}: a change outside any marked patch")
    print(f"\n{changed_files} files differ; patches marked: "
          + ", ".join(f"{p} ({n} region{'s' if n > 1 else ''})" for p, n in sorted(patches.items())))
    if left_out:
        print(f"not vendored ({len(left_out)} files): "
              + ", ".join(sorted({p.split('/')[0] for p in left_out})))
    for problem in problems:
        print(f"vendor-diff: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
