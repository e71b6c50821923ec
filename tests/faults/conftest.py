"""The fault suite: a real controller against a FakeGateway on a real loopback socket.

Every test bounds itself with ``anyio.fail_after``; durations are asserted loosely (orderings,
counts and generous bounds), because the suite shares a 2-core machine with other runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from aioconnector import AsyncController, ControllerConfig

#: Defaults for the suite: a quick but not twitchy startup, and no background refresh unless a
#: test asks for one (so ``refresh()`` and the stats it changes are the test's own).
DEFAULTS: dict[str, Any] = {
    "startup_timeout": 5.0,
    "lookup_timeout": 5.0,
    "rebuild_interval": 3600.0,
    "drain_timeout": 5.0,
}


@pytest.fixture
def connect() -> Callable[..., AsyncController]:
    """``connect(url, **config)``: a controller on ``url`` over the network, no transport."""

    def make(url: str, **config: Any) -> AsyncController:
        return AsyncController(ControllerConfig(gateway_url=url, **(DEFAULTS | config)))

    return make
