"""`FastInvoker`: the pool, the request heads, and one exchange from request to result."""

from __future__ import annotations

import base64
from collections import deque
from contextlib import nullcontext
from typing import TYPE_CHECKING, Final, final
from urllib.parse import quote

import anyio
import httpx

from .._errors import (
    InvocationError,
    ResponseTooLargeError,
    UpstreamConnectionError,
)
from .._http import _tls_context
from .._invoke import finish
from ._connection import Connection
from ._parse import Head, MalformedResponseError

if TYPE_CHECKING:
    import ssl

    from anyio.abc import ByteStream

    from .._config import ControllerConfig
    from .._invoke import Invocation
    from .._results import InvocationResult

__all__ = ["FastInvoker"]

_HEAD_CACHE: Final = 1024  # cached request heads (function x header set); FIFO beyond
_KEEPALIVE_EXPIRY: Final = 5.0  # seconds idle before a pooled connection is dropped, as httpx
# What an exchange raises when the connection breaks (ssl.SSLError is an OSError).
_LOST: Final = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)


class _ConnectError(Exception):
    """The connection could not be made: the request never left."""


@final
class FastInvoker:
    """Invokes functions over a keep-alive HTTP/1.1 connection pool of its own.

    Gives the same results as `HttpxInvoker` for the same gateway behaviour. Opens at most
    ``max_concurrency`` connections; a call finding them all busy waits for one (the controller
    never lets that happen). Close it with :meth:`aclose`.
    """

    def __init__(self, config: ControllerConfig) -> None:
        base = httpx.URL(config.gateway_url)
        route = "async-function" if config.async_invocation else "function"
        self._prefix = f"{config.gateway_url}/{route}/"
        self._host = base.raw_host.decode("ascii")
        https = base.scheme == "https"
        self._port = base.port or (443 if https else 80)
        context = _tls_context(config)  # a context for https, else True
        self._tls: ssl.SSLContext | None = None if isinstance(context, bool) else context
        self._host_line = b"Host: " + base.netloc + b"\r\n"
        creds = config.credentials
        # Off by default: functions (and whoever they call back) never see the gateway password.
        self._auth = b""
        if creds is not None and config.auth_invocations:
            token = base64.b64encode(f"{creds.user}:{creds.password}".encode())
            self._auth = b"Authorization: Basic " + token + b"\r\n"
        self._timeout = config.upstream_timeout
        self._max_bytes = config.max_response_bytes
        self._limit = config.max_concurrency
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        self._idle: list[Connection] = []  # LIFO: the warmest connection first
        self._open = 0  # idle, busy and being opened
        self._waiters: deque[anyio.Event] = deque()
        self._closed = False

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        started = anyio.current_time()
        if self._closed:
            raise RuntimeError("this FastInvoker is closed")
        key = (invocation.function, invocation.headers)
        head = self._heads.get(key) or self._prepare(key)
        content = invocation.body
        request = b"%b%d\r\n\r\n%b" % (head, len(content), content)
        status: int | None = None
        headers: dict[str, str] = {}
        body = b""
        error: InvocationError | None = None
        # One deadline for the whole exchange, connecting included, as HttpxInvoker.
        timeout = self._timeout
        deadline = None if timeout is None else anyio.CancelScope(deadline=started + timeout)
        with deadline or nullcontext():
            connection: Connection | None = None
            try:
                connection, (status, headers, framing, keep_alive) = await self._send(
                    request, started
                )
                self._check_declared(headers)
                body = await connection.response_body(framing, self._max_bytes)
                if keep_alive and connection.reusable() and not self._closed:
                    self._release(connection, started)
                    connection = None
            except _ConnectError as exc:
                error = UpstreamConnectionError(f"{invocation.function}: {exc}", request_sent=False)
            except (*_LOST, MalformedResponseError) as exc:
                error = UpstreamConnectionError(
                    f"{invocation.function}: {_describe(exc)}", request_sent=True
                )
            except ResponseTooLargeError as exc:
                error = exc
            finally:
                if connection is not None:  # never reused after an error or a cancellation
                    await self._drop(connection)
        return finish(
            invocation,
            started=started,
            status=status,
            body=body,
            headers=headers,
            error=error,
            timed_out=deadline is not None and deadline.cancelled_caught,
            timeout=self._timeout,
        )

    async def aclose(self) -> None:
        """Close every pooled connection; connections in use close when their call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._drop(connection)

    def _prepare(self, key: tuple[str, tuple[tuple[str, str], ...]]) -> bytes:
        """The request head up to the Content-Length value, cached per function and headers."""
        function, fields = key
        # safe="" quotes "/" too: an address can never leave /function/.
        target = httpx.URL(self._prefix + quote(function, safe="")).raw_path
        lines = [b"POST ", target, b" HTTP/1.1\r\n", self._host_line]
        for name, value in fields:
            if self._auth and name.lower() == "authorization":
                continue  # replaced by ours, as httpx's auth= does
            lines += (name.encode("ascii"), b": ", value.encode("ascii"), b"\r\n")
        lines += (self._auth, b"Content-Length: ")
        head = b"".join(lines)
        if len(self._heads) >= _HEAD_CACHE:
            del self._heads[next(iter(self._heads))]
        self._heads[key] = head
        return head

    async def _send(self, request: bytes, now: float) -> tuple[Connection, Head]:
        """Send the request; the connection, and the head of the response read from it."""
        idle = self._idle
        if idle and now - idle[-1].idle_since < _KEEPALIVE_EXPIRY:
            connection, reused = idle.pop(), True
        else:
            connection, reused = await self._acquire(now)
        try:
            await connection.stream.send(request)
            return connection, await connection.response_head()
        except _LOST:
            await self._drop(connection)
            if not reused or connection.received():
                raise
        except BaseException:
            await self._drop(connection)
            raise
        # A pooled connection the server had closed meanwhile (the send failed, or EOF came
        # before any byte of an answer): the request was not processed; send it once more.
        connection = await self._connect()
        try:
            await connection.stream.send(request)
            return connection, await connection.response_head()
        except BaseException:
            await self._drop(connection)
            raise

    def _check_declared(self, headers: dict[str, str]) -> None:
        """A declared length over the limit fails before reading (parse_head checked digits)."""
        declared = headers.get("content-length")
        if declared is not None and int(declared) > self._max_bytes:
            raise ResponseTooLargeError(
                f"response of {declared} bytes exceeds {self._max_bytes} bytes"
            )

    def _release(self, connection: Connection, started: float) -> None:
        """Pool a connection after a complete response."""
        # Idle time counts from the start of its last call: it expires early, never late.
        connection.idle_since = started
        self._idle.append(connection)
        if self._waiters:
            self._wake()

    async def _acquire(self, now: float) -> tuple[Connection, bool]:
        """A pooled connection (True) or a new one (False)."""
        while True:
            while self._idle:
                connection = self._idle.pop()
                if now - connection.idle_since < _KEEPALIVE_EXPIRY:
                    return connection, True
                await self._drop(connection)
            if self._open < self._limit:
                return await self._connect(), False
            event = anyio.Event()
            self._waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self._wake()  # pass the turn on
                else:
                    self._waiters.remove(event)
                raise

    async def _connect(self) -> Connection:
        self._open += 1
        try:
            if self._tls is None:
                stream: ByteStream = await anyio.connect_tcp(self._host, self._port)
            else:
                stream = await anyio.connect_tcp(
                    self._host,
                    self._port,
                    tls=True,
                    ssl_context=self._tls,
                    tls_hostname=self._host,
                    tls_standard_compatible=False,  # as httpcore: EOF without close_notify
                )
        except BaseException as exc:
            self._open -= 1
            if self._waiters:
                self._wake()
            if isinstance(exc, _LOST):
                raise _ConnectError(_describe(exc)) from exc
            raise
        return Connection(stream)

    async def _drop(self, connection: Connection) -> None:
        """Close a connection that is not in the pool (also when cancelled)."""
        self._open -= 1
        if self._waiters:
            self._wake()
        await anyio.aclose_forcefully(connection.stream)

    def _wake(self) -> None:
        self._waiters.popleft().set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, anyio.EndOfStream):
        return "the server closed the connection before the response was complete"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
