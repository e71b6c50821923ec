"""AsyncioWire: the fast path's asyncio connection, against a real loopback peer."""

from __future__ import annotations

import asyncio
import gc
import math
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.lowlevel import checkpoint
from anyio.streams.stapled import MultiListener

from aioconnector._errors import UpstreamTimeoutError
from aioconnector._fastpath._wire import (
    AsyncioWire,
    WireAbortedError,
    WireTimeoutError,
    open_asyncio_wire,
)

from .test_fastpath import Peer, fast, invocation, raw_server, result_of, wait_until

WAIT = 10  # seconds: the bound on every wait in these tests
PAUSE_AT = 256 * 1024


@pytest.fixture(params=[pytest.param(("asyncio", {"debug": True}), id="asyncio")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """asyncio only: AsyncioWire is an ``asyncio.Protocol`` on the running asyncio loop (the
    fast path uses it only there; on trio it uses anyio streams, tested in test_fastpath)."""
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[AsyncioWire, SocketStream]]:
    """A wire to a loopback listener, and the listener's end of that connection.

    On asyncio an accepted anyio stream reads eagerly (into memory) until its first
    ``receive``: a peer that must leave bytes unread in the kernel is a `RawPeer`."""
    async with listening() as listener:
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(WAIT):
            wire = await open_asyncio_wire("127.0.0.1", port, None)
            inner = listener.listeners[0]
            assert isinstance(inner, SocketListener)
            peer = await inner.accept()
        try:
            async with peer:
                yield wire, peer
        finally:
            wire.close()
            await settle()


@asynccontextmanager
async def connected_raw() -> AsyncIterator[tuple[AsyncioWire, RawPeer]]:
    """A wire, and the listener's end as a plain socket that reads only when asked."""
    async with listening() as listener:
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(WAIT):
            wire = await open_asyncio_wire("127.0.0.1", port, None)
        # The connection is already in the listener's backlog: accept() returns at once.
        sock, _ = listener.listeners[0].extra(SocketAttribute.raw_socket).accept()
        sock.settimeout(0.0)  # non-blocking
        try:
            with sock:
                yield wire, RawPeer(sock)
        finally:
            wire.close()
            await settle()


@asynccontextmanager
async def listening() -> AsyncIterator[MultiListener[SocketStream]]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        yield listener


async def settle() -> None:
    await anyio.sleep(0.01)  # a loop turn or two: the closed transport's callbacks run
    gc.collect()  # an unclosed socket would warn (and filterwarnings=error fail the test)


class RawPeer:
    """The server's end of a connection as a non-blocking socket, read only on request."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def receive(self) -> bytes:
        while True:
            try:
                data = self.sock.recv(1024 * 1024)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data


async def failures_of(
    wire: AsyncioWire,
    operation: Callable[[], Awaitable[object]],
    interrupt: Callable[[], Awaitable[None]],
) -> list[BaseException]:
    """What ``operation`` raised when ``interrupt`` ran while it waited on ``wire``."""
    failures: list[BaseException] = []

    async def run() -> None:
        try:
            await operation()
        except Exception as exc:
            failures.append(exc)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await wait_until(lambda: waiting(wire))
            await interrupt()
    return failures


def buffered(wire: AsyncioWire) -> int:
    """Bytes received and not yet read."""
    return len(wire._data)


def waiting(wire: AsyncioWire) -> bool:
    """Whether a receive or send is parked on the wire."""
    return wire._waiter is not None


async def receive_exactly(stream: SocketStream | AsyncioWire | RawPeer, size: int) -> bytes:
    data = b""
    with anyio.fail_after(WAIT):
        while len(data) < size:
            data += await stream.receive()
    return data


async def read_to_the_end(peer: RawPeer) -> int:
    """How many bytes the peer reads until the connection ends (EOF or reset)."""
    received = 0
    try:
        while True:
            received += len(await peer.receive())
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return received


def payload(size: int, seed: int = 7) -> bytes:
    """Bytes that do not repeat: any reordering or loss shows."""
    return random.Random(seed).randbytes(size)


def reset(peer: SocketStream) -> None:
    """Make the peer's close send RST instead of FIN."""
    sock = peer.extra(SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- bytes in and out ----------------------------------------------------------------------------


async def test_send_and_receive_round_trip() -> None:
    async with connected() as (wire, peer):
        with anyio.fail_after(WAIT):
            await wire.send(b"ping")
            assert await receive_exactly(peer, 4) == b"ping"
            await peer.send(b"pong")
            assert await wire.receive() == b"pong"
            await wire.send(b"again")
            assert await receive_exactly(peer, 5) == b"again"
        assert wire.intact()


async def test_receive_returns_everything_buffered_in_one_call() -> None:
    async with connected() as (wire, peer):
        for chunk in (b"one ", b"two ", b"three"):
            await peer.send(chunk)
        await wait_until(lambda: buffered(wire) == 13)
        with anyio.fail_after(WAIT):
            assert await wire.receive(1) == b"one two three"  # max_bytes is only a hint
        assert buffered(wire) == 0


async def test_receive_waits_for_data() -> None:
    async with connected() as (wire, peer):
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                got: list[bytes] = []

                async def read() -> None:
                    got.append(await wire.receive())

                tg.start_soon(read)
                await wait_until(lambda: waiting(wire))
                assert got == []
                await peer.send(b"late")
        assert got == [b"late"]
        assert not waiting(wire)


async def test_eof_after_data_returns_the_data_first() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"last words")
        await peer.send_eof()
        await wait_until(lambda: not wire.intact())
        with anyio.fail_after(WAIT):
            assert await wire.receive() == b"last words"
            with pytest.raises(anyio.EndOfStream):
                await wire.receive()
            with pytest.raises(anyio.EndOfStream):
                await wire.receive()  # and stays at the end


async def test_eof_while_waiting() -> None:
    async with connected() as (wire, peer):

        async def interrupt() -> None:
            await peer.send_eof()

        failures = await failures_of(wire, wire.receive, interrupt)
        assert [type(exc) for exc in failures] == [anyio.EndOfStream]


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_peer_gone_while_waiting(how: str) -> None:
    async with connected() as (wire, peer):

        async def interrupt() -> None:
            if how == "reset":
                reset(peer)
            await peer.aclose()

        failures = await failures_of(wire, wire.receive, interrupt)
        assert len(failures) == 1
        assert isinstance(failures[0], anyio.EndOfStream | anyio.BrokenResourceError)
        assert not wire.intact()
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await wire.receive()
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await wire.send(b"into the void")


async def test_data_then_reset_returns_the_data_first() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"partial")
        await wait_until(lambda: buffered(wire) == 7)
        reset(peer)
        await peer.aclose()
        await wait_until(lambda: wire._failure is not None)
        with anyio.fail_after(WAIT):
            assert await wire.receive() == b"partial"
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await wire.receive()


