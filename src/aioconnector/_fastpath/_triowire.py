"""`TrioWire`: a connection's bytes on trio, straight from a non-blocking socket.

On trio, anyio's socket stream and a cancel scope per call cost more than the exchange itself:
each ``receive`` goes through anyio's wrapper, trio's stream and socket wrappers (whose every
call ends with an extra trip through the scheduler), and each call enters and leaves a scope.
This wire calls ``recv``/``send`` on the plain socket, and waits only when the kernel says it
must, with `trio.lowlevel.wait_readable`/`wait_writable`: nothing else of trio's machinery runs.

It offers what `AsyncioWire` offers (``send``, ``receive``, ``intact``, ``arm``, ``expire``,
``abort``, ``close``, ``aclose``, ``deadline``), with the same exceptions. Deadlines are left to
its owner's periodic sweep, as for `AsyncioWire`: `expire` and `abort` come from another task,
and interrupt a wait in progress without a cancel scope by `trio.lowlevel.notify_closing` on
the socket, which wakes the waiting task with ``trio.ClosedResourceError``; the wire then
raises the reason it was stopped for. A socket notified so must be closed and never used again:
**an expired TrioWire is dead** (unlike an `AsyncioWire`, a later `arm` does not revive it).

Under TLS the wire drives an `ssl.SSLObject` over two memory BIOs on the same socket, so the
same waits (and the same interruption) serve both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import select
import socket
import ssl
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import trio

from ._wire import WireAbortedError, WireTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["TrioWire", "open_trio_wire"]

_RECORDS: Final = 65536 + 2048  # raw bytes read at once under TLS: about four full records
# What a server closing without close_notify raises once the raw EOF is fed in (OpenSSL 3 and
# 1.1.1): the end of the stream, as for httpcore (anyio's tls_standard_compatible=False).
_RAGGED_EOF: Final = (ssl.SSLEOFError, ssl.SSLSyscallError)


@final
class TrioWire:
    """A client connection's socket, read and written by one exchange at a time.

    Each exchange starts with `arm` (its deadline). Its owner calls `expire` once the deadline
    has passed, and `abort` to stop it: the wait in progress, and every later one, fails. Both
    close the socket: the wire is dead from then on. ``receive`` and ``send`` yield to the
    scheduler only when they must wait for the socket (as `AsyncioWire` yields only when it
    waits): an exchange's first ``receive`` always does, the answer being on its way.
    """

    __slots__ = (
        "_failure",
        "_incoming",
        "_outgoing",
        "_pending",
        "_plain",
        "_poll",
        "_sock",
        "_ssl",
        "_stop",
        "deadline",
    )

    def __init__(
        self, sock: socket.socket, tls: ssl.SSLContext | None = None, host: str | None = None
    ) -> None:
        """Wrap a connected socket; under TLS (``tls`` given, for ``host``) call `_handshake`
        before anything else."""
        self.deadline = math.inf
        sock.settimeout(0.0)  # non-blocking
        self._sock = sock
        self._incoming = ssl.MemoryBIO()  # TLS records received, not yet decrypted
        self._outgoing = ssl.MemoryBIO()  # TLS records to send
        self._ssl = (
            None
            if tls is None
            else tls.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        )
        self._plain = b""  # TLS: data decrypted by `intact` (never, from a sane server)
        self._pending = b""  # written, not yet taken by the kernel: for `drain`
        self._failure: BaseException | None = None  # end of stream, broken, or closed
        self._stop: type[WireTimeoutError | WireAbortedError] | None = None
        self._poll: select.poll | None = None  # asks the socket itself (see `intact`)
        if hasattr(select, "poll"):  # one poll(0) call: 0.7 us, no exception
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    # -- what Connection uses ----------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next bytes received: at most ``max_bytes``, at least one; `anyio.EndOfStream`
        once the server closed the connection."""
        if self._ssl is not None:
            return await self._receive_tls(max_bytes)
        sock = self._sock
        while True:
            if self._stop is not None:
                raise self._stop
            if self._failure is not None:
                raise self._failure
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            if data:
                return data
            self._failure = anyio.EndOfStream()
            raise self._failure

    def write(self, data: bytes) -> bool:
        """Hand ``data`` to the kernel as far as it takes it now; True when the rest (or, under
        TLS, all of it) waits for `drain`."""
        self._check()
        if self._ssl is not None:
            self._pending = data
            return True
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._broken(exc) from exc
        if sent == len(data):
            return False
        self._pending = data[sent:]
        return True

    async def drain(self) -> None:
        """Send what `write` left (waiting while the kernel's buffer is full)."""
        data, self._pending = self._pending, b""
        await self.send(data)

    async def send(self, data: bytes) -> None:
        """Hand all of ``data`` to the kernel (waiting while its buffer is full)."""
        self._check()
        if self._ssl is None:
            await self._send_raw(data)
            return
        if not data:  # SSLObject.write(b"") would fail
            return
        while True:
            try:
                self._ssl.write(data)  # to the outgoing BIO: all of it, or an exception
                break
            except ssl.SSLWantReadError:  # a renegotiation: records to exchange first
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                raise self._broken(exc) from exc
        await self._flush()

    def intact(self) -> bool:
        """Nothing arrived, and nothing broke or stopped it, since the last response was read.

        The socket itself is asked: readable while idle means unusable (the server's FIN, or
        bytes out of step), as for httpcore and trio. Under TLS, records that carry no data
        (TLS 1.3 session tickets, a key update) are processed here and do not count.
        """
        if self._stop is not None or self._failure is not None or self._plain:
            return False
        if self._ssl is not None and (
            self._ssl.pending() or self._incoming.pending or self._incoming.eof
        ):
            return False
        if not self._readable():
            return True
        return self._ssl is not None and self._settle()

    def arm(self, deadline: float) -> None:
        """Start an exchange that must be over by ``deadline`` (trio's clock; ``inf``: none).

        An expired or aborted wire stays so: its socket is closed.
        """
        self.deadline = deadline

    def expire(self) -> None:
        """The deadline passed: fail the wait in progress, and every later call, with
        `WireTimeoutError` (`WireAbortedError` after an `abort`). Closes the socket: unlike
        `AsyncioWire`, an expired TrioWire is dead, and `arm` does not revive it."""
        self._stop = self._stop or WireTimeoutError
        self._shut()

    def abort(self) -> None:
        """Fail the wait in progress, and every later call, with `WireAbortedError`; closes
        the socket."""
        self._stop = WireAbortedError
        self._shut()

    def close(self) -> None:
        """Drop the connection at once (a wait in progress, and later calls, fail with
        `anyio.ClosedResourceError`)."""
        if self._failure is None:
            self._failure = anyio.ClosedResourceError()
        self._shut()

    async def aclose(self) -> None:
        self.close()

    # -- inner workings ----------------------------------------------------------------------

    def _check(self) -> None:
        if self._stop is not None:
            raise self._stop
        if self._failure is not None:
            raise self._failure

    def _broken(self, exc: BaseException) -> BaseException:
        """What a failed socket or TLS call raises: the reason the wire was stopped or
        closed (a call on its closed socket fails), else `anyio.BrokenResourceError` (raised
        ``from exc``)."""
        if self._stop is not None:
            return self._stop()
        if self._failure is None:
            self._failure = anyio.BrokenResourceError(str(exc) or type(exc).__name__)
            self._failure.__cause__ = exc
        return self._failure

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Until the socket is readable (or writable); `expire`, `abort` and `close` end the
        wait by `trio.lowlevel.notify_closing`, which raises ``trio.ClosedResourceError``."""
        try:
            await wait(self._sock)
        except (trio.ClosedResourceError, OSError) as exc:
            raise self._broken(exc) from exc

    def _shut(self) -> None:
        """Wake the task waiting on the socket (if any), then close the socket: in this order,
        with no checkpoint between, as trio's own sockets close."""
        self._poll = None  # its fd may be another socket's once closed
        _close_socket(self._sock)

    def _readable(self) -> bool:
        """Whether the kernel holds something to read (data, FIN or an error)."""
        if self._poll is not None:
            return bool(self._poll.poll(0))
        # Platforms without poll(), such as Windows.
        return bool(select.select([self._sock], [], [], 0)[0])  # pragma: no cover

    async def _send_raw(self, data: bytes) -> None:
        sock = self._sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._broken(exc) from exc
        if sent == len(data):
            return
        view = memoryview(data)
        while sent < len(data):  # the kernel's buffer is full: wait for it to drain
            await self._wait(trio.lowlevel.wait_writable)
            self._check()
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._broken(exc) from exc

    # -- TLS -----------------------------------------------------------------------------------

    async def _receive_tls(self, max_bytes: int) -> bytes:
        tls = self._ssl
        assert tls is not None  # noqa: S101 - called under TLS only
        while True:
            self._check()
            if self._plain:
                data, self._plain = self._plain, b""
                return data
            try:
                data = tls.read(max_bytes)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:  # an answer to a key update, say
                    await self._flush()
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                data = b""
            except _RAGGED_EOF as exc:
                if not self._incoming.eof:
                    raise self._broken(exc) from exc
                data = b""
            except ssl.SSLError as exc:
                raise self._broken(exc) from exc
            if data:
                return data
            self._failure = anyio.EndOfStream()
            raise self._failure

    async def _fill(self) -> None:
        """Feed the next raw bytes (or the EOF) from the socket to the SSLObject."""
        sock = self._sock
        while True:
            self._check()
            try:
                data = sock.recv(_RECORDS)
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            return

    async def _flush(self) -> None:
        """Send the TLS records the SSLObject wrote."""
        data = self._outgoing.read()
        if data:
            await self._send_raw(data)

    def _settle(self) -> bool:
        """Under TLS, an idle socket readable: whether what came carries no data (intact).

        Reads without waiting and decrypts; data or the end of the stream means unusable
        (data is kept for `receive`, as `AsyncioWire` keeps it).
        """
        tls = self._ssl
        assert tls is not None  # noqa: S101 - called under TLS only
        while True:
            try:
                raw = self._sock.recv(_RECORDS)
            except BlockingIOError:
                return True
            except OSError as exc:
                self._broken(exc)
                return False
            if not raw:
                self._incoming.write_eof()
                return False
            self._incoming.write(raw)
            try:
                self._plain = tls.read(_RECORDS)
            except ssl.SSLWantReadError:
                if not self._readable():
                    return True  # records without data only: still in step
                continue
            except ssl.SSLZeroReturnError:
                pass
            except ssl.SSLError as exc:
                self._broken(exc)
                return False
            if not self._plain:  # a close_notify
                self._failure = anyio.EndOfStream()
            return False


