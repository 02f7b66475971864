"""The typed client against a real server: lookups, records, policy, namespaces, wait."""

from __future__ import annotations

from typing import Any

import pytest
from stepcache import Client, ExecutionState, NewArtifact, NotFound, Outcome, Trigger, cache_key
from stepcache.v1 import types_pb2


def iface(component: str, inputs: dict[str, list[int]] | None = None, **params: Any) -> dict[str, Any]:
    return {
        "component": component,
        "container": {"image": "python:3.11", "command": ["python", f"{component}.py"]},
        "parameters": params,
        "input_artifacts": {k: {"ids": v} for k, v in (inputs or {}).items()},
        "output_artifacts": {"out": "system.Dataset"},
        "output_parameters": {"rows": "NUMBER_INTEGER"},
    }


def test_enums_mirror_the_proto() -> None:
    for enum_cls, proto_enum, prefix in [
        (Outcome, types_pb2.Outcome, "OUTCOME_"),
        (Trigger, types_pb2.Trigger, "TRIGGER_"),
        (ExecutionState, types_pb2.ExecutionState, "EXECUTION_STATE_"),
    ]:
        assert {prefix + m.name: m.value for m in enum_cls} == dict(proto_enum.items())


def test_miss_put_then_hit(client: Client) -> None:
    ti = iface("prepare", rows=100)
    miss = client.get_cached(ti)
    assert miss.outcome == Outcome.MISS and not miss.hit
    assert miss.cache_key == cache_key(ti)
    assert "no entry" in miss.reason

    put = client.put_execution(
        ti,
        outputs={"out": NewArtifact(uri="file:///tmp/data.csv", content_digest="sha256:00")},
        output_parameters={"rows": 100},
    )
    assert put.published
    assert put.cache_key == miss.cache_key
    assert list(put.outputs) == ["out"] and len(put.outputs["out"]) == 1

    hit = client.get_cached(ti)
    assert hit.outcome == Outcome.HIT and hit.hit
    assert hit.execution is not None and hit.execution.id == put.execution_id
    assert hit.execution.state == types_pb2.EXECUTION_STATE_COMPLETE
    (artifact,) = hit.outputs["out"]
    assert artifact.id == put.outputs["out"][0]
    assert artifact.uri == "file:///tmp/data.csv"
    assert artifact.type == "system.Dataset"  # defaulted from the interface
    assert artifact.namespace == client.namespace
    assert artifact.state == types_pb2.ARTIFACT_STATE_LIVE
    assert hit.output_parameters == {"rows": 100}
    assert hit.cached_execution is None


def test_record_cached_execution(client: Client) -> None:
    ti = iface("record")
    put = client.put_execution(ti, outputs={"out": "mem://a"})
    hit = client.get_cached(ti, record_cached=True)
    assert hit.cached_execution is not None
    assert hit.cached_execution.state == types_pb2.EXECUTION_STATE_CACHED
    assert hit.cached_execution.cached_from_execution_id == put.execution_id


def test_several_artifacts_per_output_keep_their_order(client: Client) -> None:
    ti = iface("shards")
    existing = client.put_execution(iface("upstream"), outputs={"out": "mem://u"}).outputs["out"][0]
    put = client.put_execution(
        ti, outputs={"out": ["mem://0", NewArtifact(uri="mem://1"), types_pb2.Artifact(id=existing)]}
    )
    assert put.outputs["out"][2] == existing
    hit = client.get_cached(ti)
    assert [a.uri for a in hit.outputs["out"]] == ["mem://0", "mem://1", "mem://u"]


def test_policy_trigger_enabled_and_staleness(client: Client) -> None:
    ti = iface("policy")
    client.put_execution(ti, outputs={"out": "mem://p"})
    assert client.get_cached(ti, trigger=Trigger.PIPELINE).outcome == Outcome.HIT
    manual = client.get_cached(ti, trigger=Trigger.MANUAL)
    assert manual.outcome == Outcome.DISABLED and "MANUAL" in manual.reason
    assert client.get_cached(ti, enabled=False).outcome == Outcome.DISABLED
    assert client.get_cached(ti, trigger=Trigger.MANUAL, enabled=True).outcome == Outcome.HIT
    assert client.get_cached(ti, max_staleness=3600).outcome == Outcome.HIT
    explicit = types_pb2.CachePolicy(trigger=types_pb2.TRIGGER_RESTART)
    assert client.get_cached(ti, policy=explicit).outcome == Outcome.DISABLED
    with pytest.raises(ValueError):
        client.get_cached(ti, policy=explicit, enabled=True)


def test_failed_executions_are_never_served(client: Client) -> None:
    ti = iface("flaky")
    put = client.put_execution(ti, state=ExecutionState.FAILED)
    assert not put.published
    assert client.get_cached(ti).outcome == Outcome.MISS


def test_a_new_upstream_artifact_id_changes_the_key(client: Client) -> None:
    first = client.put_execution(iface("up"), outputs={"out": "mem://same"}).outputs["out"][0]
    second = client.put_execution(iface("up"), outputs={"out": "mem://same"}).outputs["out"][0]
    assert first != second
    client.put_execution(iface("down", {"data": [first]}), outputs={"out": "mem://d"})
    assert client.get_cached(iface("down", {"data": [first]})).hit
    assert client.get_cached(iface("down", {"data": [second]})).outcome == Outcome.MISS


def test_namespaces_do_not_see_each_other(server_addr: str, client: Client) -> None:
    ti = iface("isolated")
    client.put_execution(ti, outputs={"out": "mem://ns"})
    assert client.get_cached(ti).hit
    with Client(server_addr, namespace=client.namespace + "-other") as other:
        assert other.get_cached(ti).outcome == Outcome.MISS
        # An input artifact of another namespace does not exist there.
        mine = client.put_execution(iface("owner"), outputs={"out": "mem://o"}).outputs["out"][0]
        with pytest.raises(NotFound):
            other.put_execution(iface("consumer", {"data": [mine]}))


def test_wait_returns_the_published_result(client: Client) -> None:
    ti = iface("waited")
    put = client.put_execution(ti, outputs={"out": "mem://w"})
    result = client.wait(put.cache_key, timeout=5)
    assert result.outcome == Outcome.HIT
    assert result.execution is not None and result.execution.id == put.execution_id
