"""stepcache_kfp: real Kubeflow Pipelines v2 pipelines, run locally behind the test server (see kfp_support.py)."""

# No `from __future__ import annotations` here: kfp reads the components'
# annotations (Input[Dataset]...) at decoration time.

import builtins
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp_support import component, pipeline
from stepcache import Client, ExecutionState, Outcome
from stepcache.v1 import metadata_store_service_pb2
from stepcache_kfp import PipelineRun, TaskFailedError, component_names, load_pipeline_spec, run_pipeline


@component
def prepare(rows: int, seed: int, data: Output[Dataset]):  # type: ignore[no-untyped-def]
    import os
    import random

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("prepare\n")
    rng = random.Random(seed)
    lines = ["x,y"]
    for _ in range(rows):
        x = rng.uniform(0, 10)
        lines.append(f"{x:.4f},{3 * x + 1 + rng.gauss(0, 0.5):.4f}")
    with open(data.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    data.metadata["rows"] = rows


@component
def train(data: Input[Dataset], l2: float, seconds: float, model: Output[Model]):  # type: ignore[no-untyped-def]
    import json
    import os
    import time

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("train\n")
    time.sleep(seconds)
    with open(data.path) as f:
        pairs = [line.split(",") for line in f.read().splitlines()[1:]]
    xs, ys = [float(x) for x, _ in pairs], [float(y) for _, y in pairs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / (sum((x - mx) ** 2 for x in xs) + l2)
    with open(model.path, "w") as f:
        json.dump({"slope": round(slope, 6), "intercept": round(my - slope * mx, 6)}, f)
    model.metadata["l2"] = l2


@component
def evaluate(data: Input[Dataset], model: Input[Model], metrics: Output[Metrics]) -> float:
    import json
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("evaluate\n")
    with open(model.path) as f:
        m = json.load(f)
    with open(data.path) as f:
        pairs = [line.split(",") for line in f.read().splitlines()[1:]]
    mse = sum((m["slope"] * float(x) + m["intercept"] - float(y)) ** 2 for x, y in pairs) / len(pairs)
    metrics.log_metric("mse", round(mse, 6))
    return float(round(mse, 6))


@component
def boom(data: Input[Dataset]):  # type: ignore[no-untyped-def]
    raise RuntimeError("boom")


@pipeline("stepcache-kfp-test")
def train_pipeline(rows: int = 200, seed: int = 7, l2: float = 0.0) -> float:
    data = prepare(rows=rows, seed=seed).outputs["data"]
    model = train(data=data, l2=l2, seconds=0.0).outputs["model"]
    return cast(float, evaluate(data=data, model=model).outputs["Output"])


@pipeline("stepcache-kfp-twins")
def twin_pipeline(rows: int = 50, seed: int = 3) -> None:
    data = prepare(rows=rows, seed=seed).outputs["data"]
    # Two identical branches: same component, same parameters, same input artifact.
    for _ in range(2):
        model = train(data=data, l2=0.5, seconds=2.0).outputs["model"]
        evaluate(data=data, model=model)


@pipeline("stepcache-kfp-failing")
def failing_pipeline() -> None:
    boom(data=prepare(rows=5, seed=1).outputs["data"])


def artifact_ids(run: PipelineRun) -> dict[str, dict[str, list[int]]]:
    return {
        name: {out: [b.artifact_id for b in bindings] for out, bindings in t.artifacts.items()}
        for name, t in run.tasks.items()
    }


def test_second_run_executes_no_component(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    first = run_pipeline(client, train_pipeline, pipeline_root=root)
    assert counter() == ["prepare", "train", "evaluate"]
    assert first.executed == ["evaluate", "prepare", "train"]
    assert all(t.outcome == Outcome.RESERVED for t in first.tasks.values())  # missed, ran under a reservation
    data = first.tasks["prepare"].artifact("data")
    assert isinstance(data, dsl.Dataset) and data.uri.startswith(first.run_root)
    assert Path(data.uri).is_file() and data.metadata == {"rows": 200}
    assert isinstance(first.tasks["train"].artifact("model"), dsl.Model)
    metrics = first.tasks["evaluate"].artifact("metrics")
    assert isinstance(metrics, dsl.Metrics) and metrics.metadata["mse"] > 0
    mse = first.tasks["evaluate"].parameters["Output"]
    assert first.outputs["Output"] == mse == metrics.metadata["mse"]

    second = run_pipeline(client, train_pipeline, pipeline_root=root)
    assert counter() == ["prepare", "train", "evaluate"], "the second run executed a component"
    assert second.executed == []
    assert second.outcomes == {"prepare": Outcome.HIT, "train": Outcome.HIT, "evaluate": Outcome.HIT}
    assert artifact_ids(second) == artifact_ids(first)
    for name, task in second.tasks.items():
        original = first.tasks[name]
        assert task.cache_key == original.cache_key
        assert task.source_execution_id == original.execution_id
        assert task.execution_id != original.execution_id  # the CACHED execution recorded for run 2
        assert task.parameters == original.parameters
        for out, bindings in task.artifacts.items():
            assert [(b.uri, b.metadata, type(b.kfp_artifact)) for b in bindings] == [
                (b.uri, b.metadata, type(b.kfp_artifact)) for b in original.artifacts[out]
            ]
    assert second.outputs["Output"] == mse
    assert not Path(second.run_root).exists(), "a run served from cache writes nothing"
    (cached,) = client.metadata.GetExecutions(
        metadata_store_service_pb2.GetExecutionsRequest(ids=[second.tasks["train"].execution_id])
    ).executions
    assert cached.state == ExecutionState.CACHED

    # The compiled YAML is the same pipeline: same interfaces, same keys.
    package = root.parent / "train_pipeline.yaml"
    compiler.Compiler().compile(train_pipeline, str(package))
    from_yaml = run_pipeline(client, package, pipeline_root=root)
    assert from_yaml.executed == [] and artifact_ids(from_yaml) == artifact_ids(first)
    assert counter() == ["prepare", "train", "evaluate"]


def test_changed_middle_parameter_reruns_it_and_downstream(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    first = run_pipeline(client, train_pipeline, pipeline_root=root)
    changed = run_pipeline(client, train_pipeline, {"l2": 50.0}, pipeline_root=root)
    assert counter() == ["prepare", "train", "evaluate", "train", "evaluate"]
    assert changed.tasks["prepare"].outcome == Outcome.HIT
    assert changed.tasks["prepare"].artifact_id("data") == first.tasks["prepare"].artifact_id("data")
    assert changed.executed == ["evaluate", "train"]
    assert changed.tasks["train"].interface.parameters["l2"].number_value == 50.0
    assert changed.tasks["train"].artifact_id("model") != first.tasks["train"].artifact_id("model")
    assert changed.tasks["evaluate"].artifact_id("metrics") != first.tasks["evaluate"].artifact_id("metrics")
    assert changed.outputs["Output"] != first.outputs["Output"]
    # The downstream task of the new model read the upstream hit's data (same ID).
    assert list(changed.tasks["evaluate"].interface.input_artifacts["data"].ids) == [
        first.tasks["prepare"].artifact_id("data")
    ]


def test_forced_rerun_of_the_first_component_misses_everything_downstream(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    first = run_pipeline(client, train_pipeline, pipeline_root=root)
    forced = run_pipeline(client, train_pipeline, pipeline_root=root, rerun={"prepare"})
    assert counter() == ["prepare", "train", "evaluate"] * 2
    prep1, prep2 = first.tasks["prepare"], forced.tasks["prepare"]
    assert prep2.outcome == Outcome.DISABLED  # trigger MANUAL reads no cache
    assert prep2.artifact_id("data") != prep1.artifact_id("data")
    # Byte-identical content under a new artifact ID...
    assert Path(prep2.artifact("data").uri).read_bytes() == Path(prep1.artifact("data").uri).read_bytes()
    assert prep2.artifact("data").uri != prep1.artifact("data").uri
    # ...and the keys are made of IDs: every downstream task misses and runs.
    for name in ("train", "evaluate"):
        assert forced.tasks[name].ran and forced.tasks[name].outcome == Outcome.RESERVED
        assert forced.tasks[name].cache_key != first.tasks[name].cache_key
    assert forced.outputs["Output"] == first.outputs["Output"]

    # A normal run afterwards hits the newest results: the forced run's artifacts.
    after = run_pipeline(client, train_pipeline, pipeline_root=root)
    assert after.executed == [] and artifact_ids(after) == artifact_ids(forced)
    assert counter() == ["prepare", "train", "evaluate"] * 2


def test_identical_parallel_branches_run_once(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    names = component_names(load_pipeline_spec(twin_pipeline))
    assert names["comp-train"] == names["comp-train-2"] == "train"

    print_before = builtins.print
    started = time.monotonic()
    # A 1.5 s lease on 2 s trains: only the winner's heartbeat (ExtendReservation
    # every 0.5 s) keeps the loser waiting instead of taking the key over.
    run = run_pipeline(client, twin_pipeline, pipeline_root=root, max_workers=4, lease=1.5)
    elapsed = time.monotonic() - started
    assert builtins.print is print_before, "kfp.local's print swap was left behind"
    assert sorted(run.tasks) == ["evaluate", "evaluate-2", "prepare", "train", "train-2"]
    assert sorted(counter()) == ["evaluate", "prepare", "train"], "each identical pair executed once"

    trains = [run.tasks["train"], run.tasks["train-2"]]
    winner, loser = sorted(trains, key=lambda t: t.ran, reverse=True)
    assert winner.ran and winner.outcome == Outcome.RESERVED
    # The other one found the winner's reservation, waited, and received its result.
    assert loser.first_outcome == Outcome.IN_PROGRESS and loser.waited
    assert loser.outcome == Outcome.HIT and not loser.ran
    assert loser.artifact_id("model") == winner.artifact_id("model")
    assert loser.source_execution_id == winner.execution_id
    assert loser.cache_key == winner.cache_key
    evaluates = [run.tasks["evaluate"], run.tasks["evaluate-2"]]
    assert sorted(t.ran for t in evaluates) == [False, True]
    assert evaluates[0].artifact_id("metrics") == evaluates[1].artifact_id("metrics")
    # The branches ran side by side: one 2 s train, not two in a row.
    assert elapsed < 2 * 2.0 + 10

    states = [
        e.state
        for e in client.metadata.ListExecutions(
            metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="train")
        ).executions
    ]
    assert sorted(states) == sorted([ExecutionState.COMPLETE, ExecutionState.CACHED])


def test_enable_caching_false_runs_everything(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    first = run_pipeline(client, train_pipeline, pipeline_root=root)
    uncached = run_pipeline(client, train_pipeline, pipeline_root=root, enable_caching=False)
    assert counter() == ["prepare", "train", "evaluate"] * 2
    assert all(t.outcome == Outcome.DISABLED for t in uncached.tasks.values())
    assert uncached.tasks["prepare"].artifact_id("data") != first.tasks["prepare"].artifact_id("data")


def test_a_failing_task_is_recorded_failed(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    with pytest.raises(TaskFailedError, match="boom"):
        run_pipeline(client, failing_pipeline, pipeline_root=root)
    failed = client.metadata.ListExecutions(
        metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="boom")
    ).executions
    assert [e.state for e in failed] == [ExecutionState.FAILED]
    # prepare succeeded before and is served from cache now.
    with pytest.raises(TaskFailedError):
        run_pipeline(client, failing_pipeline, pipeline_root=root)
    assert counter() == ["prepare"]
    with pytest.raises(ValueError, match="no task named"):
        run_pipeline(client, failing_pipeline, pipeline_root=root, rerun={"nope"})
