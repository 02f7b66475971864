"""stepcache_kfp: arguments checked as kfp checks them, and the runner's fixes
(dependencies from task inputs, FAILED executions in the run's context, gone
local outputs never served, kfp version clashes), against the test server."""

# No `from __future__ import annotations` here: kfp reads the components'
# annotations (Input[Dataset]...) at decoration time.

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Dataset, Input
from kfp.dsl.types.type_utils import InconsistentTypeException
from kfp_support import component, pipeline, run_kfp_local
from stepcache import Client, Outcome
from stepcache.v1 import metadata_store_service_pb2, types_pb2
from stepcache_kfp import check_kfp_version, run_pipeline
from test_kfp import prepare, train_pipeline


def executions(client: Client, **filters: Any) -> list[types_pb2.Execution]:
    request = metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, **filters)
    return list(client.metadata.ListExecutions(request).executions)


@component
def count_rows(data: Input[Dataset]) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("count_rows\n")
    with open(data.path) as f:
        return len(f.read().splitlines()) - 1


@pipeline("stepcache-kfp-required")
def required_pipeline(rows: int, seed: int = 1) -> int:
    return count_rows(data=prepare(rows=rows, seed=seed).outputs["data"]).output  # type: ignore[no-any-return]


@pipeline("stepcache-kfp-input-artifact")
def input_artifact_pipeline(data: Input[Dataset], rows: int = 3) -> int:
    prepare(rows=rows, seed=1)
    return count_rows(data=data).output  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("pipeline_func", "arguments", "error"),
    [
        (train_pipeline, {"rowz": 5}, TypeError),  # misspelled: kfp refuses it, it is no default
        (required_pipeline, {}, TypeError),  # a required parameter left out
        (input_artifact_pipeline, {}, TypeError),  # a pipeline input artifact left out
        (train_pipeline, {"rows": "many"}, InconsistentTypeException),
        (input_artifact_pipeline, {"data": Dataset(uri="/nonexistent/rows.csv")}, ValueError),
    ],
    ids=["unknown-name", "missing-parameter", "missing-input-artifact", "wrong-type", "artifact-argument"],
)
def test_arguments_are_checked_as_kfp_does_before_anything_runs(
    client: Client,
    root: Path,
    counter: Callable[[], list[str]],
    pipeline_func: Any,
    arguments: dict[str, Any],
    error: type[Exception],
) -> None:
    with pytest.raises(error) as ours:
        run_pipeline(client, pipeline_func, arguments, pipeline_root=root)
    with pytest.raises(error) as theirs:
        run_kfp_local(pipeline_func, arguments, root)
    assert str(ours.value) == str(theirs.value)
    assert counter() == [], "a task ran before the arguments were checked"
    assert executions(client) == []


def test_a_missing_required_parameter_is_named(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    with pytest.raises(TypeError, match=r"missing 1 required argument: rows"):
        run_pipeline(client, required_pipeline, pipeline_root=root)
    assert run_pipeline(client, required_pipeline, {"rows": 4}, pipeline_root=root).outputs == {"Output": 4}
    assert counter() == ["prepare", "count_rows"]


@component
def cpus() -> str:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("cpus\n")
    return "1"


@component
def work(x: int) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("work\n")
    return x + 1


@pipeline("stepcache-kfp-limits")
def limits_pipeline(x: int = 1) -> int:
    # The compiler leaves `cpus` out of work's dependentTasks; work's inputs name it.
    return work(x=x).set_cpu_limit(cpus().output).output  # type: ignore[no-any-return]


def test_a_producer_named_only_in_the_inputs_runs_first(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    package = root.parent / "limits.yaml"
    compiler.Compiler().compile(limits_pipeline, str(package))
    work_spec = yaml.safe_load(package.read_text())["root"]["dag"]["tasks"]["work"]
    assert "dependentTasks" not in work_spec and "pipelinechannel--cpus-Output" in work_spec["inputs"]["parameters"]

    first = run_pipeline(client, package, pipeline_root=root, max_workers=4)
    assert counter() == ["cpus", "work"] and first.outputs == {"Output": 2}
    again = run_pipeline(client, package, pipeline_root=root)
    assert again.executed == [] and again.outputs == {"Output": 2} and counter() == ["cpus", "work"]


def test_a_task_whose_dispatch_raises_is_failed_in_the_runs_context(
    client: Client, root: Path, counter: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**_: Any) -> Any:
        raise OSError("the runner cannot start the task")

    # kfp.local's dispatcher raising (a runner that cannot start), not a task exiting non-zero.
    monkeypatch.setattr("kfp.local.task_dispatcher.run_single_task_implementation", refuse)
    with pytest.raises(OSError, match="cannot start"):
        run_pipeline(client, train_pipeline, pipeline_root=root, run_id="dispatch-fails")
    (failed,) = executions(client, component="prepare")
    assert failed.state == types_pb2.EXECUTION_STATE_FAILED
    (context_id,) = [
        c.id
        for c in client.metadata.ListContexts(
            metadata_store_service_pb2.ListContextsRequest(namespace=client.namespace)
        ).contexts
        if c.name == "dispatch-fails"
    ]
    assert [e.id for e in executions(client, context_id=context_id)] == [failed.id]


def test_a_hit_whose_local_outputs_are_gone_is_not_served(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    first = run_pipeline(client, train_pipeline, pipeline_root=root)
    data = first.tasks["prepare"].artifact("data")
    Path(data.uri).unlink()

    # train is forced to run: it reads prepare's data, which must be there again.
    second = run_pipeline(client, train_pipeline, pipeline_root=root, rerun={"train"})
    assert counter() == ["prepare", "train", "evaluate"] * 2
    prep = second.tasks["prepare"]
    assert prep.ran and prep.outcome == Outcome.RESERVED
    assert prep.artifact_id("data") != first.tasks["prepare"].artifact_id("data")
    assert Path(prep.artifact("data").uri).is_file()
    assert second.outputs == first.outputs
    (gone,) = client.metadata.GetArtifacts(
        metadata_store_service_pb2.GetArtifactsRequest(ids=[first.tasks["prepare"].artifact_id("data")])
    ).artifacts
    assert gone.state == types_pb2.ARTIFACT_STATE_DELETED
    # Nothing is gone now: everything hits.
    assert run_pipeline(client, train_pipeline, pipeline_root=root).executed == []


def adds_one(x: int) -> int:
    return x + 1


def test_a_component_that_would_install_another_kfp_is_refused(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    other = dsl.component(adds_one, base_image="python:3.11", kfp_package_path="kfp==2.15.0")

    @pipeline("stepcache-kfp-other-kfp")
    def other_kfp() -> None:
        other(x=1)

    with pytest.raises(RuntimeError, match=r"pip-installs kfp==2\.15\.0 .* where kfp 2\.16\.\d+ is installed"):
        run_pipeline(client, other_kfp, pipeline_root=root)
    assert executions(client) == []


def test_an_installed_kfp_of_another_minor_release_is_named() -> None:
    check_kfp_version("2.16.1")
    with pytest.raises(ImportError, match=r"drives kfp\.local 2\.16, but kfp 2\.15\.0 is installed"):
        check_kfp_version("2.15.0")
