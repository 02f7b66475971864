"""Typed errors: each status the API answers raises its own class, from the methods and the raw stubs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import stepcache
from conftest import Server, free_port
from stepcache import (
    AlreadyExists,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StepcacheError,
    Unavailable,
)
from stepcache.errors import from_rpc_error
from stepcache.v1 import cache_service_pb2, metadata_store_service_pb2


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    "name", ["NotFound", "AlreadyExists", "InvalidArgument", "FailedPrecondition", "PermissionDenied",
             "Unauthenticated", "Unavailable", "ResourceExhausted", "DeadlineExceeded"],
)  # fmt: skip
def test_each_status_has_its_class(name: str) -> None:
    cls = getattr(stepcache, name)
    code = cls.grpc_status_code
    assert code.name.replace("_", "").lower() == name.lower()
    err = from_rpc_error(FakeRpcError(code, "why"))
    assert type(err) is cls
    assert isinstance(err, StepcacheError) and isinstance(err, grpc.RpcError)
    assert err.code() == code and err.details() == "why"
    assert str(err) == f"{code.name}: why"


def test_cancelled_after_the_deadline_is_deadline_exceeded() -> None:
    # tonic ends a call whose deadline ran out on its side with CANCELLED.
    cancelled = FakeRpcError(grpc.StatusCode.CANCELLED, "Timeout expired")
    assert type(from_rpc_error(cancelled, deadline_passed=True)) is DeadlineExceeded
    assert type(from_rpc_error(cancelled)) is StepcacheError


def test_other_statuses_raise_the_base_class() -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))
    assert type(err) is StepcacheError and err.code() == grpc.StatusCode.INTERNAL


def iface(component: str, inputs: dict[str, list[int]] | None = None) -> dict[str, Any]:
    return {
        "component": component,
        "input_artifacts": {k: {"ids": v} for k, v in (inputs or {}).items()},
        "output_artifacts": {"out": "system.Dataset"},
    }


def test_invalid_argument_from_both_services(client: Client) -> None:
    with pytest.raises(InvalidArgument) as err:
        client.put_execution(iface(""), outputs={"out": "mem://x"})
    assert "component" in err.value.details()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(err.value.__cause__, grpc.RpcError)
    with pytest.raises(InvalidArgument, match="component"):
        client.get_cached(iface(""))


def test_not_found_from_methods_and_raw_stubs(client: Client) -> None:
    with pytest.raises(NotFound):
        client.put_execution(iface("consumer", {"data": [987654321]}), outputs={"out": "mem://x"})
    with pytest.raises(NotFound):
        client.get_artifacts([987654321])
    # The generated stubs raise the same classes.
    req = metadata_store_service_pb2.GetExecutionsRequest(ids=[987654321], namespace=client.namespace)
    with pytest.raises(NotFound):
        client.metadata.GetExecutions(req, timeout=10)


def test_already_exists_and_the_external_id_repeat(client: Client) -> None:
    ti = iface("idempotent")
    first = client.put_execution(ti, outputs={"out": "mem://a"}, external_id="run-1/task")
    again = client.put_execution(ti, outputs={"out": "mem://a"}, external_id="run-1/task")
    assert again.execution_id == first.execution_id  # what makes PutExecution with an external_id retryable
    with pytest.raises(AlreadyExists, match="run-1/task"):
        client.put_execution(ti, outputs={"out": "mem://other"}, external_id="run-1/task")


def test_failed_precondition_for_a_reservation_not_held(client: Client) -> None:
    key = client.get_cached(iface("reserved"), reservation_owner="me").cache_key
    with pytest.raises(FailedPrecondition):
        client.extend_reservation(key, "someone-else", 30)
    with pytest.raises(FailedPrecondition):
        client.release_reservation(key, "someone-else")
    client.release_reservation(key, "me")


def test_deadline_exceeded(client: Client) -> None:
    key = client.get_cached(iface("slow"), reservation_owner="holder").cache_key
    req = cache_service_pb2.WaitForCachedExecutionRequest(namespace=client.namespace, cache_key=key)
    req.timeout.FromSeconds(30)
    for _ in range(5):  # the client's deadline and the server's CANCELLED race each time
        with pytest.raises(DeadlineExceeded):
            client.cache.WaitForCachedExecution(req, timeout=0.2)


def test_unavailable_without_retries() -> None:
    with Client(f"127.0.0.1:{free_port()}", retry=None, timeout=10) as nobody, pytest.raises(Unavailable):
        nobody.compute_key({"component": "c"})


def test_resource_exhausted_for_an_oversized_message(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", "--max-message-bytes", "4096").start()
    try:
        with Client(server.addr, namespace=f"t-{uuid.uuid4().hex[:8]}") as sc:
            sc.put_execution(iface("small"))
            # A write without external_id is tried once: no retries of a message that stays too large.
            with pytest.raises(ResourceExhausted):
                sc.put_execution(iface("big"), properties={"blob": "x" * 10_000})
    finally:
        server.stop()
