"""Shared test helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from aioconnector import AsyncController, ControllerConfig
from aioconnector.testing import FakeGateway


@attrs.define
class Wire:
    """A FakeGateway and how a controller reaches it: in-process transport or a real socket."""

    gateway: FakeGateway
    url: str
    transport: httpx.AsyncBaseTransport | None

    def controller(self, **config: Any) -> AsyncController:
        config.setdefault("gateway_url", self.url)
        config.setdefault("startup_timeout", 5.0)
        return AsyncController(ControllerConfig(**config), transport=self.transport)
