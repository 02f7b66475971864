"""TLS and bearer tokens, with both clients, against a server run with --tls-cert and --auth-tokens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import stepcache.aio
from conftest import Server, TlsServer
from stepcache import Client, Outcome, PermissionDenied, Unauthenticated, Unavailable

IFACE = {"component": "secure", "output_artifacts": {"out": "system.Dataset"}}


def test_good_token_reads_and_writes_its_namespace(tls_server: TlsServer) -> None:
    with Client(tls_server.addr, "team-a", root_certificates=tls_server.ca_pem, token=tls_server.token) as sc:
        put = sc.put_execution(IFACE, outputs={"out": "mem://secure"})
        assert put.published
        hit = sc.get_cached(IFACE)
        assert hit.outcome == Outcome.HIT and hit.execution is not None
        assert hit.execution.id == put.execution_id


def test_good_token_other_namespace_is_permission_denied(tls_server: TlsServer) -> None:
    with (
        Client(tls_server.addr, "team-b", root_certificates=tls_server.ca_pem, token=tls_server.token) as sc,
        pytest.raises(PermissionDenied, match="team-b"),
    ):
        sc.get_cached(IFACE)


@pytest.mark.parametrize("token", ["not-a-token", None], ids=["bad-token", "no-token"])
def test_bad_or_missing_token_is_unauthenticated(tls_server: TlsServer, token: str | None) -> None:
    with Client(tls_server.addr, "team-a", root_certificates=tls_server.ca_pem, token=token) as sc:
        with pytest.raises(Unauthenticated):
            sc.get_cached(IFACE)
        with pytest.raises(Unauthenticated):
            sc.compute_key(IFACE)


def test_aio_client_three_outcomes(tls_server: TlsServer) -> None:
    async def lookup(token: str | None) -> Outcome:
        async with stepcache.aio.Client(
            tls_server.addr, "team-a", root_certificates=tls_server.ca_pem, token=token
        ) as sc:
            return (await sc.get_cached({"component": "aio-secure"})).outcome

    assert asyncio.run(lookup(tls_server.token)) == Outcome.MISS
    for token in ("not-a-token", None):
        with pytest.raises(Unauthenticated):
            asyncio.run(lookup(token))


def test_an_untrusted_server_or_plaintext_is_unavailable(tls_server: TlsServer) -> None:
    # The default roots do not include the test CA; a plaintext client cannot talk to a TLS server.
    for tls in (True, False):
        with (
            Client(tls_server.addr, "team-a", token=tls_server.token, tls=tls, retry=None, timeout=10) as sc,
            pytest.raises(Unavailable),
        ):
            sc.compute_key(IFACE)


def test_a_token_is_not_sent_in_clear_off_loopback() -> None:
    with pytest.raises(ValueError, match="TLS"):
        Client("stepcache.example:50051", token="t")
    # Over TLS it may go anywhere (the channel connects lazily).
    Client("stepcache.example:50051", token="t", tls=True).close()


def test_a_token_goes_in_clear_to_loopback(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("loopback-token team-a\n")
    server = Server(tmp_path / "data", "--auth-tokens", str(tokens)).start()
    try:
        with Client(server.addr, "team-a", token="loopback-token") as sc:
            assert sc.get_cached(IFACE).outcome == Outcome.MISS
        with Client(server.addr, "team-a") as sc, pytest.raises(Unauthenticated):
            sc.get_cached(IFACE)
    finally:
        server.stop()
