"""A small, typed client over the generated stubs of CacheService and MetadataStoreService.

Results are plain dataclasses that hold the generated messages
(``stepcache.v1.types_pb2.Execution``, ``Artifact``...). A failed call raises
a ``stepcache.errors.StepcacheError`` subclass (``NotFound``,
``InvalidArgument``, ``Unavailable``...), which is also a ``grpc.RpcError``.
``stepcache.aio.Client`` is the same client on ``grpc.aio``; both build their
requests and read their answers here (``_Requests``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeAlias, TypeVar

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

from stepcache import channel as _channel
from stepcache.channel import ChannelOptions, RetryPolicy
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
    "RetryPolicy",
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


T = TypeVar("T")

#: The retry policy a client uses unless told otherwise.
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One unary call to make: the stub's method, its request, its deadline, and how to read the answer."""

    method: Any
    request: Any
    timeout: float | None
    result: Callable[[Any], T]


class _Requests:
    """The requests and answers of both clients; they differ only in how they make a ``_Call``."""

    namespace: str
    timeout: float | None
    #: The generated stubs on the main channel (which retries the reads).
    cache: Any
    metadata: Any
    #: The same on the channel that also retries ``CONDITIONAL_METHODS``.
    _idempotent_cache: Any
    _idempotent_metadata: Any

    def _compute_key(self, interface: InterfaceLike) -> _Call[str]:
        req = cache_service_pb2.ComputeCacheKeyRequest(interface=to_interface(interface))
        return _Call(self.cache.ComputeCacheKey, req, self.timeout, lambda r: str(r.cache_key))

    def _get_cached(
        self,
        interface: InterfaceLike,
        policy: types_pb2.CachePolicy | None,
        trigger: Trigger | None,
        enabled: bool | None,
        max_staleness: DurationLike | None,
        record_cached: bool,
        reservation_owner: str | None,
        lease: DurationLike | None,
        context_ids: Sequence[int],
    ) -> _Call[CacheResult]:
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
        # Recording a CACHED execution is the one part of a lookup that a repeat would do twice.
        stub = self.cache if record_cached else self._idempotent_cache
        return _Call(stub.GetCachedExecution, req, self.timeout, _result)

    def _wait(
        self, cache_key: str, timeout: DurationLike, reservation_owner: str | None, lease: DurationLike | None
    ) -> _Call[CacheResult]:
        wait_timeout = _duration(timeout)
        req = cache_service_pb2.WaitForCachedExecutionRequest(
            namespace=self.namespace,
            cache_key=cache_key,
            timeout=wait_timeout,
            reservation=_reservation(reservation_owner, lease),
        )
        # The call's own deadline leaves the server time to answer after its timeout.
        deadline = wait_timeout.ToTimedelta().total_seconds() + (self.timeout or 30.0)
        return _Call(self.cache.WaitForCachedExecution, req, deadline, _result)

    def _put_execution(
        self,
        interface: InterfaceLike,
        state: ExecutionState,
        outputs: Mapping[str, OutputLike] | None,
        output_parameters: Mapping[str, Any] | None,
        properties: Mapping[str, Any] | None,
        external_id: str,
        cache_ttl: DurationLike | None,
        skip_publish: bool,
        reservation_owner: str,
        context_ids: Sequence[int],
    ) -> _Call[PutResult]:
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

        def result(resp: metadata_store_service_pb2.PutExecutionResponse) -> PutResult:
            ids: dict[str, list[int]] = {}
            for out, artifact_id in zip(out_msgs, resp.output_artifact_ids, strict=True):
                ids.setdefault(out.name, []).append(artifact_id)
            return PutResult(
                execution_id=resp.execution_id, cache_key=resp.cache_key, published=resp.published, outputs=ids
            )

        # The server answers a repeated external_id with the original execution: safe to retry.
        stub = self._idempotent_metadata if external_id else self.metadata
        return _Call(stub.PutExecution, req, self.timeout, result)

    def _extend_reservation(self, cache_key: str, owner: str, lease: DurationLike) -> _Call[types_pb2.Reservation]:
        req = cache_service_pb2.ExtendReservationRequest(
            namespace=self.namespace, cache_key=cache_key, owner=owner, lease=_duration(lease)
        )
        return _Call(self.cache.ExtendReservation, req, self.timeout, lambda r: r.reservation)

    def _release_reservation(self, cache_key: str, owner: str) -> _Call[None]:
        req = cache_service_pb2.ReleaseReservationRequest(namespace=self.namespace, cache_key=cache_key, owner=owner)
        return _Call(self.cache.ReleaseReservation, req, self.timeout, lambda r: None)

    def _put_context(self, type: str, name: str, properties: Mapping[str, Any] | None) -> _Call[int]:
        ctx = types_pb2.Context(namespace=self.namespace, type=type, name=name, properties=_values(properties or {}))
        req = metadata_store_service_pb2.PutContextsRequest(contexts=[ctx])

        def result(resp: metadata_store_service_pb2.PutContextsResponse) -> int:
            (context_id,) = resp.context_ids
            return int(context_id)

        return _Call(self.metadata.PutContexts, req, self.timeout, result)

    def _get_artifacts(self, ids: Sequence[int]) -> _Call[list[types_pb2.Artifact]]:
        req = metadata_store_service_pb2.GetArtifactsRequest(ids=list(ids), namespace=self.namespace)
        return _Call(self.metadata.GetArtifacts, req, self.timeout, lambda r: list(r.artifacts))

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

    def _bind_stubs(self, main: Any, idempotent: Any) -> None:
        self.cache = cache_service_pb2_grpc.CacheServiceStub(main)
        self.metadata = metadata_store_service_pb2_grpc.MetadataStoreServiceStub(main)
        self._idempotent_cache = cache_service_pb2_grpc.CacheServiceStub(idempotent)
        self._idempotent_metadata = metadata_store_service_pb2_grpc.MetadataStoreServiceStub(idempotent)


