"""Shared test helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import httpx

from aioconnector import AsyncController, ControllerConfig
from aioconnector.testing import FakeGateway


@attrs.define
class Wire:
    """A FakeGateway and how a controller reaches it.

    ``transport`` makes a fresh transport per controller (each controller closes its own), or
    is None for the controller's default path (the lean HTTP/1.1 pool) over a real socket.
    """

    gateway: FakeGateway
    url: str
    transport: Callable[[], httpx.AsyncBaseTransport] | None

    def controller(self, **config: Any) -> AsyncController:
        config.setdefault("gateway_url", self.url)
        config.setdefault("startup_timeout", 5.0)
        transport = None if self.transport is None else self.transport()
        return AsyncController(ControllerConfig(**config), transport=transport)
