#!/usr/bin/env python3
"""A pipeline driver on the stepcache Python SDK: prepare -> train -> evaluate.

Every task writes a real file in the work dir and records it as an artifact
with a file:// URI; downstream tasks read their inputs through those URIs and
name them in their interface by artifact ID. The driver runs the DAG three
times against a running server:

1. a first run: every task misses and runs;
2. the same pipeline again: every task hits, nothing runs;
3. ``prepare`` is re-run by hand (trigger MANUAL, so it reads no cache). It
   writes byte-identical data, but under a new artifact ID, and the cache key
   of ``train`` and ``evaluate`` is made of artifact IDs, not content: both
   miss and run again.

It prints a table per run and exits 1 if an outcome differs from the expected.

    stepcache serve --listen 127.0.0.1:50051 --data-dir /tmp/sc &
    python examples/pipeline_driver.py --addr 127.0.0.1:50051 --workdir /tmp/demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from stepcache import Client, NewArtifact, Outcome, StepResult, TaskOutputs, Trigger, cached_step

IMAGE = "python:3.11-slim"


@dataclass(frozen=True)
class Row:
    """One task of one run, as the table shows it."""

    task: str
    result: StepResult
    output: str

    @property
    def artifact_id(self) -> int:
        return self.result.artifact(self.output).id

    @property
    def path(self) -> Path:
        return file_of(self.result.artifact(self.output).uri)


def file_of(uri: str) -> Path:
    """The local path of a file:// URI."""
    return Path(url2pathname(urlparse(uri).path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_artifact(path: Path) -> NewArtifact:
    return NewArtifact(uri=path.as_uri(), name=path.name, content_digest="sha256:" + sha256(path))


class Pipeline:
    """The three tasks; each writes under ``<workdir>/run-<n>/<task>/``."""

    def __init__(self, client: Client, workdir: Path) -> None:
        self.client = client
        self.workdir = workdir

    def out_dir(self, run: int, task: str) -> Path:
        d = self.workdir / f"run-{run}" / task
        d.mkdir(parents=True, exist_ok=True)
        return d

    def step(
        self, run: int, task: str, interface: dict[str, Any], body: Callable[[Path], TaskOutputs], trigger: Trigger
    ) -> StepResult:
        interface = {
            "component": task,
            "container": {"image": IMAGE, "command": ["python", "-m", f"demo.{task}"]},
            **interface,
        }
        return cached_step(self.client, interface, lambda: body(self.out_dir(run, task)), trigger=trigger)

    def run(self, run: int, prepare_trigger: Trigger) -> list[Row]:
        rows, seed = 200, 7

        def prepare(out: Path) -> TaskOutputs:
            rng = random.Random(seed)
            lines = ["x,y"]
            for _ in range(rows):
                x = rng.uniform(0, 10)
                lines.append(f"{x:.4f},{3 * x + 1 + rng.gauss(0, 0.5):.4f}")
            data = out / "data.csv"
            data.write_text("\n".join(lines) + "\n")
            return TaskOutputs(artifacts={"data": file_artifact(data)}, parameters={"rows": rows})

        prep = self.step(
            run,
            "prepare",
            {
                "parameters": {"rows": rows, "seed": seed},
                "output_artifacts": {"data": "system.Dataset"},
                "output_parameters": {"rows": "NUMBER_INTEGER"},
            },
            prepare,
            prepare_trigger,
        )
        data_path = file_of(prep.artifact("data").uri)

        def train(out: Path) -> TaskOutputs:
            xs, ys = read_xy(data_path)
            n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
            model = out / "model.json"
            model.write_text(json.dumps({"slope": round(slope, 6), "intercept": round(my - slope * mx, 6), "n": n}))
            return TaskOutputs(artifacts={"model": file_artifact(model)})

        trained = self.step(
            run,
            "train",
            {
                "parameters": {"fit": "least-squares"},
                "input_artifacts": {"data": {"ids": [prep.artifact("data").id]}},
                "output_artifacts": {"model": "system.Model"},
            },
            train,
            Trigger.PIPELINE,
        )
        model_path = file_of(trained.artifact("model").uri)

        def evaluate(out: Path) -> TaskOutputs:
            m = json.loads(model_path.read_text())
            xs, ys = read_xy(data_path)
            mse = sum((m["slope"] * x + m["intercept"] - y) ** 2 for x, y in zip(xs, ys, strict=True)) / len(xs)
            metrics = out / "metrics.json"
            metrics.write_text(json.dumps({"mse": round(mse, 6)}))
            return TaskOutputs(artifacts={"metrics": file_artifact(metrics)}, parameters={"mse": round(mse, 6)})

        evaluated = self.step(
            run,
            "evaluate",
            {
                "input_artifacts": {
                    "data": {"ids": [prep.artifact("data").id]},
                    "model": {"ids": [trained.artifact("model").id]},
                },
                "output_artifacts": {"metrics": "system.Metrics"},
                "output_parameters": {"mse": "NUMBER_DOUBLE"},
            },
            evaluate,
            Trigger.PIPELINE,
        )
        return [Row("prepare", prep, "data"), Row("train", trained, "model"), Row("evaluate", evaluated, "metrics")]


def read_xy(path: Path) -> tuple[list[float], list[float]]:
    pairs = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [float(x) for x, _ in pairs], [float(y) for _, y in pairs]


def print_table(title: str, rows: list[Row]) -> None:
    print(title)
    print(f"  {'task':<9} {'outcome':<9} {'ran':<4} {'key':<13} {'artifact':<9} {'file (sha256)':<44} reason")
    for r in rows:
        rel = r.path.relative_to(r.path.parents[2])
        print(
            f"  {r.task:<9} {r.result.outcome.name:<9} {'yes' if r.result.ran else 'no':<4} "
            f"{r.result.cache_key[:12]:<13} #{r.artifact_id:<8} {str(rel) + ' (' + sha256(r.path)[:8] + ')':<44} "
            f"{r.result.reason or '-'}"
        )
    print()


EXPECTED = {
    1: [Outcome.MISS, Outcome.MISS, Outcome.MISS],
    2: [Outcome.HIT, Outcome.HIT, Outcome.HIT],
    3: [Outcome.DISABLED, Outcome.MISS, Outcome.MISS],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", required=True, help="host:port of a running stepcache server")
    parser.add_argument("--workdir", required=True, type=Path, help="where the tasks write their files")
    parser.add_argument("--namespace", help="default: a fresh one, so that run 1 starts from an empty cache")
    args = parser.parse_args(argv)
    namespace = args.namespace or f"pipeline-demo-{uuid.uuid4().hex[:8]}"
    workdir: Path = args.workdir.resolve()
    print(f"stepcache at {args.addr}, namespace {namespace}, files under {workdir}\n")

    with Client(args.addr, namespace=namespace) as client:
        pipeline = Pipeline(client, workdir)
        runs = {
            1: ("run 1: first run, empty cache", pipeline.run(1, Trigger.PIPELINE)),
            2: ("run 2: same pipeline again", pipeline.run(2, Trigger.PIPELINE)),
            3: ("run 3: prepare re-run by hand (trigger MANUAL)", pipeline.run(3, Trigger.MANUAL)),
        }
    for title, rows in runs.values():
        print_table(title, rows)

    failures = [
        f"run {n} {row.task}: {row.result.outcome.name}, expected {want.name}"
        for n, (_, rows) in runs.items()
        for row, want in zip(rows, EXPECTED[n], strict=True)
        if row.result.outcome != want
    ]
    prep1, prep3 = runs[1][1][0], runs[3][1][0]
    same_content = sha256(prep1.path) == sha256(prep3.path)
    print(
        f"prepare's data: run 1 artifact #{prep1.artifact_id}, run 3 artifact #{prep3.artifact_id}; "
        f"identical content: {'yes' if same_content else 'no'}"
    )
    if not same_content or prep1.artifact_id == prep3.artifact_id:
        failures.append("run 3 prepare: expected identical content under a new artifact ID")
    if failures:
        print("UNEXPECTED:\n  " + "\n  ".join(failures))
        return 1
    print("as expected: run 1 all MISS, run 2 all HIT (nothing ran), run 3 prepare DISABLED -> train, evaluate MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
