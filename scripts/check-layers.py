#!/usr/bin/env python3
"""Fails when the library's top-level modules import each other in a circle,
or a module imports one from a layer above its own.

Reads every `crate::...` path (in `use` lines and in code) of the files under
src/ (the library; src/main.rs is a program on top of it, as bench/ is), maps
each file to its top-level module (src/store/hot.rs -> store), and checks the
graph of those modules against LAYERS below: a module may use modules of its
own layer or of lower layers, and no two modules may reach each other.
"""

import re
import sys
from pathlib import Path

# Lowest first. A module may import modules of its own layer or below.
LAYERS = [
    # Foundations: errors, the cache key, the lookup rule, clocks, messages.
    ["proto", "error", "clock", "key", "json", "policy"],
    # Domain types and rules shared by both backends; request checks.
    ["domain", "validate", "lineage", "query", "reservations"],
    # The storage trait and its implementations.
    ["backend", "store", "pg"],
    # Serving: thread pools, admission, auth, metrics, the gRPC services.
    ["pool", "admission", "auth", "connections", "transport", "metrics", "service"],
    # Assembly: the server and the command line.
    ["server", "cli"],
]

ROOT = Path(__file__).resolve().parent.parent


def strip(text: str) -> str:
    """Source without comments, string and char literals, and test modules
    (a test may use any layer to exercise its own)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'r(#*)"(?:.|\n)*?"\1', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"'(?:\\.|[^'\\])'", "' '", text)
    while m := re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        depth, i = 0, m.end() - 1
        for i in range(m.end() - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                break
        text = text[: m.start()] + text[i + 1 :]
    return text


def group_heads(text: str, start: int) -> list[str]:
    """First path segment of each item of the `{...}` group opening at start."""
    depth, item, heads = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                heads.append(item)
                break
        if depth == 1 and ch == ",":
            heads.append(item)
            item = ""
        elif depth >= 1:
            item += ch
    out = []
    for h in heads:
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", h)
        if m:
            out.append(m.group(1))
    return out


def module_of(src: Path, path: Path) -> str | None:
    rel = path.relative_to(src)
    if rel.parts[0] == "bin" or rel.name in ("main.rs", "lib.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def imports(path: Path) -> set[str]:
    text = strip(path.read_text())
    found = set()
    for m in re.finditer(r"\bcrate\s*::\s*(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
        if m.group(1) == "{":
            found.update(group_heads(text, m.start(1)))
        else:
            found.add(m.group(1))
    return found


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def problems_in(src: Path, layers: list[list[str]]) -> list[str]:
    """What breaks the layering of the tree under `src`."""
    rank = {m: i for i, layer in enumerate(layers) for m in layer}
    graph: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for path in sorted(src.rglob("*.rs")):
        mod = module_of(src, path)
        if mod is None:
            continue
        graph.setdefault(mod, set())
        for dep in imports(path):
            if dep != mod and dep not in ("self", "super"):
                graph[mod].add(dep)
                why.setdefault((mod, dep), str(path.relative_to(src.parent)))
    problems = []
    for mod in sorted(graph):
        if mod not in rank:
            problems.append(f"{mod}: not in any layer of scripts/check-layers.py")
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if dep not in rank:
                continue
            if mod in rank and rank[dep] > rank[mod]:
                problems.append(
                    f"{mod} (layer {rank[mod]}) imports {dep} (layer {rank[dep]}), "
                    f"first in {why[(mod, dep)]}"
                )
    for comp in sccs(graph):
        if len(comp) > 1:
            edges = [
                f"{a}->{b} ({why[(a, b)]})"
                for a in comp
                for b in sorted(graph[a])
                if b in comp
            ]
            problems.append("import circle: " + ", ".join(edges))
    return problems


def self_test() -> None:
    """The check fails on a circle, on an upward import and on a module in
    no layer, and passes a tree that goes down (test modules ignored)."""
    import tempfile

    def tree(files: dict[str, str]) -> Path:
        src = Path(tempfile.mkdtemp()) / "src"
        for name, text in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        return src

    layers = [["low"], ["mid", "side"], ["top"]]
    good = tree({
        "low.rs": "// crate::top in a comment\nconst S: &str = \"crate::top\";\n"
                  "#[cfg(test)]\nmod tests { use crate::top::T; }\n",
        "mid.rs": "use crate::{low::{A, B}, side};\n",
        "side.rs": "fn f() { crate::low::g() }\n",
        "top/mod.rs": "use crate::mid::X;\n",
        "main.rs": "use crate::top;\n",
    })
    assert problems_in(good, layers) == [], problems_in(good, layers)
    circle = tree({"mid.rs": "use crate::side::Y;\n", "side/x.rs": "use crate::{mid};\n"})
    assert any("circle" in p for p in problems_in(circle, layers))
    upward = tree({"low.rs": "fn f() { crate::mid::g() }\n", "mid.rs": ""})
    assert any("imports mid" in p for p in problems_in(upward, layers))
    unknown = tree({"new.rs": ""})
    assert any("not in any layer" in p for p in problems_in(unknown, layers))


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    problems = problems_in(ROOT / "src", LAYERS)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
