"""Every vector of tests/data/key-vectors.json (docs/key.md), offline and through the server's ComputeCacheKey."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from stepcache import Client, InvalidArgument, InvalidInterfaceError, cache_key, canonical_bytes
from stepcache.v1 import types_pb2


def test_offline_key_from_dict(vector: dict[str, Any]) -> None:
    if "invalid" in vector:
        with pytest.raises(InvalidInterfaceError):
            cache_key(vector["interface"])
    else:
        assert cache_key(vector["interface"]) == vector["cache_key"]


def test_offline_key_from_message(vector: dict[str, Any]) -> None:
    message = json_format.ParseDict(vector["interface"], types_pb2.TaskInterface())
    if "invalid" in vector:
        with pytest.raises(InvalidInterfaceError):
            cache_key(message)
    else:
        assert cache_key(message) == vector["cache_key"]


def test_server_key(client: Client, vector: dict[str, Any]) -> None:
    if "invalid" in vector:
        with pytest.raises(InvalidArgument):
            client.compute_key(vector["interface"])
    else:
        assert client.compute_key(vector["interface"]) == vector["cache_key"]


def test_the_vectors_cover_valid_and_invalid_interfaces(repo_root: Path) -> None:
    vectors = json.loads((repo_root / "tests" / "data" / "key-vectors.json").read_text())
    assert len(vectors) >= 20
    assert any("invalid" in v for v in vectors)


def test_canonical_bytes_start_with_the_domain_tag() -> None:
    tag = b"stepcache/task-interface/v1"
    assert canonical_bytes({"component": "noop"}).startswith(len(tag).to_bytes(4, "big") + tag)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_parameters_are_rejected_offline(bad: float) -> None:
    with pytest.raises(InvalidInterfaceError, match="parameters.x"):
        cache_key({"component": "c", "parameters": {"x": {"nested": [bad]}}})


def test_a_dict_that_is_not_a_task_interface_is_rejected() -> None:
    with pytest.raises(InvalidInterfaceError, match="unknown_field"):
        cache_key({"component": "c", "unknown_field": 1})
