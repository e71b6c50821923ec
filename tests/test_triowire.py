"""TrioWire: the fast path's trio connection, against a real loopback peer (plain and TLS)."""

from __future__ import annotations

import gc
import math
import random
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing
import trustme
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.tls import TLSStream

from aioconnector._fastpath._triowire import TrioWire, open_trio_wire
from aioconnector._fastpath._wire import WireAbortedError, WireTimeoutError

from .test_fastpath import wait_until

WAIT = 10  # seconds: the bound on every wait in these tests


@pytest.fixture(params=[pytest.param(("trio", {}), id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """trio only: TrioWire waits on its socket with ``trio.lowlevel`` (the fast path would use
    it only there; on asyncio it uses AsyncioWire, tested in test_wire)."""
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[TrioWire, SocketStream]]:
    """A wire to a loopback listener, and the listener's end of that connection (which reads
    only when asked, on trio)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(WAIT):
            wire = await open_trio_wire("127.0.0.1", port, None)
            inner = listener.listeners[0]
            assert isinstance(inner, SocketListener)
            peer = await inner.accept()
        try:
            async with peer:
                yield wire, peer
        finally:
            wire.close()
            settle()


def settle() -> None:
    gc.collect()  # an unclosed socket would warn (and filterwarnings=error fail the test)


async def blocked() -> None:
    """Until every other task waits (on its socket, say)."""
    with anyio.fail_after(WAIT):
        await trio.testing.wait_all_tasks_blocked()


async def failures_of(
    operation: Callable[[], Awaitable[object]], interrupt: Callable[[], Awaitable[None] | None]
) -> list[BaseException]:
    """What ``operation`` raised when ``interrupt`` ran (in another task) while it waited."""
    failures: list[BaseException] = []

    async def run() -> None:
        try:
            await operation()
        except Exception as exc:
            failures.append(exc)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await blocked()
            assert failures == []  # still waiting
            pending = interrupt()
            if pending is not None:
                await pending
    return failures


async def receive_exactly(
    stream: SocketStream | TrioWire | trio.SSLStream[trio.SocketStream], size: int
) -> bytes:
    data = b""
    with anyio.fail_after(WAIT):
        while len(data) < size:
            if isinstance(stream, trio.SSLStream):
                data += await stream.receive_some()
            else:
                data += await stream.receive()
    return data


async def read_to_the_end(peer: SocketStream) -> bytes:
    data = b""
    with anyio.fail_after(WAIT):
        try:
            while True:
                data += await peer.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data


def payload(size: int, seed: int = 7) -> bytes:
    """Bytes that do not repeat: any reordering or loss shows."""
    return random.Random(seed).randbytes(size)


def reset(peer: SocketStream) -> None:
    """Make the peer's close send RST instead of FIN."""
    sock = peer.extra(SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def closed(wire: TrioWire) -> bool:
    return wire._sock.fileno() < 0


# -- bytes in and out ----------------------------------------------------------------------------


async def test_send_and_receive_round_trip() -> None:
    async with connected() as (wire, peer):
        assert wire._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with anyio.fail_after(WAIT):
            await wire.send(b"")  # nothing to send: nothing happens
            await wire.send(b"ping")
            assert await receive_exactly(peer, 4) == b"ping"
            await peer.send(b"pong")
            assert await wire.receive() == b"pong"
            await wire.send(b"again")
            assert await receive_exactly(peer, 5) == b"again"
        assert wire.intact()


async def test_receive_waits_for_data() -> None:
    async with connected() as (wire, peer):
        got: list[bytes] = []

        async def read() -> None:
            got.append(await wire.receive())

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await blocked()
                assert got == []
                await peer.send(b"late")
        assert got == [b"late"]


async def test_receive_returns_at_most_max_bytes() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"one two three")
        with anyio.fail_after(WAIT):
            assert await wire.receive(4) == b"one "
            assert await receive_exactly(wire, 9) == b"two three"


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
            with pytest.raises(anyio.EndOfStream):
                await wire.send(b"request")  # as AsyncioWire, whose transport closes at EOF


async def test_eof_while_waiting() -> None:
    async with connected() as (wire, peer):
        failures = await failures_of(wire.receive, peer.send_eof)
        assert [type(exc) for exc in failures] == [anyio.EndOfStream]


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_peer_gone_while_waiting(how: str) -> None:
    async with connected() as (wire, peer):

        async def interrupt() -> None:
            if how == "reset":
                reset(peer)
            await peer.aclose()

        failures = await failures_of(wire.receive, interrupt)
        expected = anyio.EndOfStream if how == "close" else anyio.BrokenResourceError
        assert [type(exc) for exc in failures] == [expected]
        assert not wire.intact()
        with pytest.raises(expected):
            await wire.receive()
        with pytest.raises(expected):
            await wire.send(b"into the void")


async def test_data_then_reset_returns_the_data_first() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"partial")
        reset(peer)
        await peer.aclose()
        await wait_until(lambda: not wire.intact())
        with anyio.fail_after(WAIT):
            assert await wire.receive() == b"partial"
            with pytest.raises(anyio.BrokenResourceError) as caught:
                await wire.receive()
        assert isinstance(caught.value.__cause__, ConnectionResetError)


async def test_a_large_send_waits_for_the_peer_to_read() -> None:
    size = 8 * 1024 * 1024  # about twice what loopback's kernel buffers hold unread
    data = payload(size)
    async with connected() as (wire, peer):
        sent = anyio.Event()
        received = b""

        async def write() -> None:
            await wire.send(data)
            sent.set()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await blocked()  # the kernel's buffers are full: send waits
                assert not sent.is_set()
                received = await receive_exactly(peer, size)
                await sent.wait()
        assert received == data  # all of it, in order
        await peer.send(b"still usable")
        assert await receive_exactly(wire, 12) == b"still usable"


# -- the deadline --------------------------------------------------------------------------------


async def test_expire_fails_a_pending_receive_and_every_later_call() -> None:
    async with connected() as (wire, peer):
        wire.arm(trio.current_time() + 60)
        failures = await failures_of(wire.receive, wire.expire)  # as the deadline sweep would
        assert [type(exc) for exc in failures] == [WireTimeoutError]
        # Terminal, unlike AsyncioWire: the socket is closed, and arm() does not revive it.
        assert closed(wire)
        assert not wire.intact()
        wire.arm(math.inf)
        with pytest.raises(WireTimeoutError):
            await wire.receive()
        with pytest.raises(WireTimeoutError):
            await wire.send(b"request")
        assert await read_to_the_end(peer) == b""  # the server sees the connection end
        wire.close()
        with pytest.raises(WireTimeoutError):
            await wire.receive()  # the reason stays the expiry


async def test_expire_fails_a_send_waiting_for_the_peer_to_read() -> None:
    data = bytes(16 * 1024 * 1024)  # far more than the kernel buffers hold
    async with connected() as (wire, peer):
        wire.arm(math.inf)
        failures = await failures_of(lambda: wire.send(data), wire.expire)  # peer reads nothing
        assert [type(exc) for exc in failures] == [WireTimeoutError]
        assert len(await read_to_the_end(peer)) < len(data)


async def test_expire_between_waits_fails_the_next_call() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"answer")
        await wait_until(lambda: not wire.intact())  # buffered in the kernel
        wire.expire()
        with pytest.raises(WireTimeoutError):
            await wire.receive()  # buffered data is never handed out past an expiry


