"""The cache key of a task interface, computed offline (docs/key.md, v1).

``cache_key(interface)`` is the lowercase hex BLAKE3-256 of a canonical,
byte-by-byte encoding of the interface. It matches the server's
``ComputeCacheKey`` without a round trip, so a driver can log or look up keys
before it talks to the server.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias, TypeVar

import blake3
from google.protobuf import json_format, struct_pb2

from stepcache.v1 import types_pb2

__all__ = ["DOMAIN_TAG", "InterfaceLike", "InvalidInterfaceError", "canonical_bytes", "cache_key", "to_interface"]

DOMAIN_TAG = "stepcache/task-interface/v1"

#: A ``TaskInterface`` message, or the same in protojson as a dict (snake_case
#: or lowerCamelCase field names, artifact IDs as numbers or strings).
InterfaceLike: TypeAlias = types_pb2.TaskInterface | Mapping[str, Any]

T = TypeVar("T")


class InvalidInterfaceError(ValueError):
    """The interface cannot be keyed; the server answers INVALID_ARGUMENT for it."""


def to_interface(interface: InterfaceLike) -> types_pb2.TaskInterface:
    """Returns ``interface`` as a ``TaskInterface`` message (parsing a protojson dict)."""
    if isinstance(interface, types_pb2.TaskInterface):
        return interface
    try:
        return json_format.ParseDict(dict(interface), types_pb2.TaskInterface())
    except json_format.ParseError as e:
        raise InvalidInterfaceError(f"interface: {e}") from e


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">I", len(b)) + b


def _list(xs: Iterable[T], f: Callable[[T], bytes]) -> bytes:
    items = [f(x) for x in xs]
    return struct.pack(">I", len(items)) + b"".join(items)


def _map(m: Mapping[str, T], f: Callable[[T], bytes]) -> bytes:
    keys = sorted(m, key=lambda k: k.encode("utf-8"))
    return struct.pack(">I", len(keys)) + b"".join(_str(k) + f(m[k]) for k in keys)


def _i64(x: int) -> bytes:
    return struct.pack(">q", x)


def _value(v: struct_pb2.Value, path: str) -> bytes:
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return b"\x00"
    if kind == "bool_value":
        return b"\x01" + (b"\x01" if v.bool_value else b"\x00")
    if kind == "number_value":
        x = v.number_value
        if not math.isfinite(x):
            raise InvalidInterfaceError(f"{path}: NaN and infinities are not allowed")
        return b"\x02" + struct.pack(">d", x + 0.0)  # -0.0 + 0.0 == +0.0
    if kind == "string_value":
        return b"\x03" + _str(v.string_value)
    if kind == "list_value":
        items = v.list_value.values
        return (
            b"\x04"
            + struct.pack(">I", len(items))
            + b"".join(_value(item, f"{path}[{i}]") for i, item in enumerate(items))
        )
    fields = v.struct_value.fields
    keys = sorted(fields, key=lambda k: k.encode("utf-8"))
    return b"\x05" + struct.pack(">I", len(keys)) + b"".join(_str(k) + _value(fields[k], f"{path}.{k}") for k in keys)


def canonical_bytes(interface: InterfaceLike) -> bytes:
    """The exact bytes that are hashed into the key (docs/key.md)."""
    ti = to_interface(interface)
    if not ti.component:
        raise InvalidInterfaceError("interface.component must not be empty")
    ignored = set(ti.ignore_inputs)
    c = ti.container
    parameters = {k: v for k, v in ti.parameters.items() if k not in ignored}
    inputs = {k: list(v.ids) for k, v in ti.input_artifacts.items() if k not in ignored}
    return b"".join(
        [
            _str(DOMAIN_TAG),
            _str(ti.component),
            _str(ti.cache_version),
            _str(c.image),
            _list(c.command, _str),
            _list(c.args, _str),
            _map(dict(c.env), _str),
            _list(sorted(set(c.volumes), key=lambda s: s.encode("utf-8")), _str),
            _map(
                {k: _value(v, f"interface.parameters.{k}") for k, v in parameters.items()},
                lambda b: b,
            ),
            _map(inputs, lambda ids: _list(ids, _i64)),
            _map(dict(ti.output_artifacts), _str),
            _map(dict(ti.output_parameters), _str),
        ]
    )


def cache_key(interface: InterfaceLike) -> str:
    """The cache key: 64 lowercase hex digits of BLAKE3-256(canonical_bytes).

    Raises:
        InvalidInterfaceError: empty component, NaN/infinite parameter, or a
            dict that is not a valid protojson ``TaskInterface``.
    """
    return blake3.blake3(canonical_bytes(interface)).hexdigest()
