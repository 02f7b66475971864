"""``cached_step``: lookup -> run on a miss -> record, in one call; ``stepcache.aio.cached_step`` on asyncio."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from stepcache.client import CacheResult, Client, DurationLike, ExecutionState, Outcome, OutputLike, PutResult, Trigger
from stepcache.key import InterfaceLike, to_interface
from stepcache.v1 import types_pb2

if TYPE_CHECKING:
    from stepcache.aio import Client as AioClient

__all__ = ["StepResult", "TaskOutputs", "cached_step", "cached_step_async"]


@dataclass(frozen=True)
class TaskOutputs:
    """What a task produced: output artifacts by name, and output parameters."""

    artifacts: Mapping[str, OutputLike] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)


#: ``run_fn`` returns either ``TaskOutputs`` or just the output artifacts by name.
RunFn: TypeAlias = Callable[[], TaskOutputs | Mapping[str, OutputLike]]
#: The same, or a coroutine function that does.
AsyncRunFn: TypeAlias = Callable[
    [], Awaitable[TaskOutputs | Mapping[str, OutputLike]] | TaskOutputs | Mapping[str, OutputLike]
]


@dataclass(frozen=True)
class StepResult:
    """How a step was satisfied, and its outputs."""

    #: The lookup's outcome: HIT (nothing ran), or MISS/DISABLED/RESERVED (it ran).
    outcome: Outcome
    cache_key: str
    #: The execution recorded for this step: the new one when it ran; on a HIT
    #: the CACHED execution when one was recorded, else the original.
    execution_id: int
    #: Output artifacts by output name (the same IDs as the original's on a HIT).
    outputs: dict[str, list[types_pb2.Artifact]]
    output_parameters: dict[str, Any]
    #: Why the lookup did not hit, in the server's words (empty on a HIT).
    reason: str = ""

    @property
    def ran(self) -> bool:
        """True when ``run_fn`` was executed."""
        return self.outcome != Outcome.HIT

    def artifact(self, name: str) -> types_pb2.Artifact:
        """The single artifact of output ``name``."""
        (only,) = self.outputs[name]
        return only


@dataclass(frozen=True)
class _Op:
    """One thing a step's plan needs done: a client method and its arguments, or ``_RUN`` (call ``run_fn``)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


_RUN = _Op("")

#: A step as a plan that yields what it needs done and is sent the results;
#: ``cached_step`` runs it on ``Client``, ``stepcache.aio.cached_step`` on ``aio.Client``.
_Plan: TypeAlias = Generator[_Op, Any, StepResult]


def _plan(
    interface: InterfaceLike,
    trigger: Trigger | None,
    enabled: bool | None,
    max_staleness: DurationLike | None,
    record_cached: bool,
    cache_ttl: DurationLike | None,
    reservation_owner: str | None,
    lease: DurationLike | None,
    wait_timeout: DurationLike,
) -> _Plan:
    ti = to_interface(interface)
    policy = {"trigger": trigger, "enabled": enabled, "max_staleness": max_staleness, "record_cached": record_cached}
    reservation = {"reservation_owner": reservation_owner, "lease": lease}
    result: CacheResult = yield _Op("get_cached", (ti,), policy | reservation)
    if result.outcome == Outcome.IN_PROGRESS:
        result = yield _Op("wait", (result.cache_key, wait_timeout), reservation)
        if result.outcome == Outcome.IN_PROGRESS:
            raise TimeoutError(f"{ti.component}: still in progress elsewhere after {wait_timeout}")
    if result.hit:
        recorded = result.cached_execution or result.execution
        return StepResult(
            outcome=result.outcome,
            cache_key=result.cache_key,
            execution_id=recorded.id if recorded is not None else 0,
            outputs=result.outputs,
            output_parameters=result.output_parameters,
            reason=result.reason,
        )

    owner = reservation_owner or ""
    try:
        produced = yield _RUN
    except Exception:
        yield _Op("put_execution", (ti,), {"state": ExecutionState.FAILED, "reservation_owner": owner})
        raise
    if not isinstance(produced, TaskOutputs):
        produced = TaskOutputs(artifacts=produced)
    put: PutResult = yield _Op(
        "put_execution",
        (ti,),
        {
            "outputs": produced.artifacts,
            "output_parameters": produced.parameters,
            "cache_ttl": cache_ttl,
            "reservation_owner": owner,
        },
    )
    # The server's view of the new artifacts (state, timestamps...).
    ids = [i for name_ids in put.outputs.values() for i in name_ids]
    artifacts: list[types_pb2.Artifact] = (yield _Op("get_artifacts", (ids,))) if ids else []
    by_id = {a.id: a for a in artifacts}
    return StepResult(
        outcome=result.outcome,
        cache_key=put.cache_key,
        execution_id=put.execution_id,
        outputs={name: [by_id[i] for i in name_ids] for name, name_ids in put.outputs.items()},
        output_parameters=dict(produced.parameters),
        reason=result.reason,
    )