# -- abort ---------------------------------------------------------------------------------------


async def test_abort_fails_a_pending_receive_and_every_later_call() -> None:
    async with connected() as (wire, peer):
        failures = await failures_of(wire.receive, wire.abort)
        assert [type(exc) for exc in failures] == [WireAbortedError]
        assert closed(wire)
        assert not wire.intact()
        with pytest.raises(WireAbortedError):
            await wire.receive()
        with pytest.raises(WireAbortedError):
            await wire.send(b"request")
        wire.expire()  # an expiry after an abort reports the abort
        wire.arm(math.inf)
        with pytest.raises(WireAbortedError):
            await wire.receive()
        assert await read_to_the_end(peer) == b""


async def test_abort_fails_a_send_waiting_for_the_peer_to_read() -> None:
    data = bytes(16 * 1024 * 1024)
    async with connected() as (wire, _peer):
        failures = await failures_of(lambda: wire.send(data), wire.abort)
        assert [type(exc) for exc in failures] == [WireAbortedError]


async def test_abort_after_expire_reports_the_abort() -> None:
    async with connected() as (wire, _peer):
        wire.expire()
        wire.abort()
        with pytest.raises(WireAbortedError):
            await wire.receive()


async def test_abort_after_peer_eof_still_reports_the_abort() -> None:
    async with connected() as (wire, peer):
        await peer.send_eof()
        await wait_until(lambda: not wire.intact())
        wire.abort()
        with pytest.raises(WireAbortedError):
            await wire.receive()


