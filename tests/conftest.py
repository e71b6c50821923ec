from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from aioconnector.testing import FakeGateway

from .helpers import Wire


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio (debug mode) and on trio."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["transport", "socket"])
async def wire(request: pytest.FixtureRequest) -> AsyncIterator[Wire]:
    """A FakeGateway reached through ``gateway.transport()`` or over 127.0.0.1."""
    gateway = FakeGateway()
    if request.param == "transport":
        yield Wire(gateway, "http://gateway.test", gateway.transport())
    else:
        async with gateway.serve() as url:
            yield Wire(gateway, url, None)
