"""What passes between the gateway's one request handler and its two front ends.

A front end (the in-process transport, or the loopback HTTP server) turns what it receives into
an :class:`Incoming`, awaits the gateway's :data:`Dispatch` and sends back the
:class:`~aioconnector.testing.FakeResponse`, or drops the connection when the answer is
:data:`DROP`. Each front end owns a :class:`Background` for the lifetime of its ``async with``:
the task group where ``/async-function/`` work runs, and the client that posts its callbacks.
"""

from __future__ import annotations

import enum
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, final

import anyio
import attrs
import httpx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

    from anyio.abc import TaskGroup

    from ._models import FakeResponse

#: Response headers that belong to the framing, set by the front end, never by a handler.
FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})

_CALLBACK_TIMEOUT: Final = 10.0
_CLOSE_TIMEOUT: Final = 5.0


class _Drop(enum.Enum):
    DROP = "drop"


DROP: Final = _Drop.DROP
"""The answer that means: close the connection without a response."""

Outcome: TypeAlias = "FakeResponse | Literal[_Drop.DROP]"


@attrs.frozen(kw_only=True)
class Incoming:
    """A complete request as a front end received it."""

    method: str
    target: str  # raw path, then ``?query`` when there is one
    headers: httpx.Headers = attrs.field(hash=False)
    body: bytes


Dispatch: TypeAlias = "Callable[[Incoming, Background | None], Awaitable[Outcome]]"


def response_has_body(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body at all."""
    return method != "HEAD" and status not in (204, 304)


@final
class _Borrowed(httpx.AsyncBaseTransport):
    """A transport lent by the user: used, never opened or closed by us."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        pass


@final
class Background:
    """The task group of one front end's lifetime, and its lazily opened callback client."""

    def __init__(
        self, task_group: TaskGroup, callback_transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._task_group = task_group
        self._callback_transport = callback_transport
        self._client: httpx.AsyncClient | None = None

    def start_soon(self, func: Callable[[Background], Coroutine[Any, Any, None]]) -> None:
        """Run ``func(self)`` in the task group."""
        self._task_group.start_soon(func, self)

    def client(self) -> httpx.AsyncClient:
        """The client for callback POSTs, opened on first use and closed with the lifetime."""
        if self._client is None:
            transport = (
                None if self._callback_transport is None else _Borrowed(self._callback_transport)
            )
            self._client = httpx.AsyncClient(
                transport=transport, timeout=_CALLBACK_TIMEOUT, trust_env=False
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


@asynccontextmanager
async def open_background(
    callback_transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[Background]:
    """A :class:`Background` whose work is cancelled, and client closed, on exit."""
    background: Background | None = None
    try:
        async with anyio.create_task_group() as task_group:
            background = Background(task_group, callback_transport)
            try:
                yield background
            finally:
                task_group.cancel_scope.cancel()
    finally:
        if background is not None:
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await background.aclose()
