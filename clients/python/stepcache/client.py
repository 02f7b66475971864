"""A small, typed client over the generated stubs of CacheService and MetadataStoreService.

Results are plain dataclasses that hold the generated messages
(``stepcache.v1.types_pb2.Execution``, ``Artifact``...). Errors are not wrapped:
a failed RPC raises ``grpc.RpcError`` whose ``code()`` carries the meaning
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION... see spec/API.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

from stepcache.key import InterfaceLike, to_interface
from stepcache.v1 import (
    cache_service_pb2,
    cache_service_pb2_grpc,
    metadata_store_service_pb2,
    metadata_store_service_pb2_grpc,
    types_pb2,
)

__all__ = [
    "CacheResult",
    "Client",
    "ExecutionState",
    "NewArtifact",
    "OutputLike",
    "Outcome",
    "PutResult",
    "Trigger",
]

#: A duration as a ``timedelta`` or in seconds.
DurationLike: TypeAlias = timedelta | float | int


class Outcome(enum.IntEnum):
    """The answer of a cache lookup (``stepcache.v1.Outcome`` without its prefix)."""

    UNSPECIFIED = types_pb2.OUTCOME_UNSPECIFIED
    HIT = types_pb2.OUTCOME_HIT
    MISS = types_pb2.OUTCOME_MISS
    DISABLED = types_pb2.OUTCOME_DISABLED
    RESERVED = types_pb2.OUTCOME_RESERVED
    IN_PROGRESS = types_pb2.OUTCOME_IN_PROGRESS


class Trigger(enum.IntEnum):
    """What started the run; decides whether the cache is read by default."""

    UNSPECIFIED = types_pb2.TRIGGER_UNSPECIFIED
    PIPELINE = types_pb2.TRIGGER_PIPELINE
    MANUAL = types_pb2.TRIGGER_MANUAL
    RESTART = types_pb2.TRIGGER_RESTART
    RESUME = types_pb2.TRIGGER_RESUME


class ExecutionState(enum.IntEnum):
    """The state of an execution; only COMPLETE executions are served from cache."""

    UNSPECIFIED = types_pb2.EXECUTION_STATE_UNSPECIFIED
    NEW = types_pb2.EXECUTION_STATE_NEW
    RUNNING = types_pb2.EXECUTION_STATE_RUNNING
    COMPLETE = types_pb2.EXECUTION_STATE_COMPLETE
    FAILED = types_pb2.EXECUTION_STATE_FAILED
    CACHED = types_pb2.EXECUTION_STATE_CACHED
    CANCELED = types_pb2.EXECUTION_STATE_CANCELED


@dataclass(frozen=True)
class NewArtifact:
    """An output artifact to create. ``type`` defaults to the interface's output type."""

    uri: str
    type: str = ""
    name: str = ""
    content_digest: str = ""
    external_id: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)


#: One output artifact: a URI, a ``NewArtifact``, or an ``Artifact`` message
#: (an existing one when its ``id`` is set); or a list of those.
OutputLike: TypeAlias = str | NewArtifact | types_pb2.Artifact | Sequence[str | NewArtifact | types_pb2.Artifact]


@dataclass(frozen=True)
class CacheResult:
    """The answer of ``get_cached`` or ``wait``."""

    outcome: Outcome
    cache_key: str
    #: Why the lookup missed or was disabled, in words.
    reason: str = ""
    #: On a HIT: the original execution.
    execution: types_pb2.Execution | None = None
    #: On a HIT: its output artifacts by output name.
    outputs: dict[str, list[types_pb2.Artifact]] = field(default_factory=dict)
    #: On a HIT with ``record_cached=True``: the new CACHED execution.
    cached_execution: types_pb2.Execution | None = None
    #: RESERVED: the caller's reservation; IN_PROGRESS: the holder's.
    reservation: types_pb2.Reservation | None = None

    @property
    def hit(self) -> bool:
        """True when the task may be skipped and its outputs reused."""
        return self.outcome == Outcome.HIT

    @property
    def output_parameters(self) -> dict[str, Any]:
        """On a HIT: the original execution's output parameters as Python values."""
        if self.execution is None:
            return {}
        return {k: json_format.MessageToDict(v) for k, v in self.execution.output_parameters.items()}


@dataclass(frozen=True)
class PutResult:
    """The answer of ``put_execution``."""

    execution_id: int
    cache_key: str
    #: True when this write made the execution servable from cache.
    published: bool
    #: The IDs of the output artifacts, by output name, in order.
    outputs: dict[str, list[int]]


def _duration(d: DurationLike) -> duration_pb2.Duration:
    msg = duration_pb2.Duration()
    msg.FromTimedelta(d if isinstance(d, timedelta) else timedelta(seconds=d))
    return msg