class Client(_Requests):
    """A connection to a stepcache server, bound to one namespace.

    Use it as a context manager, or call ``close()``::

        with Client("127.0.0.1:50051", namespace="team-a") as sc:
            result = sc.get_cached({"component": "prepare", "parameters": {"rows": 100}})

    ``cache`` and ``metadata`` are the generated stubs, for the RPCs that this
    layer does not wrap; they raise the same typed errors, and retry the reads.
    """

    def __init__(
        self,
        addr: str,
        namespace: str = "default",
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        options: ChannelOptions = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        """Connects (lazily) to ``addr`` (host:port).

        Args:
            timeout: the deadline in seconds of every call except ``wait``
                (retries included).
            tls: connect over TLS, verifying the server against gRPC's default
                roots; ``root_certificates`` (PEM bytes) verifies against those
                instead and implies ``tls``.
            token: a bearer token for a server run with ``--auth-tokens``, sent
                as call credentials: over TLS, or plaintext only to loopback.
            retry: gRPC's retry policy for the calls that are safe to repeat
                (``stepcache.channel``); ``None`` turns retries off.
            options: more gRPC channel options (``grpc.max_receive_message_length``...).
            channel: a channel of your own, used as it is (with typed errors);
                then ``tls``, ``token``, ``retry`` and ``options`` do not apply.
        """
        self.namespace = namespace
        self.timeout = timeout
        if channel is not None:
            main = idempotent = grpc.intercept_channel(channel, _channel.TypedErrors())
            self._channels: tuple[grpc.Channel, ...] = (channel,)
        else:
            main, idempotent = _channel.ChannelSettings(
                addr, tls, root_certificates, token, retry, options
            ).sync_channels()
            self._channels = (main,) if idempotent is main else (main, idempotent)
        self._bind_stubs(main, idempotent)

    def close(self) -> None:
        """Closes the channel(s)."""
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _run(call: _Call[T]) -> T:
        return call.result(call.method(call.request, timeout=call.timeout))

    def compute_key(self, interface: InterfaceLike) -> str:
        """The server's cache key of ``interface`` (``stepcache.cache_key`` computes it offline)."""
        return self._run(self._compute_key(interface))

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
                the original and emits OUTPUT events to the same artifact IDs
                (such a lookup is not retried).
            reservation_owner: on a miss, ask for the key's reservation
                (``RESERVED``), held for ``lease``.
            context_ids: contexts (a pipeline run...) to associate the CACHED
                execution with.
        """
        return self._run(
            self._get_cached(
                interface, policy, trigger, enabled, max_staleness, record_cached, reservation_owner, lease, context_ids
            )
        )

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
        return self._run(self._wait(cache_key, timeout, reservation_owner, lease))

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
        With an ``external_id`` the write is retried (a repeat returns the
        original execution); without one it is tried once.
        """
        return self._run(
            self._put_execution(
                interface,
                state,
                outputs,
                output_parameters,
                properties,
                external_id,
                cache_ttl,
                skip_publish,
                reservation_owner,
                context_ids,
            )
        )

    def extend_reservation(self, cache_key: str, owner: str, lease: DurationLike) -> types_pb2.Reservation:
        """Renews ``owner``'s reservation of ``cache_key`` for ``lease`` from now (a heartbeat).

        FailedPrecondition when ``owner`` does not hold it (any more).
        """
        return self._run(self._extend_reservation(cache_key, owner, lease))

    def release_reservation(self, cache_key: str, owner: str) -> None:
        """Gives ``owner``'s reservation of ``cache_key`` up; one waiter takes it over."""
        self._run(self._release_reservation(cache_key, owner))

    def put_context(self, type: str, name: str, properties: Mapping[str, Any] | None = None) -> int:
        """The ID of the context ``(type, name)`` in this namespace, created when new."""
        return self._run(self._put_context(type, name, properties))

    def get_artifacts(self, ids: Sequence[int]) -> list[types_pb2.Artifact]:
        """The artifacts with these IDs in this namespace (NotFound for any other)."""
        return self._run(self._get_artifacts(ids))
