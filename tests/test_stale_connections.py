"""Pooled connections that the gateway closed while they were idle are never used, and a
request with an idempotency key survives a pooled connection closing before the answer.

The first test builds the hard case on purpose: the server closes the idle connection while
the client's event loop is blocked, so no loop turn has taken in the FIN when the next call
checks the connection out (a busy loop, or a close just before reuse). Only asking the socket
itself tells that connection is dead.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import anyio
import pytest

from aioconnector import UpstreamConnectionError
from aioconnector._invoke import Invocation

from .test_fastpath import HEADERS, OK, Peer, fast, invocation, raw_server, result_of

WAIT = 10  # seconds: the bound on every wait here; reached only when something is stuck


def keyed(name: str, key: str) -> Invocation:
    """An invocation carrying an idempotency key in header ``name``."""
    return Invocation(topic="t", function="echo", body=b"hi", headers=(*HEADERS, (name, key)))


class ClosingServer:
    """A blocking HTTP/1.1 server in a thread: it answers each request with OK, and closes
    each connection once `close_idle` is called (the connection then idle in the pool)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.requests = 0
        self._close = threading.Event()
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._current: socket.socket | None = None

    def close_idle(self) -> None:
        """Close the first connection, and return once it is closed (its FIN sent)."""
        self._close.set()
        assert self.closed.wait(WAIT)

    def _serve(self) -> None:
        with self._listener:
            while True:
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    return  # the listener was closed: the test is over
                self.connections += 1
                first = self.connections == 1
                self._current = conn
                with conn:
                    conn.settimeout(WAIT)
                    self._answer(conn)
                    if first:
                        assert self._close.wait(WAIT)
                        conn.close()
                        self.closed.set()
                        continue
                    while self._answer(conn):
                        pass

    def _answer(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return False
            data += piece
        # The tests send small bodies that arrive with the head.
        self.requests += 1
        conn.sendall(OK)
        return True

    @contextmanager
    def running(self) -> Iterator[ClosingServer]:
        self._thread.start()
        try:
            yield self
        finally:
            # Wake the thread's accept() or recv() in progress (close alone does not).
            for sock in (self._listener, self._current):
                if sock is not None:
                    with suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._thread.join(WAIT)
            assert not self._thread.is_alive()


async def test_a_connection_closed_while_the_loop_was_busy_is_not_reused() -> None:
    with ClosingServer().running() as server:
        async with fast(server.url) as invoker:
            with anyio.fail_after(WAIT):
                assert (await result_of(invoker, invocation())).ok
                # Blocks the event loop until the server has closed the pooled connection:
                # no loop turn sees the FIN before the next call checks the connection out.
                server.close_idle()
                result = await result_of(invoker, invocation())
    assert result.ok, result.error
    assert result.attempts == 1
    assert server.connections == 2
    assert server.requests == 2  # the second request went only on the new connection


@pytest.mark.parametrize("key", ["Idempotency-Key", "x-idempotency-key"])
async def test_an_idempotent_request_is_resent_when_a_pooled_connection_closes_unanswered(
    key: str,
) -> None:
    requests: list[tuple[int, bytes]] = []

    async def drop_the_second(peer: Peer) -> None:
        # Connection 1 answers one request, then reads the next and closes unanswered (as a
        # server closing an idle connection just as the request arrives); others answer.
        while (request := await peer.request()) is not None:
            requests.append((peer.index, request))
            if peer.index == 1 and len(requests) == 2:
                return
            await peer.send(OK)

    call = keyed(key, "order-7")
    async with raw_server(drop_the_second) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, call)).ok
            result = await result_of(invoker, call)
    assert result.ok, result.error
    assert result.attempts == 1  # one attempt of the retry policy; the pool resent it
    assert [index for index, _ in requests] == [1, 1, 2]
    assert requests[1][1] == requests[2][1]  # the same request, key included
    assert f"{key}: order-7".encode() in requests[2][1]


async def test_an_idempotent_request_is_not_resent_from_a_new_connection() -> None:
    """The resend covers a pooled connection only: a new connection that closes unanswered
    says something about the server, not about an idle timeout."""
    requests: list[bytes] = []

    async def drop(peer: Peer) -> None:
        requests.append(await peer.request() or b"")

    call = keyed("Idempotency-Key", "order-8")
    async with raw_server(drop) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, call)
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert server.connections == 1
    assert len(requests) == 1


async def test_an_idempotent_request_is_resent_once_only() -> None:
    requests: list[int] = []

    async def drop_after_the_first(peer: Peer) -> None:
        while await peer.request() is not None:
            requests.append(peer.index)
            if len(requests) > 1:
                return  # every later request: read, then the connection closes unanswered
            await peer.send(OK)

    call = keyed("Idempotency-Key", "order-9")
    async with raw_server(drop_after_the_first) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, call)).ok
            result = await result_of(invoker, call)
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert requests == [1, 1, 2]  # sent on the pooled connection, then once on a new one