# -- the deadline --------------------------------------------------------------------------------


async def test_expire_fails_a_pending_receive_and_later_ones_until_the_next_arm() -> None:
    async with connected() as (wire, peer):
        wire.arm(asyncio.get_running_loop().time() + 60)

        async def interrupt() -> None:
            wire.expire()  # what the invoker's deadline sweep calls

        failures = await failures_of(wire, wire.receive, interrupt)
        assert [type(exc) for exc in failures] == [WireTimeoutError]
        assert not waiting(wire)
        with anyio.fail_after(WAIT), pytest.raises(WireTimeoutError):
            await wire.receive()  # still past its deadline
        # The next exchange arms the wire again: buffered data flows.
        await peer.send(b"data")
        await wait_until(lambda: buffered(wire) == 4)
        wire.arm(math.inf)
        with anyio.fail_after(WAIT):
            assert await wire.receive() == b"data"


async def test_arm_keeps_an_abort() -> None:
    async with connected() as (wire, _peer):
        wire.abort()
        wire.arm(math.inf)
        with anyio.fail_after(WAIT), pytest.raises(WireAbortedError):
            await wire.receive()
        wire.expire()  # an expiry after an abort reports the abort
        with anyio.fail_after(WAIT), pytest.raises(WireAbortedError):
            await wire.send(b"request")


