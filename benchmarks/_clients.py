"""The clients measured side by side, each behind a `Driver` that hands out callers.

- ``raw``: the ceiling. A minimal HTTP/1.1 keep-alive client: each caller owns one connection
  and sends preformatted request bytes, then reads the status line and Content-Length. asyncio
  streams on asyncio and uvloop, anyio streams on trio.
- ``httpx``: a bare ``httpx.AsyncClient`` with ``Limits(C, C)``, shared by the callers.
- ``aioconnector``: ``AsyncController(config)``, whatever path it takes by default.
- ``aioconnector+httpx``: the same with an explicit ``httpx.AsyncHTTPTransport`` (the httpx path),
  its pool sized as the controller sizes its own (``max_concurrency + 2``).

A caller is ``async () -> int``: one unit of work (a request, or a message fanned out), returning
how many invocations failed. Callers never raise for a failed request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import httpx
from _common import (
    BODY,
    FANOUT_FUNCTIONS,
    HOST,
    TIMEOUT,
    TOPIC_FANOUT,
    USER_AGENT,
    controller_config,
    function_path,
    invoker_name,
)
from anyio.streams.buffered import BufferedByteReceiveStream

from aioconnector import AsyncController

if TYPE_CHECKING:
    from anyio.abc import SocketStream

Call = Callable[[], Awaitable[int]]
CLIENTS: Final = ("raw", "httpx", "aioconnector", "aioconnector+metrics", "aioconnector+httpx")
_MAX_HEAD: Final = 64 * 1024


def functions_for(topic: str) -> tuple[str, ...]:
    return FANOUT_FUNCTIONS if topic == TOPIC_FANOUT else ("fn0",)


class Driver(Protocol):
    """Hands out callers; ``units`` is how many invocations one ``caller()`` call makes."""

    units: int

    def caller(self, index: int) -> Call: ...

    def fan_out_caller(self) -> Call:
        """One call = the fan-out topic's functions, concurrently (``len(FANOUT_FUNCTIONS)``)."""
        ...


# -- raw ---------------------------------------------------------------------------------------


def _parse_head(head: bytes) -> tuple[int, int]:
    """Status code and Content-Length (0 when absent) of a response head."""
    status = int(head[9:12])
    start = head.find(b"\r\nContent-Length:")
    if start < 0:
        start = head.lower().find(b"\r\ncontent-length:")
        if start < 0:
            return status, 0
    end = head.find(b"\r\n", start + 2)
    return status, int(head[start + 17 : end if end >= 0 else len(head)])


class _AsyncioConnection:
    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def exchange(self, request: bytes) -> int:
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status, length = _parse_head(head)
        if length:
            await self._reader.readexactly(length)
        return status

    async def aclose(self) -> None:
        self._writer.close()


class _AnyioConnection:
    __slots__ = ("_buffered", "_stream")

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._buffered = BufferedByteReceiveStream(stream)

    async def exchange(self, request: bytes) -> int:
        await self._stream.send(request)
        head = await self._buffered.receive_until(b"\r\n\r\n", _MAX_HEAD)
        status, length = _parse_head(head + b"\r\n")
        if length:
            await self._buffered.receive_exactly(length)
        return status

    async def aclose(self) -> None:
        await self._stream.aclose()


_Connection = _AsyncioConnection | _AnyioConnection


