"""The health services that deploy/k8s probes ask for are SERVING on a real server."""

from __future__ import annotations

import grpc
import pytest

SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}


def check_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service}, encoded by hand (field 1, a short string)."""
    name = service.encode()
    assert len(name) < 128
    return b"\x0a" + bytes([len(name)]) + name if name else b""


@pytest.mark.parametrize("service", ["", "stepcache.v1.CacheService", "stepcache.v1.MetadataStoreService"])
def test_health_check_serving(server_addr: str, service: str) -> None:
    with grpc.insecure_channel(server_addr) as channel:
        check: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(check_request(service), timeout=10) == SERVING