async def test_expire_fails_a_send_waiting_for_the_peer_to_read() -> None:
    data = bytes(16 * 1024 * 1024)  # far more than the kernel buffers hold
    async with connected_raw() as (wire, _peer):
        wire.arm(math.inf)

        async def interrupt() -> None:
            wire.expire()

        # The peer reads nothing.
        failures = await failures_of(wire, lambda: wire.send(data), interrupt)
        assert [type(exc) for exc in failures] == [WireTimeoutError]
        assert wire._paused_writing
        assert not waiting(wire)


# -- abort ---------------------------------------------------------------------------------------


async def test_abort_fails_a_pending_receive() -> None:
    async with connected() as (wire, peer):

        async def interrupt() -> None:
            wire.abort()

        failures = await failures_of(wire, wire.receive, interrupt)
        assert [type(exc) for exc in failures] == [WireAbortedError]
        # Data arriving after the abort is never handed out.
        await peer.send(b"too late")
        await wait_until(lambda: buffered(wire) == 8)
        with anyio.fail_after(WAIT):
            with pytest.raises(WireAbortedError):
                await wire.receive()
            with pytest.raises(WireAbortedError):
                await wire.send(b"request")


async def test_abort_with_data_buffered() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"unread")
        await wait_until(lambda: buffered(wire) == 6)
        wire.abort()
        with anyio.fail_after(WAIT):
            with pytest.raises(WireAbortedError):
                await wire.receive()
            with pytest.raises(WireAbortedError):
                await wire.send(b"request")
        # The wire sent nothing after the abort: the peer sees only the close.
        wire.close()
        with anyio.fail_after(WAIT), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await peer.receive()


async def test_abort_fails_a_send_waiting_for_the_peer_to_read() -> None:
    data = bytes(16 * 1024 * 1024)  # far more than the kernel buffers hold
    async with connected_raw() as (wire, _peer):

        async def interrupt() -> None:
            assert wire._paused_writing
            wire.abort()

        # The peer reads nothing.
        failures = await failures_of(wire, lambda: wire.send(data), interrupt)
        assert [type(exc) for exc in failures] == [WireAbortedError]


async def test_abort_after_peer_eof_still_reports_the_abort() -> None:
    async with connected() as (wire, peer):
        await peer.send_eof()
        await wait_until(lambda: not wire.intact())
        wire.abort()
        with anyio.fail_after(WAIT), pytest.raises(WireAbortedError):
            await wire.receive()


# -- intact() ------------------------------------------------------------------------------------


async def test_intact_on_a_fresh_idle_connection() -> None:
    async with connected() as (wire, _peer):
        await anyio.sleep(0.05)  # loop turns: anything the peer did would have arrived
        assert wire.intact()


async def test_intact_after_a_complete_exchange() -> None:
    async with connected() as (wire, peer):
        await wire.send(b"request")
        assert await receive_exactly(peer, 7) == b"request"
        await peer.send(b"response")
        assert await receive_exactly(wire, 8) == b"response"
        await anyio.sleep(0.05)  # loop turns: nothing more arrives
        assert wire.intact()


async def test_not_intact_after_unsolicited_bytes() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await anyio.sleep(0.05)  # a loop turn: the bytes arrive
        assert not wire.intact()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_not_intact_after_the_peer_closed(how: str) -> None:
    async with connected() as (wire, peer):
        if how == "reset":
            reset(peer)
        await peer.aclose()
        await anyio.sleep(0.05)  # a loop turn: the FIN (or RST) arrives
        assert not wire.intact()


# -- flow control --------------------------------------------------------------------------------


