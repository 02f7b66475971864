"""A real stepcache server for the whole test session.

The binary is ``$STEPCACHE_BIN``, by default ``target/release/stepcache`` at the
repository root; it is built with ``cargo build --release`` when missing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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


class Server:
    """One server process on ``addr``; ``start()`` again after ``stop()`` is a restart on the same data."""

    def __init__(self, data_dir: Path, *extra_args: str, addr: str | None = None) -> None:
        self.data_dir = data_dir
        self.addr = addr or f"127.0.0.1:{free_port()}"
        self.extra_args = extra_args
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(server_binary()),
                    "serve",
                    "--listen",
                    self.addr,
                    "--data-dir",
                    str(self.data_dir),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        host, port = self.addr.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while True:  # listening is enough: TLS and tokens make a gRPC probe server-specific
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.exit(f"stepcache did not come up on {self.addr}; see {self.log_path}", returncode=2)
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, and the server must exit cleanly."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, f"server exited with {proc.returncode}; see {self.log_path}"
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="session")
def server_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a server on a fresh data dir, stopped with SIGTERM at the end."""
    server = Server(tmp_path_factory.mktemp("stepcache-data")).start()
    try:
        yield server.addr
    finally:
        server.stop()


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


@dataclass(frozen=True)
class TlsServer:
    addr: str
    #: The PEM of the CA that signed the server's certificate.
    ca_pem: bytes
    #: A token that may use namespace ``team-a`` only.
    token: str


def write_tls_identity(directory: Path) -> tuple[bytes, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (CA PEM, cert file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        cert("stepcache test CA", ca_key, None, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        cert("localhost", key, ca.subject, ca_key)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A server with TLS and bearer tokens (``--tls-cert``, ``--auth-tokens``)."""
    secrets = tmp_path_factory.mktemp("tls")
    ca_pem, cert_file, key_file = write_tls_identity(secrets)
    token = f"good-{uuid.uuid4().hex}"
    tokens = secrets / "tokens"
    tokens.write_text(f"# test tokens\n{token} team-a\n")
    server = Server(
        tmp_path_factory.mktemp("tls-data"),
        "--tls-cert", str(cert_file), "--tls-key", str(key_file), "--auth-tokens", str(tokens),
    ).start()  # fmt: skip
    try:
        yield TlsServer(server.addr, ca_pem, token)
    finally:
        server.stop()
