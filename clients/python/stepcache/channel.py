"""Channels for both clients: credentials (TLS, bearer tokens), gRPC's retry policy, typed errors.

Retries are gRPC's own (a service config on the channel), so they run inside
one call: its deadline covers every attempt, and the backoff is gRPC's
(exponential, each wait drawn at random up to the current backoff). Only calls
that are safe to repeat are retried:

- every read (``SAFE_METHODS``);
- ``GetCachedExecution`` unless it records a CACHED execution (a reservation
  asked for again by the same owner just restarts its lease);
- ``PutExecution`` whose execution carries an ``external_id`` (the server
  answers a repeat with the original execution).

The last two depend on the request, so the clients keep a second channel whose
service config retries them too (``CONDITIONAL_METHODS``) and send a request
there only when it is safe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from stepcache.errors import from_rpc_error

__all__ = ["CONDITIONAL_METHODS", "SAFE_METHODS", "RetryPolicy"]

CACHE = "stepcache.v1.CacheService"
METADATA = "stepcache.v1.MetadataStoreService"

#: (service, method) of the calls that only read: always retried.
SAFE_METHODS: tuple[tuple[str, str], ...] = (
    (CACHE, "ComputeCacheKey"),
    (CACHE, "WaitForCachedExecution"),
    (CACHE, "ExplainCacheMiss"),
    (CACHE, "GetCacheStats"),
    (METADATA, "GetArtifacts"),
    (METADATA, "ListArtifacts"),
    (METADATA, "GetExecutions"),
    (METADATA, "ListExecutions"),
    (METADATA, "GetEvents"),
    (METADATA, "GetContexts"),
    (METADATA, "ListContexts"),
    (METADATA, "GetLineage"),
)

#: Calls retried only when the request makes them safe (see the module's doc).
CONDITIONAL_METHODS: tuple[tuple[str, str], ...] = (
    (CACHE, "GetCachedExecution"),
    (METADATA, "PutExecution"),
)

ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]
C = TypeVar("C")


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy for the safe calls (pass ``retry=None`` to a client to turn retries off).

    A failed attempt whose status is in ``codes`` is tried again after a wait
    drawn at random between 0 and the current backoff, which starts at
    ``initial_backoff`` seconds and grows by ``backoff_multiplier`` up to
    ``max_backoff``. gRPC caps ``max_attempts`` (the first try included) at 5.
    The call's deadline (the client's ``timeout``) bounds all attempts. The
    channel also reconnects on this backoff after it loses the server.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0
    codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be 2 to 5 (gRPC's limit); use retry=None for no retries")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("backoffs must satisfy 0 < initial_backoff <= max_backoff")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")
        if not self.codes:
            raise ValueError("codes must name at least one status code")

    def service_config(self, methods: Sequence[tuple[str, str]]) -> str:
        """The gRPC service config (JSON) that retries ``methods`` by this policy."""
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": s, "method": m} for s, m in methods],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff:.3f}s",
                            "maxBackoff": f"{self.max_backoff:.3f}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": [c.name for c in self.codes],
                        },
                    }
                ]
            }
        )

    def channel_options(self, methods: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
        """Channel options: the service config, retries on, reconnects on the same backoff."""
        return [
            ("grpc.service_config", self.service_config(methods)),
            ("grpc.enable_retries", 1),
            ("grpc.initial_reconnect_backoff_ms", round(self.initial_backoff * 1000)),
            ("grpc.max_reconnect_backoff_ms", round(self.max_backoff * 1000)),
        ]


def _is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]") if ":" in addr else addr
    return host in ("localhost", "::1") or host.startswith("127.")


def credentials(
    addr: str, *, tls: bool, root_certificates: bytes | None, token: str | None
) -> grpc.ChannelCredentials | None:
    """The channel's credentials, or None for plaintext without a token.

    TLS verifies the server against ``root_certificates`` (PEM), or gRPC's
    default roots when None. A token goes as call credentials
    (``authorization: Bearer ...``), which gRPC sends only over TLS or, for a
    server on loopback, over a local plaintext connection.
    """
    if root_certificates is not None:
        tls = True
    call_creds = grpc.access_token_call_credentials(token) if token is not None else None
    if tls:
        channel_creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    elif call_creds is not None:
        if not _is_loopback(addr):
            raise ValueError(
                f"a token is sent only over TLS (tls=True or root_certificates=...), or to loopback: {addr}"
            )
        channel_creds = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        return None
    if call_creds is None:
        return channel_creds
    return grpc.composite_channel_credentials(channel_creds, call_creds)


def options(
    retry: RetryPolicy | None, methods: Sequence[tuple[str, str]], extra: ChannelOptions
) -> list[tuple[str, Any]]:
    """Channel options for a channel that retries ``methods`` (none when ``retry`` is None)."""
    base = retry.channel_options(methods) if retry is not None else [("grpc.enable_retries", 0)]
    return [*base, *extra]


def _deadline_passed(timeout: float | None, start: float) -> bool:
    return timeout is not None and time.monotonic() - start >= timeout


class TypedErrors(grpc.UnaryUnaryClientInterceptor):
    """Raises a ``StepcacheError`` subclass in place of a failed call's ``grpc.RpcError``.

    A call made with ``.future()`` that has not finished when the interceptor
    sees it keeps gRPC's own error.
    """

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        start = time.monotonic()
        outcome = continuation(client_call_details, request)
        if outcome.done():
            error = outcome.exception()
            if isinstance(error, grpc.RpcError):
                passed = _deadline_passed(client_call_details.timeout, start)
                raise from_rpc_error(error, deadline_passed=passed) from error
        return outcome


class AioTypedErrors(grpc.aio.UnaryUnaryClientInterceptor):
    """``TypedErrors`` for ``grpc.aio`` channels."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        start = time.monotonic()
        call = await continuation(client_call_details, request)
        try:
            return await call
        except grpc.RpcError as error:
            passed = _deadline_passed(client_call_details.timeout, start)
            raise from_rpc_error(error, deadline_passed=passed) from error


