"""Retries through gRPC's retry policy: which calls, the service config, and a call that outlives a restart."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Server, free_port
from stepcache import Client, Outcome, ResourceExhausted, RetryPolicy, Unavailable
from stepcache.channel import CONDITIONAL_METHODS, SAFE_METHODS

IFACE = {"component": "durable", "output_artifacts": {"out": "system.Dataset"}}


def test_service_config_names_the_methods_and_codes() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.25, max_backoff=3, backoff_multiplier=1.5)
    (method_config,) = json.loads(policy.service_config(SAFE_METHODS))["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert ("stepcache.v1.CacheService", "ComputeCacheKey") in names
    assert ("stepcache.v1.MetadataStoreService", "GetLineage") in names
    assert not names & set(CONDITIONAL_METHODS)
    assert all(m.startswith(("Get", "List", "Compute", "Wait", "Explain")) for _, m in names)
    assert method_config["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.250s",
        "maxBackoff": "3.000s",
        "backoffMultiplier": 1.5,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
    }


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 1}, {"max_attempts": 6}, {"initial_backoff": 0}, {"initial_backoff": 2, "max_backoff": 1},
     {"backoff_multiplier": 0.5}, {"codes": ()}],
)  # fmt: skip
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def restarted_after(server: Server, delay: float) -> Iterator[None]:
    """Starts ``server`` again ``delay`` seconds in, while the body runs; joined even if the body fails."""

    def run() -> None:
        time.sleep(delay)
        server.start()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def test_safe_calls_survive_a_server_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    # Backoffs well above the restart time: each wait is drawn at random below the current backoff.
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=4.0)
    try:
        with (
            Client(server.addr, f"t-{uuid.uuid4().hex[:8]}", retry=policy) as sc,
            Client(server.addr, sc.namespace, retry=None) as once,
        ):
            put = sc.put_execution(IFACE, outputs={"out": "mem://kept"})
            assert once.get_cached(IFACE).hit

            server.stop()
            # Down: a write without external_id is tried once, and so is every call without a policy.
            with pytest.raises(Unavailable):
                sc.put_execution({"component": "unsafe"})
            with pytest.raises(Unavailable):
                once.get_cached(IFACE)

            with restarted_after(server, 0.5):
                hit = sc.get_cached(IFACE)  # sent while the server is down, answered after it is back
            assert hit.outcome == Outcome.HIT
            assert hit.execution is not None and hit.execution.id == put.execution_id

            server.stop()
            with restarted_after(server, 0.5):
                again = sc.put_execution({"component": "safe"}, external_id="run-7/safe")
            assert again.published
            assert sc.put_execution({"component": "safe"}, external_id="run-7/safe").execution_id == again.execution_id
    finally:
        server.stop()


def test_retries_off_reaches_the_caller_at_once() -> None:
    with Client("127.0.0.1:1", retry=None, timeout=10) as sc, pytest.raises(Unavailable) as err:
        sc.compute_key(IFACE)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_wait_in_flight_survives_a_server_restart(tmp_path: Path) -> None:
    """A shutting-down server answers its waiters UNAVAILABLE; the retried wait finds the result after the restart."""
    server = Server(tmp_path / "data").start()
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=4.0)
    try:
        with Client(server.addr, f"t-{uuid.uuid4().hex[:8]}", retry=policy) as sc:
            key = sc.get_cached(IFACE, reservation_owner="holder", lease=60).cache_key
            results: list[Outcome] = []
            waiter = threading.Thread(target=lambda: results.append(sc.wait(key, 30).outcome))
            waiter.start()
            time.sleep(0.5)  # the wait is in flight (a wait that has not started yet would pass too)
            server.stop()
            server.start()
            sc.put_execution(IFACE, outputs={"out": "mem://late"}, reservation_owner="holder")
            waiter.join(timeout=60)
            assert results == [Outcome.HIT]
    finally:
        server.stop()


def test_a_shed_wait_is_retried(tmp_path: Path) -> None:
    """RESOURCE_EXHAUSTED (one waiter at a time) is retried until the slot frees."""
    metrics = f"127.0.0.1:{free_port()}"
    server = Server(tmp_path / "data", "--max-waiters", "1", "--metrics-listen", metrics).start()
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=4.0)
    try:
        with (
            Client(server.addr, f"t-{uuid.uuid4().hex[:8]}", retry=policy) as sc,
            Client(server.addr, sc.namespace, retry=None) as once,
        ):
            key = sc.get_cached(IFACE, reservation_owner="holder", lease=60).cache_key
            results: list[Outcome] = []
            waiters = [threading.Thread(target=lambda: results.append(sc.wait(key, 30).outcome)) for _ in range(2)]
            waiters[0].start()
            time.sleep(0.3)  # the first wait holds the only slot
            with pytest.raises(ResourceExhausted):
                once.wait(key, 30)
            waiters[1].start()
            time.sleep(0.3)  # the second wait was shed and is backing off
            sc.put_execution(IFACE, outputs={"out": "mem://done"}, reservation_owner="holder")
            for w in waiters:
                w.join(timeout=60)
            assert results == [Outcome.HIT, Outcome.HIT]
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        (shed,) = [
            line
            for line in text.splitlines()
            if line.startswith("stepcache_grpc_requests_total{") and "WaitForCachedExecution" in line
            and 'code="RESOURCE_EXHAUSTED"' in line
        ]  # fmt: skip
        assert float(shed.split()[-1]) >= 2, shed  # the call without retries, and the retried one's first attempt
    finally:
        server.stop()
