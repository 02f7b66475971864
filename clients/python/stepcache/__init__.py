"""stepcache: Python client for the stepcache gRPC cache and metadata store.

- ``Client``: ``get_cached``, ``put_execution``, ``wait``, ``compute_key``;
  ``stepcache.aio.Client``: the same on ``grpc.aio``.
- Typed errors (``stepcache.errors``): ``StepcacheError`` and ``NotFound``,
  ``InvalidArgument``, ``Unavailable``... raised by both clients.
- ``RetryPolicy``: gRPC's retries of the calls that are safe to repeat.
- ``cache_key``: the cache key of an interface, computed offline (docs/key.md).
- ``cached_step``: lookup -> run on a miss -> record, in one call.

The generated messages and stubs live in ``stepcache.v1`` (``types_pb2``,
``cache_service_pb2[_grpc]``, ``metadata_store_service_pb2[_grpc]``); they are
generated from the proto when the package is built (or installed editable).
"""

from stepcache.channel import RetryPolicy
from stepcache.client import (
    CacheResult,
    Client,
    ExecutionState,
    NewArtifact,
    Outcome,
    OutputLike,
    PutResult,
    Trigger,
)
from stepcache.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StepcacheError,
    Unauthenticated,
    Unavailable,
)
from stepcache.key import InterfaceLike, InvalidInterfaceError, cache_key, canonical_bytes, to_interface
from stepcache.step import StepResult, TaskOutputs, cached_step

__all__ = [
    "AlreadyExists",
    "CacheResult",
    "Client",
    "DeadlineExceeded",
    "ExecutionState",
    "FailedPrecondition",
    "InterfaceLike",
    "InvalidArgument",
    "InvalidInterfaceError",
    "NewArtifact",
    "NotFound",
    "Outcome",
    "OutputLike",
    "PermissionDenied",
    "PutResult",
    "ResourceExhausted",
    "RetryPolicy",
    "StepResult",
    "StepcacheError",
    "TaskOutputs",
    "Trigger",
    "Unauthenticated",
    "Unavailable",
    "cache_key",
    "cached_step",
    "canonical_bytes",
    "to_interface",
]
