"""Which event loop runs us, and its clock, looked up once instead of on every call.

``anyio.current_time()`` finds the running backend on each call, which costs as much as a
whole HTTP response parse on the hot path; objects living inside one event loop keep the
loop's own clock instead. The values are the same: anyio's clock *is* the loop's clock.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Waitable", "event_factory", "loop_clock", "running_asyncio"]


def running_asyncio() -> bool:
    """True inside asyncio (uvloop included), False inside trio (as anyio tells them apart)."""
    try:
        import sniffio  # noqa: PLC0415 - trio's dependency: absent means no trio
    except ModuleNotFoundError:
        return True
    return sniffio.current_async_library() == "asyncio"


def loop_clock() -> Callable[[], float]:
    """The running loop's clock: what ``anyio.current_time()`` reads, without the lookup."""
    if running_asyncio():
        return asyncio.get_running_loop().time
    import trio  # noqa: PLC0415 - only under trio, where it is installed

    return trio.current_time


class Waitable(Protocol):
    """What `anyio.Event` and `asyncio.Event` have in common, as `event_factory` uses them."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


def event_factory() -> Callable[[], Waitable]:
    """``asyncio.Event`` on asyncio, else ``anyio.Event``: anyio's looks the backend up each
    time it is created, which costs more than the rest of a hand-over between two tasks."""
    return asyncio.Event if running_asyncio() else anyio.Event
