"""Shared test helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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


class RecordingEnviron(Mapping[str, str]):
    """An environment that notes every variable looked up in it: what reads it must look
    variables up, never list them."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("environment variables should be looked up, not listed")

    def __len__(self) -> int:
        return len(self._values)
