"""Runs an example script against the test server and reads its per-run table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

Outcomes = dict[str, list[tuple[str, str, str]]]


def run_example(script: Path, args: list[str], timeout: float) -> tuple[str, Outcomes]:
    """Runs `script` with `args`; returns its stdout and, per run, the
    (task, outcome, ran) rows of prepare, train and evaluate."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcomes: Outcomes = {}
    run = ""
    for line in proc.stdout.splitlines():
        if line.startswith("run "):
            run = line.split(":")[0]
            outcomes[run] = []
        elif run and line.split()[:1] in (["prepare"], ["train"], ["evaluate"]):
            task, outcome, ran = line.split()[:3]
            outcomes[run].append((task, outcome, ran))
    return proc.stdout, outcomes
