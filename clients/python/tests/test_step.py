"""cached_step: lookup -> run on a miss -> record."""

from __future__ import annotations

from pathlib import Path

import pytest
from stepcache import Client, ExecutionState, NewArtifact, Outcome, TaskOutputs, Trigger, cached_step
from stepcache.v1 import metadata_store_service_pb2

IFACE = {"component": "featurize", "parameters": {"k": 3}, "output_artifacts": {"features": "system.Dataset"}}


def test_runs_once_then_hits(client: Client, tmp_path: Path) -> None:
    calls: list[int] = []

    def run() -> TaskOutputs:
        calls.append(1)
        out = tmp_path / "features.csv"
        out.write_text("a,b\n1,2\n")
        return TaskOutputs(artifacts={"features": NewArtifact(uri=out.as_uri())}, parameters={"n": 1})

    first = cached_step(client, IFACE, run)
    assert first.outcome == Outcome.MISS and first.ran
    assert first.artifact("features").uri == (tmp_path / "features.csv").as_uri()
    assert first.output_parameters == {"n": 1}

    second = cached_step(client, IFACE, run)
    assert second.outcome == Outcome.HIT and not second.ran
    assert calls == [1]
    assert second.artifact("features").id == first.artifact("features").id
    assert second.output_parameters == {"n": 1}
    assert second.cache_key == first.cache_key
    # record_cached (the default) recorded a CACHED execution for the hit.
    (cached,) = client.metadata.GetExecutions(
        metadata_store_service_pb2.GetExecutionsRequest(ids=[second.execution_id])
    ).executions
    assert cached.state == ExecutionState.CACHED
    assert cached.cached_from_execution_id == first.execution_id

    # A manual run reads no cache: it runs again and emits a new artifact ID.
    third = cached_step(client, IFACE, run, trigger=Trigger.MANUAL)
    assert third.outcome == Outcome.DISABLED and third.ran
    assert calls == [1, 1]
    assert third.artifact("features").id != first.artifact("features").id


def test_plain_mapping_of_uris(client: Client) -> None:
    result = cached_step(client, IFACE | {"component": "plain"}, lambda: {"features": "mem://f"})
    assert result.artifact("features").type == "system.Dataset"


def test_a_task_without_outputs(client: Client) -> None:
    first = cached_step(client, {"component": "side-effect"}, lambda: {})
    assert first.ran and first.outputs == {}
    assert not cached_step(client, {"component": "side-effect"}, lambda: {}).ran


def test_a_failing_task_is_recorded_failed_and_not_served(client: Client) -> None:
    iface = IFACE | {"component": "boom"}

    def fail() -> TaskOutputs:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cached_step(client, iface, fail)
    failed = client.metadata.ListExecutions(
        metadata_store_service_pb2.ListExecutionsRequest(namespace=client.namespace, component="boom")
    ).executions
    assert [e.state for e in failed] == [ExecutionState.FAILED]
    assert cached_step(client, iface, lambda: {"features": "mem://ok"}).outcome == Outcome.MISS
