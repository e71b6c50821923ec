from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from aioconnector.testing import FakeGateway

from .helpers import Wire

# Property tests assert outcomes, not speed: on a shared, loaded machine one example may take
# longer than Hypothesis's 200 ms deadline, or its data longer to generate.
settings.register_profile(
    "aioconnector", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("aioconnector")

# Hypothesis imports its optimiser lazily, in the middle of a test, where pytest rewrites its
# asserts (a plugin's modules are rewritten): deep in an async test's stack, CPython 3.11.7's
# AST constructor then fails at random with "SystemError: AST constructor recursion depth
# mismatch" (seen here). Imported here, at the top of the stack, it never is again.
importlib.import_module("hypothesis.internal.conjecture.optimiser")


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio (debug mode) and on trio."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["transport", "httpx", "fast"])
async def wire(request: pytest.FixtureRequest) -> AsyncIterator[Wire]:
    """A FakeGateway reached three ways: in-process through ``gateway.transport()``; over
    127.0.0.1 through httpx (a transport given: the path users' transports take); and over
    127.0.0.1 through the default lean HTTP/1.1 pool (no transport given)."""
    gateway = FakeGateway()
    if request.param == "transport":
        yield Wire(gateway, "http://gateway.test", gateway.transport)
        return
    async with gateway.serve() as url:
        fresh_httpx = httpx.AsyncHTTPTransport if request.param == "httpx" else None
        yield Wire(gateway, url, fresh_httpx)
