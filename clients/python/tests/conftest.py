"""A real stepcache server for the whole test session.

The binary is ``$STEPCACHE_BIN``, by default ``target/release/stepcache`` at the
repository root; it is built with ``cargo build --release`` when missing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from stepcache import Client

REPO_ROOT = Path(__file__).resolve().parents[3]
KEY_VECTORS = REPO_ROOT / "tests" / "data" / "key-vectors.json"


def server_binary() -> Path:
    """The server binary, built first if it is the default one and missing."""
    env = os.environ.get("STEPCACHE_BIN")
    binary = Path(env) if env else REPO_ROOT / "target" / "release" / "stepcache"
    if not binary.exists():
        if env:
            pytest.exit(f"STEPCACHE_BIN={env} does not exist", returncode=2)
        subprocess.run(["cargo", "build", "--release", "--bin", "stepcache"], cwd=REPO_ROOT, check=True)
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def server_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a server on a fresh data dir, stopped with SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("stepcache-data")
    addr = f"127.0.0.1:{free_port()}"
    log = (data_dir.parent / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(server_binary()), "serve", "--listen", addr, "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with grpc.insecure_channel(addr) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=30)
            except grpc.FutureTimeoutError:
                pytest.exit(f"stepcache did not come up on {addr}; see {log.name}", returncode=2)
        yield addr
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, f"server exited with {proc.returncode}; see {log.name}"
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so that tests never see each other's entries."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(server_addr: str, namespace: str) -> Iterator[Client]:
    with Client(server_addr, namespace=namespace) as c:
        yield c


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``vector`` runs once per entry of tests/data/key-vectors.json."""
    if "vector" in metafunc.fixturenames:
        vectors: list[dict[str, Any]] = json.loads(KEY_VECTORS.read_text())
        metafunc.parametrize("vector", vectors, ids=[v["name"] for v in vectors])