async def test_a_cancelled_wait_is_not_translated() -> None:
    async with connected() as (wire, peer):
        with anyio.move_on_after(WAIT) as outer, trio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(wire.receive)
                await blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert not outer.cancelled_caught
        # The wire itself is untouched: the next exchange's answer comes through.
        await peer.send(b"next")
        assert await receive_exactly(wire, 4) == b"next"


# -- intact() ------------------------------------------------------------------------------------


async def test_intact_on_a_fresh_idle_connection() -> None:
    async with connected() as (wire, _peer):
        await anyio.sleep(0.05)  # anything the peer did would have arrived
        assert wire.intact()


async def test_not_intact_after_unsolicited_bytes() -> None:
    async with connected() as (wire, peer):
        await peer.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await wait_until(lambda: not wire.intact())
        # Nothing was consumed: the stray bytes are still there to read.
        assert await wire.receive() == b"HTTP/1.1 408 Request Timeout\r\n\r\n"


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_not_intact_after_the_peer_closed(how: str) -> None:
    async with connected() as (wire, peer):
        assert wire.intact()
        if how == "reset":
            reset(peer)
        await peer.aclose()
        await wait_until(lambda: not wire.intact())


# -- closing and connecting ----------------------------------------------------------------------


async def test_close_drops_the_connection() -> None:
    async with connected() as (wire, peer):
        wire.close()
        assert await read_to_the_end(peer) == b""
        with pytest.raises(anyio.ClosedResourceError):
            await wire.send(b"request")
        with pytest.raises(anyio.ClosedResourceError):
            await wire.receive()
        assert not wire.intact()
        wire.close()  # idempotent
        await wire.aclose()


async def test_close_wakes_a_pending_receive() -> None:
    async with connected() as (wire, _peer):
        failures = await failures_of(wire.receive, wire.close)
        assert [type(exc) for exc in failures] == [anyio.ClosedResourceError]


def test_close_outside_trio() -> None:
    wire = TrioWire(socket.socket())
    wire.close()  # no trio run to tell: the socket just closes
    assert closed(wire)
    wire.close()


async def test_open_refused() -> None:
    with anyio.fail_after(WAIT), pytest.raises(OSError, match=r"(?i)refused|connect"):
        await open_trio_wire("127.0.0.1", 1, None)
    settle()


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@asynccontextmanager
async def tls_connected(
    ca: trustme.CA, *, handshake: bool = True
) -> AsyncIterator[tuple[TrioWire, trio.SSLStream[trio.SocketStream]]]:
    """A TLS wire, and the server's end (trio's SSLStream: its ``aclose`` sends close_notify)
    once both ends completed the handshake."""
    server_context, client_context = contexts(ca)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0] as listener:
        port = listener.socket.getsockname()[1]
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                accepted: list[trio.SSLStream[trio.SocketStream]] = []

                async def accept() -> None:
                    stream = trio.SSLStream(
                        await listener.accept(), server_context, server_side=True
                    )
                    if handshake:
                        await stream.do_handshake()
                    accepted.append(stream)

                tg.start_soon(accept)
                wire = await open_trio_wire("127.0.0.1", port, client_context)
        peer = accepted[0]
        try:
            async with peer.transport_stream:
                yield wire, peer
        finally:
            wire.close()
            settle()


async def test_tls_round_trip(ca: trustme.CA) -> None:
    async with tls_connected(ca) as (wire, peer):
        assert wire._ssl is not None
        assert wire._ssl.version() is not None
        with anyio.fail_after(WAIT):
            await wire.send(b"")  # nothing to send: nothing happens
            await wire.send(b"ping")
            assert await peer.receive_some() == b"ping"
            await peer.send_all(b"pong")
            assert await wire.receive() == b"pong"
            big = payload(1024 * 1024)  # many records, more than the kernel buffers at first
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer.send_all, big)
                assert await receive_exactly(wire, len(big)) == big
            await wire.send(big)  # a send the peer must read for it to complete
            assert await receive_exactly(peer, len(big)) == big
        assert wire.intact()


