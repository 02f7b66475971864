"""``stepcache.aio.Client``: the same client on ``grpc.aio``, for asyncio drivers.

Its methods, arguments, results, errors and retries are those of
``stepcache.Client``; each method is a coroutine::

    async with stepcache.aio.Client("127.0.0.1:50051", namespace="team-a") as sc:
        result = await sc.get_cached({"component": "prepare"})

Create it inside the event loop that uses it (grpc.aio binds a channel to its loop).
``stepcache.aio.cached_step`` is ``stepcache.cached_step`` for this client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import grpc.aio

from stepcache import channel as _channel
from stepcache.channel import ChannelOptions, RetryPolicy
from stepcache.client import (
    DEFAULT_RETRY,
    CacheResult,
    DurationLike,
    ExecutionState,
    OutputLike,
    PutResult,
    Trigger,
    _Call,
    _Requests,
)
from stepcache.key import InterfaceLike
from stepcache.step import cached_step_async as cached_step
from stepcache.v1 import types_pb2

__all__ = ["Client", "cached_step"]

T = TypeVar("T")


class Client(_Requests):
    """``stepcache.Client`` on ``grpc.aio``: ``async with``, and ``await`` every call.

    ``cache`` and ``metadata`` are the generated stubs on the aio channel.
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
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """As ``stepcache.Client``; a ``channel`` of your own should carry ``channel.AioTypedErrors``."""
        self.namespace = namespace
        self.timeout = timeout
        if channel is not None:
            main = idempotent = channel
        else:
            main, idempotent = _channel.ChannelSettings(
                addr, tls, root_certificates, token, retry, options
            ).aio_channels()
        self._channels = (main,) if idempotent is main else (main, idempotent)
        self._bind_stubs(main, idempotent)

    async def close(self) -> None:
        """Closes the channel(s), cancelling the calls in flight."""
        for ch in self._channels:
            await ch.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    async def _run(call: _Call[T]) -> T:
        return call.result(await call.method(call.request, timeout=call.timeout))

    async def compute_key(self, interface: InterfaceLike) -> str:
        """As ``stepcache.Client.compute_key``."""
        return await self._run(self._compute_key(interface))

    async def get_cached(
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
        """As ``stepcache.Client.get_cached``."""
        return await self._run(
            self._get_cached(
                interface, policy, trigger, enabled, max_staleness, record_cached, reservation_owner, lease, context_ids
            )
        )

    async def wait(
        self,
        cache_key: str,
        timeout: DurationLike,
        *,
        reservation_owner: str | None = None,
        lease: DurationLike | None = None,
    ) -> CacheResult:
        """As ``stepcache.Client.wait``."""
        return await self._run(self._wait(cache_key, timeout, reservation_owner, lease))

    async def put_execution(
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
        """As ``stepcache.Client.put_execution``."""
        return await self._run(
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

    async def extend_reservation(self, cache_key: str, owner: str, lease: DurationLike) -> types_pb2.Reservation:
        """As ``stepcache.Client.extend_reservation``."""
        return await self._run(self._extend_reservation(cache_key, owner, lease))

    async def release_reservation(self, cache_key: str, owner: str) -> None:
        """As ``stepcache.Client.release_reservation``."""
        await self._run(self._release_reservation(cache_key, owner))

    async def put_context(self, type: str, name: str, properties: Mapping[str, Any] | None = None) -> int:
        """As ``stepcache.Client.put_context``."""
        return await self._run(self._put_context(type, name, properties))

    async def get_artifacts(self, ids: Sequence[int]) -> list[types_pb2.Artifact]:
        """As ``stepcache.Client.get_artifacts``."""
        return await self._run(self._get_artifacts(ids))
