"""stepcache: Python client for the stepcache gRPC cache and metadata store.

- ``Client``: ``get_cached``, ``put_execution``, ``wait``, ``compute_key``.
- ``cache_key``: the cache key of an interface, computed offline (spec/KEY.md).
- ``cached_step``: lookup -> run on a miss -> record, in one call.

The generated messages and stubs live in ``stepcache.v1`` (``types_pb2``,
``cache_service_pb2[_grpc]``, ``metadata_store_service_pb2[_grpc]``); they are
generated from the proto when the package is built.
"""

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
from stepcache.key import InterfaceLike, InvalidInterfaceError, cache_key, canonical_bytes, to_interface
from stepcache.step import StepResult, TaskOutputs, cached_step

__all__ = [
    "CacheResult",
    "Client",
    "ExecutionState",
    "InterfaceLike",
    "InvalidInterfaceError",
    "NewArtifact",
    "Outcome",
    "OutputLike",
    "PutResult",
    "StepResult",
    "TaskOutputs",
    "Trigger",
    "cache_key",
    "cached_step",
    "canonical_bytes",
    "to_interface",
]