async def test_tls_intact_while_idle_after_the_handshake(ca: trustme.CA) -> None:
    """TLS 1.3 session tickets arrive after the handshake (anyio's TLS server sends them at
    once; trio's, with its first data): records without data, processed by `intact`."""
    server_context, client_context = contexts(ca)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        port = listener.extra(SocketAttribute.local_port)
        inner = listener.listeners[0]
        assert isinstance(inner, SocketListener)
        opened: list[TrioWire] = []

        async def open_() -> None:
            opened.append(await open_trio_wire("127.0.0.1", port, client_context))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(open_)
                peer = await TLSStream.wrap(
                    await inner.accept(),
                    server_side=True,
                    ssl_context=server_context,
                    standard_compatible=False,  # its aclose waits for no close_notify
                )
        [wire] = opened
        try:
            async with peer:
                assert wire._ssl is not None
                assert wire._ssl.version() == "TLSv1.3"
                await wait_until(wire._readable)  # the tickets, unread
                assert wire.intact()
                assert not wire._readable()  # read, and processed
                assert wire.intact()
                with anyio.fail_after(WAIT):
                    await wire.send(b"ping")  # the connection still works
                    assert await peer.receive() == b"ping"
                    await peer.send(b"pong")
                    assert await wire.receive() == b"pong"
        finally:
            wire.close()
            settle()


async def test_tls_not_intact_after_unsolicited_data(ca: trustme.CA) -> None:
    async with tls_connected(ca) as (wire, peer):
        await peer.send_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await wait_until(lambda: not wire.intact())
        assert not wire.intact()  # and stays so
        assert await wire.receive() == b"HTTP/1.1 408 Request Timeout\r\n\r\n"  # kept


@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "ragged"])
async def test_tls_server_closing_is_the_end_of_the_stream(ca: trustme.CA, notify: bool) -> None:
    """With or without close_notify (as httpcore): `anyio.EndOfStream`, after the data."""
    async with tls_connected(ca) as (wire, peer):
        await peer.send_all(b"last words")
        with anyio.fail_after(WAIT):
            if notify:
                await peer.aclose()  # sends close_notify, waits for no answer
            else:
                await peer.transport_stream.aclose()
        await wait_until(lambda: not wire.intact())
        with anyio.fail_after(WAIT):
            assert await receive_exactly(wire, 10) == b"last words"
            with pytest.raises(anyio.EndOfStream):
                await wire.receive()
            with pytest.raises(anyio.EndOfStream):
                await wire.receive()


async def test_tls_expire_fails_a_pending_receive(ca: trustme.CA) -> None:
    async with tls_connected(ca) as (wire, _peer):
        failures = await failures_of(wire.receive, wire.expire)
        assert [type(exc) for exc in failures] == [WireTimeoutError]
        assert closed(wire)
        with pytest.raises(WireTimeoutError):
            await wire.send(b"request")


async def test_tls_untrusted_server_is_an_oserror(ca: trustme.CA) -> None:
    server_context, _ = contexts(ca)
    other = trustme.CA()  # the client trusts another CA
    client_context = ssl.create_default_context()
    other.configure_trust(client_context)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0] as listener:
        port = listener.socket.getsockname()[1]

        async def serve() -> None:
            stream = trio.SSLStream(await listener.accept(), server_context, server_side=True)
            async with stream.transport_stream:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.do_handshake()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                with pytest.raises(ssl.SSLCertVerificationError):
                    await open_trio_wire("127.0.0.1", port, client_context)
    settle()


async def test_tls_server_closing_during_the_handshake_is_an_oserror(ca: trustme.CA) -> None:
    _, client_context = contexts(ca)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        port = listener.extra(SocketAttribute.local_port)

        async def serve() -> None:
            inner = listener.listeners[0]
            assert isinstance(inner, SocketListener)
            stream = await inner.accept()
            await stream.receive()  # the ClientHello
            await stream.aclose()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                with pytest.raises(OSError):  # noqa: PT011 - whichever the platform reports
                    await open_trio_wire("127.0.0.1", port, client_context)
    settle()


async def test_a_cancelled_handshake_leaves_no_socket_open(ca: trustme.CA) -> None:
    """A server that accepts and never answers: the wire's socket is closed on cancellation."""
    _, client_context = contexts(ca)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        port = listener.extra(SocketAttribute.local_port)
        opened: list[TrioWire] = []
        with anyio.fail_after(WAIT):
            inner = listener.listeners[0]
            assert isinstance(inner, SocketListener)
            scope = anyio.CancelScope()

            async def open_() -> None:
                with scope:
                    opened.append(await open_trio_wire("127.0.0.1", port, client_context))

            async with anyio.create_task_group() as tg:
                tg.start_soon(open_)
                async with await inner.accept() as peer:
                    assert await peer.receive()  # the ClientHello: the wire waits for more
                    await blocked()
                    scope.cancel()
                    await blocked()  # the wire's task ends
                    settle()  # the socket was closed, not left to the collector
                    assert await read_to_the_end(peer) == b""
        assert opened == []
