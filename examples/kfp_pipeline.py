#!/usr/bin/env python3
"""prepare -> train -> evaluate as a Kubeflow Pipelines v2 pipeline, run locally behind stepcache.

The same pipeline as pipeline_driver.py, written with kfp's own SDK:
``@dsl.component`` lightweight Python components passing ``Dataset``, ``Model``
and ``Metrics`` artifacts, compiled by kfp and executed by kfp.local's
SubprocessRunner, with ``stepcache_kfp.run_pipeline`` looking every task
up first. It runs the pipeline three times against a running server:

1. a first run: every task misses and runs;
2. the same pipeline again: every task hits, no component runs, and the
   recorded artifacts (same IDs, same URIs) are handed downstream;
3. ``prepare`` re-run on purpose (``rerun={"prepare"}``: trigger MANUAL). It
   writes byte-identical data under a new artifact ID; ``train`` and
   ``evaluate`` are keyed by artifact IDs, not content: both miss and run.

It prints a table per run and exits 1 if an outcome differs from the expected.

    pip install ./clients/python ./clients/kfp
    stepcache serve --listen 127.0.0.1:50051 --data-dir /tmp/sc &
    python examples/kfp_pipeline.py --addr 127.0.0.1:50051 --pipeline-root /tmp/kfp-demo
"""

# No `from __future__ import annotations`: kfp reads the components'
# annotations (Input[Dataset]...) when they are decorated.

import argparse
import contextlib
import io
import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from stepcache import Client, Outcome
from stepcache_kfp import PipelineRun, content_digest, run_pipeline


def component(fn: Callable[..., Any]) -> Any:
    """``@dsl.component`` run by SubprocessRunner(use_venv=False) in this interpreter.

    ``install_kfp_package=False``: kfp is installed here already; without it
    every task would start with a ``pip install kfp`` (and kfp.local runs
    tasks that pip-install one at a time).
    """
    return dsl.component(fn, base_image="python:3.11", install_kfp_package=False)


@component
def prepare(rows: int, seed: int, data: Output[Dataset]):  # type: ignore[no-untyped-def]
    import random

    rng = random.Random(seed)
    lines = ["x,y"]
    for _ in range(rows):
        x = rng.uniform(0, 10)
        lines.append(f"{x:.4f},{3 * x + 1 + rng.gauss(0, 0.5):.4f}")
    with open(data.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    data.metadata["rows"] = rows


@component
def train(data: Input[Dataset], fit: str, model: Output[Model]):  # type: ignore[no-untyped-def]
    import json

    with open(data.path) as f:
        pairs = [line.split(",") for line in f.read().splitlines()[1:]]
    xs, ys = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    with open(model.path, "w") as f:
        json.dump({"slope": round(slope, 6), "intercept": round(my - slope * mx, 6), "n": len(xs)}, f)
    model.metadata["fit"] = fit


@component
def evaluate(data: Input[Dataset], model: Input[Model], metrics: Output[Metrics]) -> float:
    import json

    with open(model.path) as f:
        m = json.load(f)
    with open(data.path) as f:
        pairs = [line.split(",") for line in f.read().splitlines()[1:]]
    mse = sum((m["slope"] * float(x) + m["intercept"] - float(y)) ** 2 for x, y in pairs) / len(pairs)
    metrics.log_metric("mse", round(mse, 6))
    return float(round(mse, 6))


@cast(Callable[[Callable[..., Any]], Any], dsl.pipeline(name="stepcache-demo"))
def demo_pipeline(rows: int = 200, seed: int = 7) -> float:
    data = prepare(rows=rows, seed=seed).outputs["data"]
    model = train(data=data, fit="least-squares").outputs["model"]
    return cast(float, evaluate(data=data, model=model).outputs["Output"])


TASKS = {"prepare": "data", "train": "model", "evaluate": "metrics"}


def print_table(title: str, run: PipelineRun, root: Path) -> None:
    print(title)
    print(f"  {'task':<9} {'outcome':<9} {'ran':<4} {'key':<13} {'artifact':<9} {'uri (sha256)':<60}")
    for task, output in TASKS.items():
        t = run.tasks[task]
        binding = t.artifacts[output][0]
        digest = content_digest(binding.uri).removeprefix("sha256:")[:8] or "-"
        rel = Path(binding.uri).relative_to(root)
        print(
            f"  {task:<9} {t.outcome.name:<9} {'yes' if t.ran else 'no':<4} {t.cache_key[:12]:<13} "
            f"#{binding.artifact_id:<8} {str(rel) + ' (' + digest + ')':<60}"
        )
    print(f"  pipeline output (mse): {run.outputs['Output']}\n")


EXPECTED = {
    1: {"prepare": Outcome.RESERVED, "train": Outcome.RESERVED, "evaluate": Outcome.RESERVED},
    2: {"prepare": Outcome.HIT, "train": Outcome.HIT, "evaluate": Outcome.HIT},
    3: {"prepare": Outcome.DISABLED, "train": Outcome.RESERVED, "evaluate": Outcome.RESERVED},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", required=True, help="host:port of a running stepcache server")
    parser.add_argument("--pipeline-root", required=True, type=Path, help="where the tasks write their artifacts")
    parser.add_argument("--namespace", help="default: a fresh one, so that run 1 starts from an empty cache")
    parser.add_argument("--verbose", action="store_true", help="show kfp.local's task logs")
    args = parser.parse_args(argv)
    namespace = args.namespace or f"kfp-demo-{uuid.uuid4().hex[:8]}"
    root: Path = args.pipeline_root.resolve()
    print(f"stepcache at {args.addr}, namespace {namespace}, pipeline root {root}\n")
    quiet = contextlib.ExitStack()
    if not args.verbose:
        # kfp.local logs every task and streams its output to stdout.
        logging.disable(logging.INFO)
        quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))

    with quiet, Client(args.addr, namespace=namespace) as client:
        runs = {
            1: ("run 1: first run, empty cache", run_pipeline(client, demo_pipeline, pipeline_root=root)),
            2: ("run 2: same pipeline again", run_pipeline(client, demo_pipeline, pipeline_root=root)),
            3: (
                "run 3: prepare re-run on purpose (trigger MANUAL)",
                run_pipeline(client, demo_pipeline, pipeline_root=root, rerun={"prepare"}),
            ),
        }
    for title, run in runs.values():
        print_table(title, run, root)

    failures = [
        f"run {n} {task}: {run.tasks[task].outcome.name}, expected {want.name}"
        for n, (_, run) in runs.items()
        for task, want in EXPECTED[n].items()
        if run.tasks[task].outcome != want
    ]
    prep = {n: runs[n][1].tasks["prepare"].artifacts["data"][0] for n in (1, 2, 3)}
    if prep[2].artifact_id != prep[1].artifact_id:
        failures.append("run 2 prepare: expected the artifact of run 1")
    same_content = content_digest(prep[1].uri) == content_digest(prep[3].uri)
    print(
        f"prepare's data: run 1 artifact #{prep[1].artifact_id}, run 3 artifact #{prep[3].artifact_id}; "
        f"identical content: {'yes' if same_content else 'no'}"
    )
    if not same_content or prep[1].artifact_id == prep[3].artifact_id:
        failures.append("run 3 prepare: expected identical content under a new artifact ID")
    if failures:
        print("UNEXPECTED:\n  " + "\n  ".join(failures))
        return 1
    print("as expected: run 1 all ran, run 2 all HIT (nothing ran), run 3 prepare DISABLED -> train, evaluate ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
