"""examples/kfp_pipeline.py against the test server: the three runs' outcomes."""

from __future__ import annotations

from pathlib import Path

from example_runs import run_example


def test_kfp_pipeline_example_three_runs(server_addr: str, repo_root: Path, tmp_path: Path) -> None:
    stdout, outcomes = run_example(
        repo_root / "examples" / "kfp_pipeline.py",
        ["--addr", server_addr, "--pipeline-root", str(tmp_path)],
        timeout=300,
    )
    assert outcomes == {
        "run 1": [("prepare", "RESERVED", "yes"), ("train", "RESERVED", "yes"), ("evaluate", "RESERVED", "yes")],
        "run 2": [("prepare", "HIT", "no"), ("train", "HIT", "no"), ("evaluate", "HIT", "no")],
        "run 3": [("prepare", "DISABLED", "yes"), ("train", "RESERVED", "yes"), ("evaluate", "RESERVED", "yes")],
    }
    assert "identical content: yes" in stdout

    # Runs 1 and 3 wrote their own directory under the pipeline root; run 2 wrote nothing.
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert len(runs) == 2 and all(r.startswith("stepcache-demo-") for r in runs)
    for r in runs:
        assert sorted(p.name for p in (tmp_path / r).iterdir()) == ["evaluate", "prepare", "train"]
    first, third = (tmp_path / r / "prepare" / "data" for r in runs)
    assert first.read_bytes() == third.read_bytes()