def _values(m: Mapping[str, Any]) -> dict[str, struct_pb2.Value]:
    out = {}
    for k, v in m.items():
        value = struct_pb2.Value()
        json_format.ParseDict(v, value)
        out[k] = value
    return out


def _reservation(owner: str | None, lease: DurationLike | None) -> types_pb2.ReservationRequest | None:
    if owner is None:
        if lease is not None:
            raise ValueError("lease needs a reservation_owner")
        return None
    req = types_pb2.ReservationRequest(owner=owner)
    if lease is not None:
        req.lease.CopyFrom(_duration(lease))
    return req


def _result(
    resp: cache_service_pb2.GetCachedExecutionResponse | cache_service_pb2.WaitForCachedExecutionResponse,
) -> CacheResult:
    return CacheResult(
        outcome=Outcome(resp.outcome),
        cache_key=resp.cache_key,
        reason=resp.reason,
        execution=resp.execution if resp.HasField("execution") else None,
        outputs={name: list(lst.artifacts) for name, lst in resp.output_artifacts.items()},
        cached_execution=resp.cached_execution if resp.HasField("cached_execution") else None,
        reservation=resp.reservation if resp.HasField("reservation") else None,
    )


class Client:
    """A connection to a stepcache server, bound to one namespace.

    Use it as a context manager, or call ``close()``::

        with Client("127.0.0.1:50051", namespace="team-a") as sc:
            result = sc.get_cached({"component": "prepare", "parameters": {"rows": 100}})

    ``cache`` and ``metadata`` are the generated stubs, for the RPCs that this
    layer does not wrap.
    """

    def __init__(
        self,
        addr: str,
        namespace: str = "default",
        *,
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        """Connects (lazily) to ``addr`` (host:port) over plaintext, unless ``channel`` is given.

        ``timeout`` is the deadline in seconds of every call except ``wait``.
        """
        self.namespace = namespace
        self.timeout = timeout
        self._channel = channel if channel is not None else grpc.insecure_channel(addr)
        self.cache = cache_service_pb2_grpc.CacheServiceStub(self._channel)
        self.metadata = metadata_store_service_pb2_grpc.MetadataStoreServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compute_key(self, interface: InterfaceLike) -> str:
        """The server's cache key of ``interface`` (``stepcache.cache_key`` computes it offline)."""
        req = cache_service_pb2.ComputeCacheKeyRequest(interface=to_interface(interface))
        return str(self.cache.ComputeCacheKey(req, timeout=self.timeout).cache_key)

    def get_cached(
        self,
        interface: InterfaceLike,
        *,
        policy: types_pb2.CachePolicy | None = None,
        trigger: Trigger | None = None,
        enabled: bool | None = None,
        max_staleness: DurationLike | None = None,
        record_cached: bool = False,
        reservation_owner: str | None = None,
        lease: DurationLike | None = None,
        context_ids: Sequence[int] = (),
    ) -> CacheResult:
        """Looks the task up: HIT, MISS, DISABLED, RESERVED or IN_PROGRESS.

        Args:
            interface: the task's interface (message or protojson dict).
            policy: a complete ``CachePolicy``; or build one from
                ``trigger``, ``enabled`` (an explicit choice wins over the
                trigger) and ``max_staleness``.
            record_cached: on a HIT, record a CACHED execution that points at
                the original and emits OUTPUT events to the same artifact IDs.
            reservation_owner: on a miss, ask for the key's reservation
                (``RESERVED``), held for ``lease``.
            context_ids: contexts (a pipeline run...) to associate the CACHED
                execution with.
        """
        if policy is not None and (trigger is not None or enabled is not None or max_staleness is not None):
            raise ValueError("give either policy or trigger/enabled/max_staleness, not both")
        if policy is None:
            trigger_name = "TRIGGER_" + (trigger or Trigger.UNSPECIFIED).name
            policy = types_pb2.CachePolicy(trigger=trigger_name, enabled=enabled)
            if max_staleness is not None:
                policy.max_staleness.CopyFrom(_duration(max_staleness))
        req = cache_service_pb2.GetCachedExecutionRequest(
            namespace=self.namespace,
            interface=to_interface(interface),
            policy=policy,
            record_cached_execution=record_cached,
            reservation=_reservation(reservation_owner, lease),
            context_ids=list(context_ids),
        )
        return _result(self.cache.GetCachedExecution(req, timeout=self.timeout))

    def wait(
        self,
        cache_key: str,
        timeout: DurationLike,
        *,
        reservation_owner: str | None = None,
        lease: DurationLike | None = None,
    ) -> CacheResult:
        """Blocks until the key's result is published (HIT), its holder gives up, or ``timeout``.

        With ``reservation_owner``, the caller takes the reservation over when
        the holder gives up (``RESERVED``).
        """
        wait_timeout = _duration(timeout)
        req = cache_service_pb2.WaitForCachedExecutionRequest(
            namespace=self.namespace,
            cache_key=cache_key,
            timeout=wait_timeout,
            reservation=_reservation(reservation_owner, lease),
        )
        # The call's own deadline leaves the server time to answer after its timeout.
        deadline = wait_timeout.ToTimedelta().total_seconds() + (self.timeout or 30.0)
        return _result(self.cache.WaitForCachedExecution(req, timeout=deadline))

    def put_execution(
        self,
        interface: InterfaceLike,
        *,
        state: ExecutionState = ExecutionState.COMPLETE,
        outputs: Mapping[str, OutputLike] | None = None,
        output_parameters: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        external_id: str = "",
        cache_ttl: DurationLike | None = None,
        skip_publish: bool = False,
        reservation_owner: str = "",
        context_ids: Sequence[int] = (),
    ) -> PutResult:
        """Records an execution and its outputs in one atomic write.

        A COMPLETE execution becomes servable from cache (unless
        ``skip_publish``); FAILED and CANCELED ones are recorded but never
        served. ``outputs`` maps an output name to its artifact(s): a URI, a
        ``NewArtifact`` or an ``Artifact`` message; a new artifact's type
        defaults to the interface's ``output_artifacts[name]``. ``context_ids``
        associates the execution (and attributes its artifacts) with contexts.
        """
        ti = to_interface(interface)
        execution = types_pb2.Execution(
            namespace=self.namespace,
            external_id=external_id,
            interface=ti,
            state="EXECUTION_STATE_" + state.name,
            output_parameters=_values(output_parameters or {}),
            properties=_values(properties or {}),
        )
        if cache_ttl is not None:
            execution.cache_ttl.CopyFrom(_duration(cache_ttl))
        out_msgs = [
            types_pb2.OutputArtifact(name=name, artifact=self._artifact(a, ti.output_artifacts.get(name, "")))
            for name, value in (outputs or {}).items()
            for a in ([value] if isinstance(value, (str, NewArtifact, types_pb2.Artifact)) else value)
        ]
        req = metadata_store_service_pb2.PutExecutionRequest(
            execution=execution,
            outputs=out_msgs,
            skip_publish=skip_publish,
            reservation_owner=reservation_owner,
            context_ids=list(context_ids),
        )
        resp = self.metadata.PutExecution(req, timeout=self.timeout)
        ids: dict[str, list[int]] = {}
        for out, artifact_id in zip(out_msgs, resp.output_artifact_ids, strict=True):
            ids.setdefault(out.name, []).append(artifact_id)
        return PutResult(
            execution_id=resp.execution_id,
            cache_key=resp.cache_key,
            published=resp.published,
            outputs=ids,
        )

    def extend_reservation(self, cache_key: str, owner: str, lease: DurationLike) -> types_pb2.Reservation:
        """Renews ``owner``'s reservation of ``cache_key`` for ``lease`` from now (a heartbeat).

        FAILED_PRECONDITION when ``owner`` does not hold it (any more).
        """
        req = cache_service_pb2.ExtendReservationRequest(
            namespace=self.namespace, cache_key=cache_key, owner=owner, lease=_duration(lease)
        )
        resp: cache_service_pb2.ExtendReservationResponse = self.cache.ExtendReservation(req, timeout=self.timeout)
        return resp.reservation

    def release_reservation(self, cache_key: str, owner: str) -> None:
        """Gives ``owner``'s reservation of ``cache_key`` up; one waiter takes it over."""
        req = cache_service_pb2.ReleaseReservationRequest(namespace=self.namespace, cache_key=cache_key, owner=owner)
        self.cache.ReleaseReservation(req, timeout=self.timeout)

    def put_context(self, type: str, name: str, properties: Mapping[str, Any] | None = None) -> int:
        """The ID of the context ``(type, name)`` in this namespace, created when new."""
        ctx = types_pb2.Context(namespace=self.namespace, type=type, name=name, properties=_values(properties or {}))
        req = metadata_store_service_pb2.PutContextsRequest(contexts=[ctx])
        (context_id,) = self.metadata.PutContexts(req, timeout=self.timeout).context_ids
        return int(context_id)

    def _artifact(self, a: str | NewArtifact | types_pb2.Artifact, default_type: str) -> types_pb2.Artifact:
        if isinstance(a, types_pb2.Artifact):
            return a
        if isinstance(a, str):
            a = NewArtifact(uri=a)
        return types_pb2.Artifact(
            namespace=self.namespace,
            type=a.type or default_type,
            name=a.name,
            uri=a.uri,
            external_id=a.external_id,
            content_digest=a.content_digest,
            properties=_values(a.properties),
        )