async def test_reading_pauses_while_much_is_buffered_unread() -> None:
    size = 4 * 1024 * 1024
    data = payload(size)
    async with connected() as (wire, peer):
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer.send, data)  # blocks until we read
                await wait_until(lambda: wire._paused_reading)
                held = buffered(wire)
                assert PAUSE_AT < held < size
                await anyio.sleep(0.05)  # loop turns: nothing more is read while paused
                assert buffered(wire) == held
                received = b""
                while len(received) < size:
                    received += await wire.receive()
                    assert not wire._paused_reading or buffered(wire) > PAUSE_AT
        assert len(received) == size
        assert received == data
        assert not wire._paused_reading
        # Still usable afterwards.
        await peer.send(b"more")
        assert await receive_exactly(wire, 4) == b"more"


async def test_a_large_send_completes_only_once_the_peer_has_read() -> None:
    size = 8 * 1024 * 1024  # about twice what loopback's kernel buffers hold unread
    data = payload(size, seed=8)
    async with connected_raw() as (wire, peer):
        transport = wire._transport
        assert transport is not None
        low, _ = transport.get_write_buffer_limits()
        sent = anyio.Event()
        received = b""
        at_completion: dict[str, int] = {}

        async def write() -> None:
            await wire.send(data)
            at_completion["unsent"] = transport.get_write_buffer_size()
            at_completion["read"] = len(received)
            sent.set()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await wait_until(lambda: waiting(wire))  # the kernel's buffers are full
                assert wire._paused_writing
                assert transport.get_write_buffer_size() > low
                await anyio.sleep(0.05)  # loop turns: the peer reads nothing, send waits
                assert not sent.is_set()
                while len(received) < size:
                    received += await peer.receive()
                    await checkpoint()  # a slow reader: the writer gets a turn per read
                await sent.wait()
        assert received == data  # all of it, in order
        assert not wire._paused_writing
        assert at_completion["unsent"] <= low  # send returned once its bytes drained
        assert at_completion["read"] > 0  # ... which took the peer's reading


# -- closing and connecting ----------------------------------------------------------------------


async def test_close_drops_the_connection() -> None:
    async with connected() as (wire, peer):
        wire.close()
        with anyio.fail_after(WAIT), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await peer.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await wire.send(b"request")
        with pytest.raises(anyio.ClosedResourceError):
            await wire.receive()
        assert not wire.intact()
        wire.close()  # idempotent
        await wire.aclose()


async def test_close_wakes_a_pending_receive() -> None:
    async with connected() as (wire, _peer):

        async def interrupt() -> None:
            wire.close()

        failures = await failures_of(wire, wire.receive, interrupt)
        assert [type(exc) for exc in failures] == [anyio.ClosedResourceError]


async def test_close_discards_unsent_bytes() -> None:
    size = 16 * 1024 * 1024  # far more than the kernel buffers hold
    async with connected_raw() as (wire, peer):
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wire.send, bytes(size))  # the peer reads nothing yet
                await wait_until(lambda: waiting(wire))
                tg.cancel_scope.cancel()
        wire.close()
        with anyio.fail_after(WAIT):
            received = await read_to_the_end(peer)
        assert received < size


async def test_open_to_a_closed_port_raises_oserror() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()  # nobody listens there now
    with anyio.fail_after(WAIT), pytest.raises(OSError, match=r"(?i)refused|connect"):
        await open_asyncio_wire("127.0.0.1", port, None)


async def test_fast_invoker_deadline_sweep_runs_only_while_calls_are_busy() -> None:
    """On asyncio, FastInvoker sweeps for deadlines (no timer per request): the sweep fires
    the timeout within one sweep period, and stops once nothing is in progress."""

    async def silent(peer: Peer) -> None:
        await peer.request()
        await peer.wait_closed()

    async with raw_server(silent) as server, fast(server.url, upstream_timeout=0.2) as invoker:
        with anyio.fail_after(WAIT):
            started = anyio.current_time()
            result = await result_of(invoker, invocation())
            took = anyio.current_time() - started
            await wait_until(lambda: invoker._sweep is None)
    assert isinstance(result.error, UpstreamTimeoutError)
    assert 0.2 <= took < 0.2 + 0.2 / 20 + 2.0  # deadline, sweep period, a loaded machine
    assert invoker._sweep_every == pytest.approx(0.01)
