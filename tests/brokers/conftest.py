"""Broker tests need real services on 127.0.0.1; each is skipped, with the reason, when absent."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aioconnector.testing import FakeGateway

SERVICES = {
    "postgres": 5432,
    "redis": 6379,
    "rabbitmq": 5672,
    "mqtt": 1883,
    "nats": 4222,
}


def require_service(name: str) -> int:
    """The service's port on 127.0.0.1; skips the calling test when nothing listens there."""
    port = SERVICES[name]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return port
    except OSError as exc:
        pytest.skip(f"{name} is not reachable on 127.0.0.1:{port} ({exc}); .ci/run starts it")


def require_module(name: str) -> None:
    """Skip when a broker client library is not installed (``pip install 'aioconnector[all]'``)."""
    pytest.importorskip(name, reason=f"{name} is not installed: pip install 'aioconnector[all]'")


@pytest.fixture(params=[pytest.param(("asyncio", {"debug": True}), id="asyncio")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """asyncio only: every broker client used here (nats-py, redis.asyncio, aio-pika, aiomqtt,
    asyncpg) is built on asyncio and cannot run under trio."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """A FakeGateway served on a real loopback socket for the test's duration."""
    gateway = FakeGateway()
    async with gateway.serve():
        yield gateway
