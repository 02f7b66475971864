"""examples/pipeline_driver.py against the test server: the three runs' outcomes."""

from __future__ import annotations

from pathlib import Path

from example_runs import run_example


def test_pipeline_driver_three_runs(server_addr: str, repo_root: Path, tmp_path: Path) -> None:
    stdout, outcomes = run_example(
        repo_root / "examples" / "pipeline_driver.py", ["--addr", server_addr, "--workdir", str(tmp_path)], timeout=120
    )
    assert outcomes == {
        "run 1": [("prepare", "MISS", "yes"), ("train", "MISS", "yes"), ("evaluate", "MISS", "yes")],
        "run 2": [("prepare", "HIT", "no"), ("train", "HIT", "no"), ("evaluate", "HIT", "no")],
        "run 3": [("prepare", "DISABLED", "yes"), ("train", "MISS", "yes"), ("evaluate", "MISS", "yes")],
    }
    assert "identical content: yes" in stdout

    # Run 2 ran nothing, so it wrote no file; runs 1 and 3 wrote all three.
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        f"run-{n}/{f}" for n in (1, 3) for f in ("prepare/data.csv", "train/model.json", "evaluate/metrics.json")
    )
    assert (tmp_path / "run-1/prepare/data.csv").read_bytes() == (tmp_path / "run-3/prepare/data.csv").read_bytes()