def _pair(
    open_channel: Callable[[list[tuple[str, Any]]], C], retry: RetryPolicy | None, extra: ChannelOptions
) -> tuple[C, C]:
    """(main, idempotent): the main channel retries ``SAFE_METHODS``, the other also ``CONDITIONAL_METHODS``."""
    main = open_channel(options(retry, SAFE_METHODS, extra))
    if retry is None:
        return main, main
    return main, open_channel(options(retry, SAFE_METHODS + CONDITIONAL_METHODS, extra))


@dataclass(frozen=True)
class ChannelSettings:
    """Where and how a client connects; opens its (main, idempotent) channels, blocking or aio."""

    addr: str
    tls: bool
    root_certificates: bytes | None
    token: str | None
    retry: RetryPolicy | None
    extra: ChannelOptions

    def credentials(self) -> grpc.ChannelCredentials | None:
        return credentials(self.addr, tls=self.tls, root_certificates=self.root_certificates, token=self.token)

    def sync_channels(self) -> tuple[grpc.Channel, grpc.Channel]:
        """The channels of ``stepcache.Client``."""
        creds = self.credentials()

        def open_channel(opts: list[tuple[str, Any]]) -> grpc.Channel:
            if creds is not None:
                raw = grpc.secure_channel(self.addr, creds, opts)
            else:
                raw = grpc.insecure_channel(self.addr, opts)
            return grpc.intercept_channel(raw, TypedErrors())

        return _pair(open_channel, self.retry, self.extra)

    def aio_channels(self) -> tuple[grpc.aio.Channel, grpc.aio.Channel]:
        """The channels of ``stepcache.aio.Client``."""
        creds = self.credentials()

        def open_channel(opts: list[tuple[str, Any]]) -> grpc.aio.Channel:
            if creds is not None:
                return grpc.aio.secure_channel(self.addr, creds, opts, interceptors=[AioTypedErrors()])
            return grpc.aio.insecure_channel(self.addr, opts, interceptors=[AioTypedErrors()])

        return _pair(open_channel, self.retry, self.extra)
