"""stepcache_kfp: the KFP constructs beyond a flat DAG, each run twice or more
against the test server, with executed/cached counts and outputs, beside
kfp.local's result of the same pipeline where kfp.local 2.16 gets one."""

# No `from __future__ import annotations` here: kfp reads the components'
# annotations (Input[Dataset]...) at decoration time.

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest
from kfp import dsl
from kfp.dsl import Dataset, Input, Output
from kfp_support import component, pipeline, run_kfp_local
from stepcache import Client, Outcome
from stepcache.v1 import metadata_store_service_pb2, types_pb2
from stepcache_kfp import PipelineRun, TaskFailedError, run_pipeline
from stepcache_kfp.runner import _condition_holds
from test_kfp import prepare, train_pipeline
from test_kfp_checks import count_rows


def outcomes(run: PipelineRun) -> dict[str, str]:
    return {name: t.outcome.name for name, t in run.tasks.items()}


# -- who misses after a forced rerun; tasks with caching off ---------------------------


@component
def split(rows: int, data: Output[Dataset]) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("split\n")
    with open(data.path, "w") as f:
        f.write("x\n" + "".join(f"{i}\n" for i in range(rows)))
    return rows


@component
def twice(x: int) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("twice\n")
    return 2 * x


@component
def plus(a: int, b: int) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("plus\n")
    return a + b


def consumers(rows: int, cache_split: bool) -> int:
    produced = split(rows=rows).set_caching_options(cache_split)
    counted = count_rows(data=produced.outputs["data"])  # consumes the artifact
    doubled = twice(x=produced.outputs["Output"])  # consumes the parameter only
    return plus(a=counted.output, b=doubled.output).output  # type: ignore[no-any-return]


@pipeline("stepcache-kfp-consumers")
def artifact_and_parameter_consumers(rows: int = 5) -> int:
    return consumers(rows, cache_split=True)


@pipeline("stepcache-kfp-uncached-producer")
def uncached_producer(rows: int = 5) -> int:
    return consumers(rows, cache_split=False)