def cached_step(
    client: Client,
    interface: InterfaceLike,
    run_fn: RunFn,
    *,
    trigger: Trigger | None = None,
    enabled: bool | None = None,
    max_staleness: DurationLike | None = None,
    record_cached: bool = True,
    cache_ttl: DurationLike | None = None,
    reservation_owner: str | None = None,
    lease: DurationLike | None = None,
    wait_timeout: DurationLike = timedelta(minutes=10),
) -> StepResult:
    """Serves the step from cache, or runs ``run_fn`` and records its outputs.

    1. ``get_cached``: on a HIT the step is skipped and the original outputs
       (same artifact IDs) are returned; with ``record_cached`` a CACHED
       execution is recorded for this run.
    2. Otherwise ``run_fn()`` runs and returns its outputs (URIs, ``NewArtifact``
       or ``Artifact`` messages by output name, or ``TaskOutputs``).
    3. ``put_execution`` records them as COMPLETE, which publishes the entry.
       If ``run_fn`` raises, a FAILED execution is recorded (never served) and
       the exception propagates.

    With ``reservation_owner``, a miss takes the key's reservation, so that an
    identical step elsewhere waits (``IN_PROGRESS``) instead of running twice;
    this call waits up to ``wait_timeout`` for such a holder in turn, and
    raises ``TimeoutError`` if the holder neither finishes nor gives up by then.
    """
    policy = (trigger, enabled, max_staleness, record_cached, cache_ttl, reservation_owner, lease, wait_timeout)
    plan = _plan(interface, *policy)
    op = next(plan)
    try:
        while True:
            if op is _RUN:
                try:
                    produced = run_fn()
                except Exception as e:
                    op = plan.throw(e)
                    continue
                op = plan.send(produced)
            else:
                op = plan.send(getattr(client, op.method)(*op.args, **op.kwargs))
    except StopIteration as done:
        result: StepResult = done.value
        return result


async def cached_step_async(
    client: AioClient,
    interface: InterfaceLike,
    run_fn: AsyncRunFn,
    *,
    trigger: Trigger | None = None,
    enabled: bool | None = None,
    max_staleness: DurationLike | None = None,
    record_cached: bool = True,
    cache_ttl: DurationLike | None = None,
    reservation_owner: str | None = None,
    lease: DurationLike | None = None,
    wait_timeout: DurationLike = timedelta(minutes=10),
) -> StepResult:
    """``cached_step`` on ``stepcache.aio.Client`` (exported as ``stepcache.aio.cached_step``).

    ``run_fn`` is a coroutine function, or a plain function (run as it is,
    on the event loop: hand blocking work to a thread yourself).
    """
    policy = (trigger, enabled, max_staleness, record_cached, cache_ttl, reservation_owner, lease, wait_timeout)
    plan = _plan(interface, *policy)
    op = next(plan)
    try:
        while True:
            if op is _RUN:
                try:
                    produced = run_fn()
                    if inspect.isawaitable(produced):
                        produced = await produced
                except Exception as e:
                    op = plan.throw(e)
                    continue
                op = plan.send(produced)
            else:
                op = plan.send(await getattr(client, op.method)(*op.args, **op.kwargs))
    except StopIteration as done:
        result: StepResult = done.value
        return result
