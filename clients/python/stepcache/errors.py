"""Typed errors: one class per gRPC status that the stepcache API answers.

Both clients (``stepcache.Client`` and ``stepcache.aio.Client``) raise these,
from their methods and from the raw stubs (``client.cache``,
``client.metadata``) alike. Each keeps the status code and the server's
details, and is still a ``grpc.RpcError`` with ``code()`` and ``details()``,
so code written against raw gRPC errors keeps working::

    try:
        sc.put_execution(iface, outputs={"out": "s3://b/x"})
    except stepcache.NotFound as e:  # an input artifact that does not exist
        print(e.code(), e.details())

A status without a class of its own (INTERNAL, UNIMPLEMENTED...) raises the
base ``StepcacheError``. The original ``grpc.RpcError`` is ``__cause__``.

A call whose deadline has passed raises ``DeadlineExceeded`` even when the
server's answer won the race: a tonic server ends such a call itself with
CANCELLED ("Timeout expired").
"""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StepcacheError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class StepcacheError(grpc.RpcError):
    """A failed call: its gRPC status code and the server's details."""

    #: The status this class stands for (the base class: any other status).
    grpc_status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The gRPC status code, as on ``grpc.Call``."""
        return self._code

    def details(self) -> str:
        """The server's description of the failure (may be empty)."""
        return self._details


class InvalidArgument(StepcacheError):
    """The request is malformed: a field is missing, too long, or out of range."""

    grpc_status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StepcacheError):
    """A record the request names (artifact, execution, context) does not exist in its namespace."""

    grpc_status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StepcacheError):
    """The record to create exists already."""

    grpc_status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(StepcacheError):
    """The request is valid but the state does not allow it (a reservation not held, for one)."""

    grpc_status_code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(StepcacheError):
    """The token may not use this namespace."""

    grpc_status_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(StepcacheError):
    """No token, or one the server does not know."""

    grpc_status_code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(StepcacheError):
    """The server cannot be reached or is shutting down; safe calls were retried first."""

    grpc_status_code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(StepcacheError):
    """The server shed the call (too many in flight) or a message is too large."""

    grpc_status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(StepcacheError):
    """The call's deadline passed before the server answered."""

    grpc_status_code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[StepcacheError]] = {
    cls.grpc_status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        ResourceExhausted,
        DeadlineExceeded,
    )
}


def from_rpc_error(error: grpc.RpcError, *, deadline_passed: bool = False) -> StepcacheError:
    """The typed error for a ``grpc.RpcError`` (a ``grpc.Call`` or ``grpc.aio.AioRpcError``).

    ``deadline_passed``: the call's deadline is over, so a CANCELLED answer
    means the deadline ended it (DEADLINE_EXCEEDED).
    """
    if isinstance(error, StepcacheError):
        return error
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else str(error)
    if code == grpc.StatusCode.CANCELLED and deadline_passed:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
    cls = _BY_CODE.get(code, StepcacheError)
    return cls(code, details or "")
