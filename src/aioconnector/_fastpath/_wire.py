"""Wires: a connection's bytes, as `Connection` reads and writes them.

`AsyncioWire`: on asyncio, straight from an `asyncio.Protocol`.

On asyncio, anyio's socket stream costs about a third of an invocation: each ``receive`` turns
reading on and off again (two ``epoll_ctl`` calls) and each call enters cancel scopes. This wire
keeps reading on and wakes one waiting future per read, and leaves deadlines to one periodic
sweep by its owner, so the fast path's hot loop touches no anyio machinery on asyncio. It offers the
part of anyio's ``ByteStream`` that `Connection` uses, with anyio's exceptions, so `Connection`
reads from it and from an anyio stream (trio, or the slow path) alike.

`TrioWire` (in `_triowire`) is the same on trio, on a plain socket.
"""

from __future__ import annotations

import asyncio
import math
import select
from typing import TYPE_CHECKING, Final, Protocol, cast, final

import anyio

if TYPE_CHECKING:
    import ssl

__all__ = [
    "AsyncioWire",
    "Wire",
    "WireAbortedError",
    "WireTimeoutError",
    "open_asyncio_wire",
]

# Reading pauses while this much is buffered unread (a server sending far ahead of us).
_PAUSE_AT: Final = 256 * 1024


class WireTimeoutError(Exception):
    """The exchange's deadline passed while waiting on this wire."""


class WireAbortedError(Exception):
    """The wire was aborted (the controller's shutdown cancelled its exchange)."""


class Wire(Protocol):
    """What `Connection` and the invoker use of a connection's bytes.

    Failures are anyio's exceptions (``EndOfStream``, ``BrokenResourceError``) or ``OSError``;
    past the deadline of `arm`, after `expire`, a wait fails with `WireTimeoutError`, and after
    `abort` with `WireAbortedError`.
    """

    deadline: float

    def write(self, data: bytes) -> bool:
        """Queue ``data`` for sending; True when `drain` must be awaited before reading."""

    async def drain(self) -> None:
        """Wait until what was written is handed to the kernel."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next bytes received (at least one)."""

    def intact(self) -> bool:
        """For an idle connection: nothing arrived and nothing broke since its last answer."""

    def arm(self, deadline: float) -> None:
        """Start an exchange that must be over by ``deadline`` (loop time; ``inf``: none)."""

    def expire(self) -> None:
        """The deadline passed: fail the wait in progress and later ones (the owner's sweep)."""

    def abort(self) -> None:
        """Fail the wait in progress and every later one with `WireAbortedError`."""

    async def aclose(self) -> None:
        """Drop the connection at once."""


@final
class AsyncioWire(asyncio.Protocol):
    """A client connection's protocol, read and written by one exchange at a time.

    Each exchange starts with `arm` (its deadline). Its owner calls `expire` once the deadline
    has passed (one periodic sweep over all wires costs less than a loop timer per wait), and
    `abort` to stop it: the wait in progress, and every later one, fails.
    """

    __slots__ = (
        "_data",
        "_eof",
        "_failure",
        "_fd",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_poll",
        "_stop",
        "_transport",
        "_waiter",
        "deadline",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.deadline = math.inf
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._data = b""
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._failure: BaseException | None = None  # connection lost, or closed
        self._stop: type[WireTimeoutError | WireAbortedError] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._poll: select.poll | None = None  # asks the socket itself (see `intact`)
        self._fd = -1

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")  # the TCP socket, under TLS too
        if sock is not None:
            self._fd = sock.fileno()
            if hasattr(select, "poll"):  # one poll(0) call: 0.7 us here, no exception
                self._poll = select.poll()
                self._poll.register(self._fd, select.POLLIN)

    def data_received(self, data: bytes) -> None:
        self._data = self._data + data if self._data else bytes(data)
        if len(self._data) > _PAUSE_AT and self._transport is not None:
            self._transport.pause_reading()
            self._paused_reading = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport: we never write after the server's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            self._failure = (
                anyio.BrokenResourceError(str(exc)) if exc is not None else anyio.EndOfStream()
            )
            if exc is not None:
                self._failure.__cause__ = exc
        self._wake()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake()

    # -- what Connection uses ----------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The bytes received so far (all of them: ``max_bytes`` is only a hint)."""
        while not self._data:
            if self._stop is not None:
                raise self._stop
            if self._eof:
                raise anyio.EndOfStream
            if self._failure is not None:
                raise self._failure
            waiter = self._waiter = self._loop.create_future()  # _wait(), inline: the hot one
            try:
                await waiter
            finally:
                self._waiter = None
        if self._stop is not None:
            raise self._stop  # buffered data is never handed out past an expiry or an abort
        data, self._data = self._data, b""
        if self._paused_reading and self._transport is not None:
            self._paused_reading = False
            self._transport.resume_reading()
        return data

    def write(self, data: bytes) -> bool:
        if self._stop is not None or self._failure is not None:
            self._check()  # raises
        transport = self._transport
        if transport is None or transport.is_closing():
            raise anyio.BrokenResourceError("the connection is closed")
        transport.write(data)
        return self._paused_writing

    async def drain(self) -> None:
        while self._paused_writing:  # the kernel's buffer is full: wait for it to drain
            self._check()
            await self._wait()
        self._check()

    async def send(self, data: bytes) -> None:
        if self.write(data):
            await self.drain()

    def intact(self) -> bool:
        """Nothing arrived, and nothing broke, since the last response was read.

        The socket itself is asked too: when the loop was busy, or the server closed the
        connection just now, its FIN (or anything else) may be waiting in the kernel, not yet
        seen by this protocol. Readable while idle means unusable, as for httpcore and trio.
        """
        if self._data or self._eof or self._failure is not None:
            return False
        if self._poll is not None:
            return not self._poll.poll(0)
        if self._fd >= 0:  # pragma: no cover - platforms without poll(), such as Windows
            return not select.select([self._fd], [], [], 0)[0]
        return True  # pragma: no cover - asyncio transports always expose their socket

    def arm(self, deadline: float) -> None:
        """Start an exchange that must be over by ``deadline`` (loop time; ``inf``: none)."""
        self.deadline = deadline
        if self._stop is WireTimeoutError:
            self._stop = None  # an abort stays

    def expire(self) -> None:
        """The deadline passed: fail the wait in progress, and every later one, with
        `WireTimeoutError` (until the next `arm`). Called by the invoker's deadline sweep."""
        self._stop = self._stop or WireTimeoutError
        self._fail_waiter()

    def abort(self) -> None:
        """Fail the wait in progress, and every later one, with `WireAbortedError`."""
        self._stop = WireAbortedError
        self._fail_waiter()

    def close(self) -> None:
        """Drop the connection at once (unsent bytes are discarded)."""
        if self._failure is None:
            self._failure = anyio.ClosedResourceError()
        if self._transport is not None:
            self._transport.abort()

    async def aclose(self) -> None:
        self.close()

    # -- inner workings ----------------------------------------------------------------------

    def _check(self) -> None:
        if self._stop is not None:
            raise self._stop
        if self._failure is not None:
            raise self._failure

    async def _wait(self) -> None:
        """Until data, EOF, failure, drain, `expire` or `abort`."""
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_waiter(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._stop is not None:
            waiter.set_exception(self._stop())


async def open_asyncio_wire(host: str, port: int, tls: ssl.SSLContext | None) -> AsyncioWire:
    """A connected wire (TLS when ``tls`` is given); OSError when it cannot connect."""
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(
        lambda: AsyncioWire(loop),
        host,
        port,
        ssl=tls,
        server_hostname=host if tls is not None else None,
    )
    return wire
