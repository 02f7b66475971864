"""examples/kfp_pipeline.py against the test server: the three runs' outcomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_kfp_pipeline_example_three_runs(server_addr: str, repo_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root / "examples" / "kfp_pipeline.py"),
            "--addr",
            server_addr,
            "--pipeline-root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    outcomes: dict[str, list[tuple[str, str, str]]] = {}
    run = ""
    for line in proc.stdout.splitlines():
        if line.startswith("run "):
            run = line.split(":")[0]
            outcomes[run] = []
        elif run and line.split()[:1] in (["prepare"], ["train"], ["evaluate"]):
            task, outcome, ran = line.split()[:3]
            outcomes[run].append((task, outcome, ran))
    assert outcomes == {
        "run 1": [("prepare", "RESERVED", "yes"), ("train", "RESERVED", "yes"), ("evaluate", "RESERVED", "yes")],
        "run 2": [("prepare", "HIT", "no"), ("train", "HIT", "no"), ("evaluate", "HIT", "no")],
        "run 3": [("prepare", "DISABLED", "yes"), ("train", "RESERVED", "yes"), ("evaluate", "RESERVED", "yes")],
    }
    assert "identical content: yes" in proc.stdout

    # Runs 1 and 3 wrote their own directory under the pipeline root; run 2 wrote nothing.
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 2 and all(r.startswith("stepcache-demo-") for r in runs)
    for r in runs:
        assert sorted(p.name for p in (tmp_path / r).iterdir()) == ["evaluate", "prepare", "train"]
    first, third = (tmp_path / r / "prepare" / "data" for r in runs)
    assert first.read_bytes() == third.read_bytes()