def test_a_forced_rerun_misses_exactly_the_artifact_consumers(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    assert run_kfp_local(artifact_and_parameter_consumers, {}, root) == {"Output": 15}
    first = run_pipeline(client, artifact_and_parameter_consumers, pipeline_root=root)
    assert first.outputs == {"Output": 15} and len(first.executed) == 4
    forced = run_pipeline(client, artifact_and_parameter_consumers, pipeline_root=root, rerun={"split"})
    # count-rows reads split's new artifact; twice reads an unchanged parameter, and
    # plus the unchanged values of both: they hit.
    assert forced.executed == ["count-rows", "split"] and forced.outputs == {"Output": 15}
    assert outcomes(forced)["twice"] == outcomes(forced)["plus"] == "HIT"
    assert sorted(counter()) == sorted(["split", "count_rows", "twice", "plus"] * 2 + ["split", "count_rows"])


def test_a_task_with_caching_off_runs_every_time_and_records(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    runs = [run_pipeline(client, uncached_producer, pipeline_root=root) for _ in range(2)]
    assert [r.outputs for r in runs] == [{"Output": 15}] * 2
    assert runs[1].executed == ["count-rows", "split"] and runs[1].tasks["split"].outcome == Outcome.DISABLED
    recorded = client.metadata.ListExecutions(
        metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="split")
    ).executions
    assert sorted(e.state for e in recorded) == [types_pb2.EXECUTION_STATE_COMPLETE] * 2
    # With caching on for the run, the recorded executions are served.
    assert run_pipeline(client, uncached_producer, pipeline_root=root, enable_caching=True).executed == []


# -- dsl.If / dsl.Elif / dsl.Else, nested ---------------------------------------


@component
def flip(seed: int) -> str:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("flip\n")
    return ["heads", "tails", "edge"][seed % 3]


@component
def shout(word: str) -> str:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write(f"shout:{word}\n")
    return word.upper()


@pipeline("stepcache-kfp-branches")
def branches(seed: int = 0, loud: bool = True) -> None:
    side = flip(seed=seed).output
    with dsl.If(side == "heads"):
        shout(word="heads")
        # dsl.Condition: the older spelling of dsl.If, same spec.
        with dsl.Condition(loud == True):  # noqa: E712 - a pipeline channel compared, not a bool
            shout(word="heads-loud")
    with dsl.Elif(side == "tails"):
        shout(word="tails")
    with dsl.Else():
        shout(word="edge")


def test_branches_run_the_taken_branch_only(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    first = run_pipeline(client, branches, {"seed": 0}, pipeline_root=root)
    assert sorted(counter()) == ["flip", "shout:heads", "shout:heads-loud"]
    assert sorted(first.tasks) == [
        "condition-branches-1/condition-3/condition-2/shout-2",
        "condition-branches-1/condition-3/shout",
        "flip",
    ]
    assert sorted(t.parameters["Output"] for t in first.tasks.values()) == ["HEADS", "HEADS-LOUD", "heads"]

    again = run_pipeline(client, branches, {"seed": 0}, pipeline_root=root)
    assert again.executed == [] and len(again.tasks) == 3
    # The inner condition false: its task neither runs nor records.
    quiet = run_pipeline(client, branches, {"seed": 0, "loud": False}, pipeline_root=root)
    assert quiet.executed == [] and len(quiet.tasks) == 2
    # Another branch: flip (new seed) and the new branch's task run, nothing else.
    tails = run_pipeline(client, branches, {"seed": 1}, pipeline_root=root)
    assert tails.executed == ["condition-branches-1/condition-4/shout-3", "flip"]
    edge = run_pipeline(client, branches, {"seed": 2}, pipeline_root=root)
    assert edge.executed == ["condition-branches-1/condition-5/shout-4", "flip"]
    back = run_pipeline(client, branches, {"seed": 3}, pipeline_root=root)  # heads again: all cached
    assert back.tasks["flip"].ran and [t for t in back.executed if t != "flip"] == []
    assert counter().count("shout:heads") == 1 and counter().count("shout:edge") == 1

    recorded = client.metadata.ListExecutions(
        metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="shout")
    ).executions
    assert sorted(e.interface.parameters["word"].string_value for e in recorded if not e.cached_from_execution_id) == [
        "edge",
        "heads",
        "heads-loud",
        "tails",
    ]


@pytest.mark.parametrize(
    ("condition", "value", "holds"),
    [
        ("inputs.parameter_values['a'] == 'x && !y'", "x && !y", True),  # operators inside a literal
        ("!(inputs.parameter_values['a'] == 'h') && inputs.parameter_values['a'] != 't'", "e", True),
        ("!(inputs.parameter_values['a'] == 'h') && inputs.parameter_values['a'] != 't'", "t", False),
        ("int(inputs.parameter_values['a']) > 2 || inputs.parameter_values['a'] == 0", 1.0, False),
        ("double(inputs.parameter_values['a']) >= 2.5", 3, True),
    ],
)
def test_conditions_as_the_compiler_writes_them(condition: str, value: Any, holds: bool) -> None:
    assert _condition_holds(condition, {"a": value}) is holds


@pipeline("stepcache-kfp-single-if")
def single_if(seed: int = 0) -> None:
    with dsl.If(flip(seed=seed).output == "heads"):
        shout(word="heads")


def test_a_top_level_if(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    assert run_pipeline(client, single_if, pipeline_root=root).executed == ["condition-1/shout", "flip"]
    assert run_pipeline(client, single_if, {"seed": 1}, pipeline_root=root).executed == ["flip"]
    assert counter() == ["flip", "shout:heads", "flip"]


def test_kfp_local_does_not_evaluate_conditions(root: Path, counter: Callable[[], list[str]]) -> None:
    """Why the branch tests compare with what KFP defines and not with kfp.local:
    kfp.local 2.16 runs every branch of a dsl.If/Elif/Else group, and never
    the body of a dsl.If at the top of a pipeline."""
    run_kfp_local(branches, {"seed": 0}, root)
    assert sorted(counter()) == ["flip", "shout:edge", "shout:heads", "shout:heads-loud", "shout:tails"]
    run_kfp_local(single_if, {"seed": 0}, root)
    assert counter()[5:] == ["flip"]


# -- dsl.ParallelFor and dsl.Collected -----------------------------------------


@component
def square(x: int) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write(f"square:{x}\n")
    return x * x


@component
def add(xs: list) -> int:  # type: ignore[type-arg]
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("add\n")
    return int(sum(xs))


@component
def numbers(n: int) -> list:  # type: ignore[type-arg]
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("numbers\n")
    return list(range(1, n + 1))


@pipeline("stepcache-kfp-loop-literal")
def loop_literal() -> None:
    with dsl.ParallelFor([1, 2, 3], parallelism=2) as x:
        square(x=x)


@pipeline("stepcache-kfp-loop-parameter")
def loop_parameter(xs: list = [1, 2, 3]) -> int:  # type: ignore[type-arg]  # noqa: B006 - kfp reads the default
    with dsl.ParallelFor(xs, parallelism=2) as x:
        sq = square(x=x)
    return add(xs=dsl.Collected(sq.output)).output  # type: ignore[no-any-return]


@pipeline("stepcache-kfp-loop-output")
def loop_output(n: int = 3) -> int:
    with dsl.ParallelFor(numbers(n=n).output) as x:
        sq = square(x=x)
    return add(xs=dsl.Collected(sq.output)).output  # type: ignore[no-any-return]


def test_a_loop_over_a_literal_runs_each_item_once(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    run_kfp_local(loop_literal, {}, root)
    theirs = sorted(counter())
    first = run_pipeline(client, loop_literal, pipeline_root=root)
    assert sorted(counter()) == sorted(theirs * 2) and theirs == ["square:1", "square:2", "square:3"]
    assert sorted(first.tasks) == ["for-loop-2/0/square", "for-loop-2/1/square", "for-loop-2/2/square"]
    assert [first.tasks[f"for-loop-2/{i}/square"].parameters["Output"] for i in range(3)] == [1, 4, 9]
    assert run_pipeline(client, loop_literal, pipeline_root=root).executed == []


def test_each_iteration_is_its_own_entry_and_collected_follows(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    with pytest.raises(KeyError, match="for-loop-1"):  # kfp.local 2.16 cannot collect a loop's outputs
        run_kfp_local(loop_parameter, {}, root)
    assert counter() == []
    first = run_pipeline(client, loop_parameter, pipeline_root=root)
    assert first.outputs == {"Output": 14}
    assert sorted(counter()) == ["add", "square:1", "square:2", "square:3"]
    assert run_pipeline(client, loop_parameter, pipeline_root=root).executed == []

    # One item changed: one iteration and the collecting task rerun.
    changed = run_pipeline(client, loop_parameter, {"xs": [1, 2, 4]}, pipeline_root=root)
    assert changed.executed == ["add", "for-loop-1/2/square"] and changed.outputs == {"Output": 21}
    # Same values in another order: every iteration hits, the collected list is new.
    swapped = run_pipeline(client, loop_parameter, {"xs": [4, 2, 1]}, pipeline_root=root)
    assert swapped.executed == ["add"] and swapped.outputs == {"Output": 21}
    assert counter().count("square:4") == 1

    over_output = run_pipeline(client, loop_output, pipeline_root=root)
    assert over_output.outputs == {"Output": 14}
    # numbers ran; the squares of 1..3 and their sum are the entries of the first run above.
    assert over_output.executed == ["numbers"]


@pipeline("stepcache-kfp-loop-dicts")
def loop_dicts() -> int:
    with dsl.ParallelFor([{"x": 1, "y": 10}, {"x": 2, "y": 20}]) as item:
        total = plus(a=item.x, b=item.y)
    return add(xs=dsl.Collected(total.output)).output  # type: ignore[no-any-return]


def test_a_loop_over_dicts_reads_their_fields(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    first = run_pipeline(client, loop_dicts, pipeline_root=root)
    assert first.outputs == {"Output": 33}
    assert [first.tasks[f"for-loop-2/{i}/plus"].parameters["Output"] for i in range(2)] == [11, 22]
    assert run_pipeline(client, loop_dicts, pipeline_root=root).executed == []
    assert sorted(counter()) == ["add", "plus", "plus"]


@component
def occupy(x: int, lockdir: str) -> int:
    import os
    import time

    mine = os.path.join(lockdir, str(x))
    open(mine, "w").close()
    time.sleep(1.0)
    alongside = len(os.listdir(lockdir))
    os.remove(mine)
    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write(f"occupied:{alongside}\n")
    return x


@pipeline("stepcache-kfp-loop-parallelism")
def bounded_loop(lockdir: str) -> None:
    with dsl.ParallelFor([1, 2, 3, 4, 5], parallelism=2) as x:
        occupy(x=x, lockdir=lockdir)


def test_parallelism_bounds_the_iterations_running_at_once(
    client: Client, root: Path, counter: Callable[[], list[str]], tmp_path: Path
) -> None:
    lockdir = tmp_path / "running"
    lockdir.mkdir()
    run = run_pipeline(client, bounded_loop, {"lockdir": str(lockdir)}, pipeline_root=root, max_workers=8)
    assert len(run.executed) == 5 and len(counter()) == 5
    # Each iteration saw at most one other running beside it.
    assert all(int(line.split(":")[1]) <= 2 for line in counter())


@component
def write(x: int, out: Output[Dataset]):  # type: ignore[no-untyped-def]
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write(f"write:{x}\n")
    with open(out.path, "w") as f:
        f.write(f"{x}\n")


@component
def concat(parts: Input[list[Dataset]]) -> str:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("concat\n")
    return "".join(open(p.path).read() for p in parts)


@pipeline("stepcache-kfp-loop-artifacts")
def loop_artifacts(xs: list = [1, 2, 3]) -> str:  # type: ignore[type-arg]  # noqa: B006 - kfp reads the default
    with dsl.ParallelFor(xs) as x:
        w = write(x=x)
    return concat(parts=dsl.Collected(w.outputs["out"])).output  # type: ignore[no-any-return]


@pipeline("stepcache-kfp-make-many")
def make_many() -> list[Dataset]:
    with dsl.ParallelFor([1, 2]) as x:
        w = write(x=x)
    return dsl.Collected(w.outputs["out"])  # type: ignore[no-any-return]


@pipeline("stepcache-kfp-loop-over-artifacts")
def loop_over_artifacts() -> None:
    with dsl.ParallelFor(make_many().output) as data:
        count_rows(data=data)


def test_a_loop_over_collected_artifacts(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    run_kfp_local(loop_over_artifacts, {}, root)
    theirs = sorted(counter())
    assert theirs == ["count_rows", "count_rows", "write:1", "write:2"]
    first = run_pipeline(client, loop_over_artifacts, pipeline_root=root)
    assert sorted(counter()) == sorted(theirs * 2)
    writes = [first.tasks[f"stepcache-kfp-make-many/for-loop-2/{i}/write"].artifact_id("out") for i in range(2)]
    reads = [list(first.tasks[f"for-loop-1/{i}/count-rows"].interface.input_artifacts["data"].ids) for i in range(2)]
    assert reads == [[w] for w in writes]
    assert run_pipeline(client, loop_over_artifacts, pipeline_root=root).executed == []
    forced = run_pipeline(client, loop_over_artifacts, pipeline_root=root, rerun={"write"})
    assert len(forced.executed) == 4  # new artifacts: both readers miss


# -- pipelines as components ----------------------------------------------------


@pipeline("stepcache-kfp-inner")
def inner(rows: int, seed: int) -> Dataset:
    return prepare(rows=rows, seed=seed).outputs["data"]


@pipeline("stepcache-kfp-outer")
def outer(rows: int = 200, seed: int = 7) -> int:
    return count_rows(data=inner(rows=rows, seed=seed).output).output  # type: ignore[no-any-return]


def test_a_nested_pipeline_caches_as_if_inlined(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    assert run_kfp_local(outer, {}, root) == {"Output": 200}
    assert counter() == ["prepare", "count_rows"]
    flat = run_pipeline(client, train_pipeline, pipeline_root=root)  # prepare(rows=200, seed=7) at the top
    nested = run_pipeline(client, outer, pipeline_root=root)
    assert nested.outputs == {"Output": 200}
    assert outcomes(nested) == {"count-rows": "RESERVED", "stepcache-kfp-inner/prepare": "HIT"}
    data_id = flat.tasks["prepare"].artifact_id("data")
    assert nested.tasks["stepcache-kfp-inner/prepare"].artifact_id("data") == data_id
    assert list(nested.tasks["count-rows"].interface.input_artifacts["data"].ids) == [data_id]
    assert run_pipeline(client, outer, pipeline_root=root).executed == []
    forced = run_pipeline(client, outer, pipeline_root=root, rerun={"prepare"})
    assert forced.executed == ["count-rows", "stepcache-kfp-inner/prepare"] and forced.outputs == {"Output": 200}


@pipeline("stepcache-kfp-outer-dataset")
def outer_dataset(rows: int = 20) -> Dataset:
    return inner(rows=rows, seed=3).output


def test_a_nested_pipelines_artifact_output_is_kfp_locals(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    theirs = run_kfp_local(outer_dataset, {}, root)["Output"]
    ours = run_pipeline(client, outer_dataset, pipeline_root=root).outputs["Output"]
    assert type(ours) is type(theirs) is Dataset
    assert ours.metadata == theirs.metadata == {"rows": 20}
    assert Path(ours.uri).read_bytes() == Path(theirs.uri).read_bytes()
    cached = run_pipeline(client, outer_dataset, pipeline_root=root)
    assert cached.executed == [] and cached.outputs["Output"].uri == ours.uri
    assert counter() == ["prepare", "prepare"]


# -- dsl.importer ------------------------------------------------------------------


@pipeline("stepcache-kfp-importer")
def imported(uri: str) -> int:
    data = dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False).output
    return count_rows(data=data).output  # type: ignore[no-any-return]


def test_an_imported_file_is_an_entry_keyed_by_its_content(
    client: Client, root: Path, counter: Callable[[], list[str]], tmp_path: Path
) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("x\n1\n2\n")
    uri = str(source)
    assert run_kfp_local(imported, {"uri": uri}, root) == {"Output": 2}
    first = run_pipeline(client, imported, {"uri": uri}, pipeline_root=root)
    assert first.outputs == {"Output": 2} and first.executed == ["count-rows", "importer"]
    assert first.tasks["importer"].artifact("artifact").uri == uri
    again = run_pipeline(client, imported, {"uri": uri}, pipeline_root=root)
    assert again.executed == []
    assert again.tasks["importer"].artifact_id("artifact") == first.tasks["importer"].artifact_id("artifact")
    source.write_text("x\n1\n2\n3\n")
    changed = run_pipeline(client, imported, {"uri": uri}, pipeline_root=root)
    assert changed.executed == ["count-rows", "importer"] and changed.outputs == {"Output": 3}
    assert changed.tasks["importer"].artifact_id("artifact") != first.tasks["importer"].artifact_id("artifact")
    assert counter() == ["count_rows"] * 3


# -- dsl.ExitHandler, ignore_upstream_failure, set_retry ------------------------------


@component
def maybe_fail(fail: bool) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write(f"maybe_fail:{fail}\n")
    if fail:
        raise RuntimeError("asked to fail")
    return 1


@component
def cleanup(msg: str) -> str:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write(f"cleanup:{msg}\n")
    return msg


@pipeline("stepcache-kfp-exit-handler")
def with_exit_handler(fail: bool = False, msg: str = "bye") -> None:
    with dsl.ExitHandler(cleanup(msg=msg)):
        maybe_fail(fail=fail)


@pipeline("stepcache-kfp-ignore-upstream-failure")
def with_tolerant_task(fail: bool = False) -> None:
    upstream = maybe_fail(fail=fail)
    cleanup(msg="after").after(upstream).ignore_upstream_failure()


def test_the_exit_task_runs_after_the_group_succeeded_or_failed(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    run_kfp_local(with_exit_handler, {}, root)
    assert counter() == ["maybe_fail:False", "cleanup:bye"]
    first = run_pipeline(client, with_exit_handler, pipeline_root=root)
    assert first.executed == ["cleanup", "exit-handler-1/maybe-fail"]
    assert run_pipeline(client, with_exit_handler, pipeline_root=root).executed == []
    with pytest.raises(TaskFailedError, match="maybe-fail"):
        run_pipeline(client, with_exit_handler, {"fail": True, "msg": "after-failure"}, pipeline_root=root)
    assert counter()[-2:] == ["maybe_fail:True", "cleanup:after-failure"]


def test_a_task_that_ignores_upstream_failure_runs_after_it(
    client: Client, root: Path, counter: Callable[[], list[str]]
) -> None:
    run_kfp_local(with_tolerant_task, {}, root)
    assert run_pipeline(client, with_tolerant_task, pipeline_root=root).executed == ["cleanup", "maybe-fail"]
    assert counter() == ["maybe_fail:False", "cleanup:after"] * 2
    with pytest.raises(TaskFailedError, match="maybe-fail"):
        run_pipeline(client, with_tolerant_task, {"fail": True}, pipeline_root=root)
    # cleanup's interface is unchanged: it ran after the failure as a hit.
    assert counter()[4:] == ["maybe_fail:True"]
    recorded = client.metadata.ListExecutions(
        metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="cleanup")
    ).executions
    assert len([e for e in recorded if e.cached_from_execution_id]) == 1  # the CACHED record of the failing run


@component
def flaky(marker: str) -> int:
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("flaky\n")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return 7


@pipeline("stepcache-kfp-retry")
def with_retry(marker: str) -> int:
    return flaky(marker=marker).set_retry(num_retries=2, backoff_duration="0s").output  # type: ignore[no-any-return]


def test_set_retry_runs_a_failed_task_again(client: Client, root: Path, counter: Callable[[], list[str]]) -> None:
    marker = str(root.parent / "flaky-marker")
    run = run_pipeline(client, with_retry, {"marker": marker}, pipeline_root=root)
    assert run.outputs == {"Output": 7} and counter() == ["flaky", "flaky"]
    states = sorted(
        e.state
        for e in client.metadata.ListExecutions(
            metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="flaky")
        ).executions
    )
    assert states == sorted([types_pb2.EXECUTION_STATE_FAILED, types_pb2.EXECUTION_STATE_COMPLETE])
    assert run_pipeline(client, with_retry, {"marker": marker}, pipeline_root=root).executed == []


# -- optional input artifacts -----------------------------------------------------------


@component
def describe(data: Optional[Input[Dataset]] = None) -> str:  # noqa: UP045 - kfp reads Optional[...]
    import os

    with open(os.environ["STEPCACHE_KFP_COUNTER"], "a") as f:
        f.write("describe\n")
    return "none" if data is None else open(data.path).read()


@pipeline("stepcache-kfp-optional-input")
def with_optional_input() -> str:
    return describe().output  # type: ignore[no-any-return]


# -- refused, before anything runs ---------------------------------------------------


@component
def notify(status: dsl.PipelineTaskFinalStatus) -> str:
    return str(status.state)


@pipeline("stepcache-kfp-final-status")
def with_final_status() -> None:
    with dsl.ExitHandler(notify()):
        flip(seed=0)


@pipeline("stepcache-kfp-oneof")
def with_oneof(seed: int = 0) -> str:
    side = flip(seed=seed).output
    with dsl.If(side == "heads"):
        a = shout(word="a")
    with dsl.Else():
        b = shout(word="b")
    return dsl.OneOf(a.output, b.output)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("pipeline_func", "construct", "kfp_local_error"),
    [
        (with_final_status, "PipelineTaskFinalStatus", NotImplementedError),
        (with_oneof, "dsl.OneOf", NotImplementedError),
        (loop_artifacts, "list of artifacts", KeyError),
        (with_optional_input, "optional input artifact 'data' left unset", KeyError),
    ],
    ids=["final-status", "oneof", "collected-artifacts", "optional-input-artifact"],
)
def test_what_kfp_local_cannot_run_is_refused_before_anything_runs(
    client: Client,
    root: Path,
    counter: Callable[[], list[str]],
    pipeline_func: Any,
    construct: str,
    kfp_local_error: type[Exception],
) -> None:
    with pytest.raises(NotImplementedError, match=construct):
        run_pipeline(client, pipeline_func, pipeline_root=root)
    assert counter() == []
    with pytest.raises(kfp_local_error):
        run_kfp_local(pipeline_func, {}, root)