def format_request(port: int, topic: str, function: str) -> bytes:
    head = (
        f"POST {function_path(function)} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "X-Connector: aioconnector\r\n"
        f"X-Topic: {topic}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode("ascii") + BODY


class RawDriver:
    """The ceiling: one keep-alive connection per caller, requests preformatted."""

    def __init__(self, backend: str, port: int, topic: str) -> None:
        self._asyncio = backend != "trio"
        self._port = port
        self._requests = [format_request(port, topic, f) for f in functions_for(topic)]
        self._fan_out = [format_request(port, TOPIC_FANOUT, f) for f in FANOUT_FUNCTIONS]
        self._open: set[_Connection] = set()
        self.units = 1

    async def connect(self) -> _Connection:
        connection: _Connection
        if self._asyncio:
            reader, writer = await asyncio.open_connection(HOST, self._port, limit=_MAX_HEAD)
            connection = _AsyncioConnection(reader, writer)
        else:
            connection = _AnyioConnection(await anyio.connect_tcp(HOST, self._port))
        self._open.add(connection)
        return connection

    async def drop(self, connection: _Connection) -> None:
        self._open.discard(connection)
        await connection.aclose()

    def _rotating(self, requests: list[bytes], start: int) -> Call:
        connection: _Connection | None = None
        position = start

        async def call() -> int:
            nonlocal connection, position
            request = requests[position % len(requests)]
            position += 1
            try:
                if connection is None:
                    connection = await self.connect()
                return int(await connection.exchange(request) != 200)
            except (OSError, EOFError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
                if connection is not None:
                    await self.drop(connection)
                    connection = None
                return 1

        return call

    def caller(self, index: int) -> Call:
        return self._rotating(self._requests, index)

    def fan_out_caller(self) -> Call:
        return _together([self._rotating([request], 0) for request in self._fan_out])

    def one_shot(self) -> Call:
        """A request on a connection of its own, closed after the answer (many in flight)."""
        request = self._requests[0]

        async def call() -> int:
            connection: _Connection | None = None
            try:
                connection = await self.connect()
                return int(await connection.exchange(request) != 200)
            except (OSError, EOFError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
                return 1
            finally:
                if connection is not None:
                    await self.drop(connection)

        return call

    async def aclose(self) -> None:
        for connection in tuple(self._open):
            await self.drop(connection)


def _together(calls: list[Call]) -> Call:
    """One call that runs ``calls`` concurrently (a message fanned out by hand)."""

    async def call() -> int:
        failed = 0

        async def one(part: Call) -> None:
            nonlocal failed
            failed += await part()

        async with anyio.create_task_group() as tg:
            for part in calls:
                tg.start_soon(one, part)
        return failed

    return call


@asynccontextmanager
async def open_raw(backend: str, port: int, topic: str) -> AsyncIterator[RawDriver]:
    driver = RawDriver(backend, port, topic)
    try:
        yield driver
    finally:
        with anyio.CancelScope(shield=True):
            await driver.aclose()


# -- bare httpx --------------------------------------------------------------------------------


class HttpxDriver:
    """A bare ``httpx.AsyncClient`` with ``Limits(C, C)`` shared by every caller."""

    def __init__(self, client: httpx.AsyncClient, port: int, topic: str) -> None:
        self._client = client
        self._urls = [f"http://{HOST}:{port}{function_path(f)}" for f in functions_for(topic)]
        self._fan_out_urls = [f"http://{HOST}:{port}{function_path(f)}" for f in FANOUT_FUNCTIONS]
        self._headers = {"User-Agent": USER_AGENT, "X-Connector": "aioconnector", "X-Topic": topic}
        self._fan_out_headers = self._headers | {"X-Topic": TOPIC_FANOUT}
        self.units = 1

    def _rotating(self, urls: list[str], start: int, headers: dict[str, str]) -> Call:
        client = self._client
        position = start

        async def call() -> int:
            nonlocal position
            url = urls[position % len(urls)]
            position += 1
            try:
                response = await client.post(url, content=BODY, headers=headers)
            except httpx.HTTPError:
                return 1
            return int(response.status_code != 200)

        return call

    def caller(self, index: int) -> Call:
        return self._rotating(self._urls, index, self._headers)

    def fan_out_caller(self) -> Call:
        return _together(
            [self._rotating([url], 0, self._fan_out_headers) for url in self._fan_out_urls]
        )

    def one_shot(self) -> Call:
        return self.caller(0)


@asynccontextmanager
async def open_httpx(port: int, topic: str, concurrency: int) -> AsyncIterator[HttpxDriver]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(TIMEOUT), trust_env=False
    ) as client:
        yield HttpxDriver(client, port, topic)


# -- aioconnector ------------------------------------------------------------------------------


class ControllerDriver:
    """``invoke`` on the controller; ``controller`` is there for ``submit``."""

    def __init__(self, controller: AsyncController, topic: str) -> None:
        self.controller = controller
        self._topic = topic
        self.units = len(controller.functions_for(topic))
        if not self.units:
            raise RuntimeError(f"the stub gateway lists no function for topic {topic!r}")

    def _invoking(self, topic: str, units: int) -> Call:
        invoke = self.controller.invoke

        async def call() -> int:
            results = await invoke(topic, BODY)
            return sum(1 for result in results if not result.ok) + units - len(results)

        return call

    def caller(self, index: int) -> Call:
        return self._invoking(self._topic, self.units)

    def fan_out_caller(self) -> Call:
        return self._invoking(TOPIC_FANOUT, len(FANOUT_FUNCTIONS))

    def invoker_name(self) -> str:
        """Which invoker the controller picked (for the report only)."""
        return invoker_name(self.controller)


@asynccontextmanager
async def open_controller(
    port: int,
    topic: str,
    concurrency: int,
    *,
    via_httpx: bool,
    result_buffer: int = 256,
    metrics: bool = False,
) -> AsyncIterator[ControllerDriver]:
    config = controller_config(port, concurrency, result_buffer)
    transport = None
    if via_httpx:
        size = concurrency + 2  # what the controller gives its own client
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        transport = httpx.AsyncHTTPTransport(limits=limits)
    registry: Any = False
    if metrics:  # Prometheus metrics on, into a registry of its own (no one scrapes it)
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - only when asked

        registry = CollectorRegistry()
    async with AsyncController(config, transport=transport, metrics=registry) as controller:
        yield ControllerDriver(controller, topic)
