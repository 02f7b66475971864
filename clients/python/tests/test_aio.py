"""stepcache.aio.Client: the same surface as Client, on grpc.aio, against a real server."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import stepcache
import stepcache.aio
from stepcache import DeadlineExceeded, InvalidArgument, NotFound, Outcome, cache_key
from stepcache.v1 import cache_service_pb2, metadata_store_service_pb2, types_pb2

PUBLIC = sorted(
    name for name, f in inspect.getmembers(stepcache.Client, inspect.isfunction) if not name.startswith("_")
)


def test_same_methods_and_arguments_as_the_sync_client() -> None:
    assert "get_cached" in PUBLIC and "put_execution" in PUBLIC
    for name in PUBLIC:
        sync_fn, aio_fn = getattr(stepcache.Client, name), getattr(stepcache.aio.Client, name)
        assert inspect.iscoroutinefunction(aio_fn), name
        assert inspect.signature(aio_fn) == inspect.signature(sync_fn), name
    assert inspect.signature(stepcache.aio.Client.__init__).parameters.keys() == (
        inspect.signature(stepcache.Client.__init__).parameters.keys()
    )


def iface(component: str, **params: Any) -> dict[str, Any]:
    return {"component": component, "parameters": params, "output_artifacts": {"out": "system.Dataset"}}


def test_miss_put_hit_and_concurrent_lookups(server_addr: str, namespace: str) -> None:
    async def main() -> None:
        async with stepcache.aio.Client(server_addr, namespace) as sc:
            ti = iface("aio-prepare", rows=1)
            assert await sc.compute_key(ti) == cache_key(ti)
            miss = await sc.get_cached(ti)
            assert miss.outcome == Outcome.MISS
            put = await sc.put_execution(ti, outputs={"out": "mem://aio"}, output_parameters={"rows": 1})
            assert put.published and put.cache_key == miss.cache_key
            hits = await asyncio.gather(*(sc.get_cached(ti) for _ in range(20)))
            assert {h.outcome for h in hits} == {Outcome.HIT}
            assert {h.execution.id for h in hits if h.execution} == {put.execution_id}
            (artifact,) = await sc.get_artifacts(put.outputs["out"])
            assert artifact.uri == "mem://aio"
            assert hits[0].output_parameters == {"rows": 1}

    asyncio.run(main())


def test_a_waiter_is_woken_by_a_put_from_another_task(server_addr: str, namespace: str) -> None:
    async def main() -> None:
        async with stepcache.aio.Client(server_addr, namespace) as sc:
            ti = iface("aio-waited")
            reserved = await sc.get_cached(ti, reservation_owner="task-1", lease=30)
            assert reserved.outcome == Outcome.RESERVED
            second = await sc.get_cached(ti, reservation_owner="task-2")
            assert second.outcome == Outcome.IN_PROGRESS
            waiter = asyncio.create_task(sc.wait(second.cache_key, 20))
            await sc.extend_reservation(reserved.cache_key, "task-1", 30)
            put = await sc.put_execution(ti, outputs={"out": "mem://w"}, reservation_owner="task-1")
            woken = await waiter
            assert woken.outcome == Outcome.HIT
            assert woken.execution is not None and woken.execution.id == put.execution_id

    asyncio.run(main())


def test_typed_errors_from_methods_and_raw_stubs(server_addr: str, namespace: str) -> None:
    async def main() -> None:
        async with stepcache.aio.Client(server_addr, namespace) as sc:
            with pytest.raises(InvalidArgument, match="component"):
                await sc.get_cached(iface(""))
            with pytest.raises(NotFound):
                await sc.get_artifacts([987654321])
            req = metadata_store_service_pb2.GetExecutionsRequest(ids=[987654321], namespace=namespace)
            with pytest.raises(NotFound):
                await sc.metadata.GetExecutions(req, timeout=10)
            key = (await sc.get_cached(iface("aio-slow"), reservation_owner="holder")).cache_key
            wait = cache_service_pb2.WaitForCachedExecutionRequest(namespace=namespace, cache_key=key)
            wait.timeout.FromSeconds(30)
            with pytest.raises(DeadlineExceeded):
                await sc.cache.WaitForCachedExecution(wait, timeout=0.2)
            context_id = await sc.put_context("system.PipelineRun", "aio-run")
            assert context_id == await sc.put_context("system.PipelineRun", "aio-run")

    asyncio.run(main())


def test_cached_step_runs_once_then_hits(server_addr: str, namespace: str) -> None:
    ran: list[str] = []

    async def run() -> stepcache.TaskOutputs:
        await asyncio.sleep(0)
        ran.append("featurize")
        return stepcache.TaskOutputs(artifacts={"out": "mem://features"}, parameters={"n": 2})

    async def fail() -> dict[str, str]:
        raise RuntimeError("boom")

    async def main() -> None:
        async with stepcache.aio.Client(server_addr, namespace) as sc:
            ti = iface("aio-featurize")
            first = await stepcache.aio.cached_step(sc, ti, run)
            assert first.ran and first.artifact("out").uri == "mem://features"
            second = await stepcache.aio.cached_step(sc, ti, run)
            assert second.outcome == Outcome.HIT and not second.ran
            assert second.artifact("out").id == first.artifact("out").id
            assert second.output_parameters == {"n": 2}
            # A plain function works too; a failure is recorded FAILED and re-raised.
            plain = await stepcache.aio.cached_step(sc, iface("aio-plain"), lambda: {"out": "mem://p"})
            assert plain.ran
            with pytest.raises(RuntimeError, match="boom"):
                await stepcache.aio.cached_step(sc, iface("aio-boom"), fail)
            assert (await sc.get_cached(iface("aio-boom"))).outcome == Outcome.MISS
            req = metadata_store_service_pb2.ListExecutionsRequest(namespace=namespace, component="aio-boom")
            failed = (await sc.metadata.ListExecutions(req, timeout=10)).executions
            assert [e.state for e in failed] == [types_pb2.EXECUTION_STATE_FAILED]

    asyncio.run(main())
    assert ran == ["featurize"]