async def open_trio_wire(host: str, port: int, tls: ssl.SSLContext | None) -> TrioWire:
    """A connected wire (TLS when ``tls`` is given, for ``host``); OSError when it cannot
    connect (``ssl.SSLError`` for a failed handshake). Cancelled, it leaves no socket open."""
    targets: list[tuple[int, Any]]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        found = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        targets = [(family, address) for family, _, _, _, address in found]
    else:
        targets = [(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))]
    error = OSError(f"no address found for {host!r}")
    for family, address in targets:  # in the resolver's order, one after the other
        try:
            return await _open(family, address, host, tls)
        except OSError as exc:
            error = exc
    raise error


async def _open(family: int, address: Any, host: str, tls: ssl.SSLContext | None) -> TrioWire:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await trio.socket.from_stdlib_socket(sock).connect(address)  # sets it non-blocking
        wire = TrioWire(sock, tls, host)
        if tls is not None:
            await _handshake(wire)
    except BaseException:
        _close_socket(sock)
        raise
    return wire


async def _handshake(wire: TrioWire) -> None:
    """The TLS handshake over the wire's socket. A failure raises OSError: ``ssl.SSLError``,
    or the socket's error."""
    tls = wire._ssl
    assert tls is not None  # noqa: S101 - called under TLS only
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await wire._flush()
                await wire._fill()
        await wire._flush()  # the client's last flight
    except anyio.BrokenResourceError as exc:  # what the wire makes of the socket's OSError
        raise exc.__cause__ or ConnectionResetError() from None


def _close_socket(sock: socket.socket) -> None:
    """Wake a task waiting on the socket (with ``trio.ClosedResourceError``), then close it: in
    this order, with no checkpoint between, as trio's own sockets close."""
    if sock.fileno() < 0:
        return
    # Outside trio (its run is over) nobody waits: nothing to tell.
    with contextlib.suppress(RuntimeError):
        trio.lowlevel.notify_closing(sock)
    sock.close()
