"""Invoker.abort(): the controller's shutdown stops every invocation in progress, and every later
one, through one call. Each stopped invocation returns a cancelled result
(`InvocationCancelledError`), promptly, and leaves no connection open; an invocation after the
abort never reaches the gateway. FastInvoker and HttpxInvoker."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from aioconnector import ControllerConfig
from aioconnector._errors import InvocationCancelledError, UpstreamTimeoutError
from aioconnector._fastpath import FastInvoker
from aioconnector._fastpath._wire import Wire
from aioconnector._http import open_client
from aioconnector._invoke import HttpxInvoker, Invoker
from aioconnector._results import InvocationResult
from aioconnector._runtime import AsyncioRuntime, Runtime, TrioRuntime

from .test_fastpath import OK, WAIT, Peer, fast, invocation, raw_server, wait_until


def cancelled(result: InvocationResult) -> bool:
    """Whether ``result`` is what an aborted call returns: no answer, InvocationCancelledError."""
    return (
        result.status is None
        and isinstance(result.error, InvocationCancelledError)
        and not result.ok
        and result.attempts == 1
    )


PROC_NET_TCP = Path("/proc/net/tcp")  # Linux: this host's IPv4 TCP sockets and their states
LINUX_TCP_TABLE = PROC_NET_TCP.exists()
# Seconds: "at once". Far below the default upstream_timeout of 30 s, far above the
# milliseconds it takes, so a loaded machine does not fail it.
PROMPT = 5.0


@pytest.fixture(params=["fast", "httpx"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def invoker_for(kind: str, url: str, **config: Any) -> AsyncIterator[Invoker]:
    """A FastInvoker, or an HttpxInvoker on the client the controller would build."""
    if kind == "fast":
        async with fast(url, **config) as invoker:
            yield invoker
        return
    settings = ControllerConfig(gateway_url=url, **config)
    async with open_client(settings, None) as client:
        slow = HttpxInvoker(client, settings)
        try:
            yield slow
        finally:
            await slow.aclose()


@attrs.define(eq=False)
class Hanging:
    """A raw-server handler that reads one request per connection and never answers."""

    requests: list[bytes] = attrs.field(factory=list)
    closed_by_client: int = 0
    """Connections the client closed (the server saw EOF or a reset)."""

    async def __call__(self, peer: Peer) -> None:
        request = await peer.request()
        if request is None:
            return
        self.requests.append(request)
        await peer.wait_closed()
        self.closed_by_client += 1


@attrs.define(eq=False)
class Answering:
    """A raw-server handler that answers every request with 200 and records it."""

    requests: list[bytes] = attrs.field(factory=list)

    async def __call__(self, peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            self.requests.append(request)
            await peer.send(OK)


async def abort_when(
    invoker: Invoker, calls: int, ready: Callable[[], bool]
) -> tuple[list[InvocationResult], float]:
    """Start ``calls`` invocations, abort once ``ready()``; their results, and how long they
    took to return after the abort (seconds)."""
    results: list[InvocationResult] = []

    async def call() -> None:
        results.append(await invoker.invoke(invocation()))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(call)
            await wait_until(ready)
            aborted_at = anyio.current_time()
            invoker.abort()
    return results, anyio.current_time() - aborted_at


# -- an invocation in progress -------------------------------------------------------------------


async def test_abort_stops_an_invoke_in_progress(kind: str) -> None:
    hanging = Hanging()
    async with raw_server(hanging) as server, invoker_for(kind, server.url) as invoker:
        # Aborted once the server has the request.
        results, returned_after = await abort_when(invoker, 1, lambda: len(hanging.requests) == 1)
        with anyio.fail_after(WAIT):
            await wait_until(lambda: hanging.closed_by_client == 1)  # its connection closed
    assert [cancelled(r) for r in results] == [True]
    assert returned_after < PROMPT
    assert server.connections == 1


async def test_abort_stops_every_invoke_in_progress(kind: str) -> None:
    hanging = Hanging()
    async with raw_server(hanging) as server, invoker_for(kind, server.url) as invoker:
        results, returned_after = await abort_when(invoker, 3, lambda: len(hanging.requests) == 3)
        with anyio.fail_after(WAIT):
            await wait_until(lambda: hanging.closed_by_client == 3)
    assert [cancelled(r) for r in results] == [True, True, True]
    assert returned_after < PROMPT
    assert server.connections == 3


async def test_abort_while_the_response_body_is_arriving(kind: str) -> None:
    """The head arrived, the body stalls: the abort still ends the call, cancelled."""
    headed = anyio.Event()
    released = anyio.Event()

    async def half(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        headed.set()
        await peer.wait_closed()
        released.set()

    async with raw_server(half) as server, invoker_for(kind, server.url) as invoker:
        results: list[InvocationResult] = []

        async def call() -> None:
            results.append(await invoker.invoke(invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await headed.wait()
                await anyio.sleep(0.05)  # loop turns: the client reads the head and "half"
                invoker.abort()
            await released.wait()  # the server saw its connection close
    assert [cancelled(r) for r in results] == [True]
    assert server.connections == 1


# -- after the abort -----------------------------------------------------------------------------


@pytest.mark.parametrize("pooled", [False, True], ids=["no-connection", "pooled-connection"])
async def test_invoke_after_abort_does_not_contact_the_server(kind: str, pooled: bool) -> None:
    answering = Answering()
    async with raw_server(answering) as server, invoker_for(kind, server.url) as invoker:
        with anyio.fail_after(WAIT):
            if pooled:
                first = await invoker.invoke(invocation())
                assert first is not None
                assert first.ok
            invoker.abort()
            assert cancelled(await invoker.invoke(invocation()))
            assert cancelled(await invoker.invoke(invocation()))  # every later one, too
            await anyio.sleep(0.05)  # loop turns: a request sent would have arrived by now
    expected = 1 if pooled else 0
    assert server.connections == expected
    assert len(answering.requests) == expected


async def test_abort_is_idempotent(kind: str) -> None:
    answering = Answering()
    async with raw_server(answering) as server, invoker_for(kind, server.url) as invoker:
        invoker.abort()
        invoker.abort()
        with anyio.fail_after(WAIT):
            assert cancelled(await invoker.invoke(invocation()))
    assert server.connections == 0


# -- while connecting ----------------------------------------------------------------------------


def connecting_to(port: int) -> int:
    """How many sockets on this host are still connecting (SYN_SENT) to 127.0.0.1:port."""
    count = 0
    for line in PROC_NET_TCP.read_text().splitlines()[1:]:
        _, _local, remote, state = line.split()[:4]
        if remote == f"0100007F:{port:04X}" and state == "02":
            count += 1
    return count


@asynccontextmanager
async def never_accepting() -> AsyncIterator[int]:
    """A loopback port where a connect hangs: its listener's accept queue is full.

    Linux drops a SYN that finds the accept queue full (the client retries for minutes), and a
    backlog of 0 holds one connection, which this fills. /proc/net/tcp shows the client's socket
    in SYN_SENT meanwhile: how the tests know a call is connecting."""
    if not LINUX_TCP_TABLE:
        pytest.skip("needs Linux: a full accept queue, watched through /proc/net/tcp")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT):  # fills the queue
            with socket.socket() as probe:
                probe.settimeout(0.0)  # non-blocking
                probe.connect_ex(("127.0.0.1", port))
                with anyio.move_on_after(0.2) as waiting:
                    await anyio.wait_writable(probe)
            if not waiting.cancelled_caught:
                pytest.skip("this kernel completes connections beyond a full accept queue")
            assert connecting_to(port) == 0
            yield port


async def test_abort_while_connecting(kind: str) -> None:
    async with (
        never_accepting() as port,
        invoker_for(kind, f"http://127.0.0.1:{port}") as invoker,
    ):
        results, returned_after = await abort_when(invoker, 1, lambda: connecting_to(port) == 1)
        with anyio.fail_after(WAIT):
            await wait_until(lambda: connecting_to(port) == 0)  # the attempt was given up
    assert [cancelled(r) for r in results] == [True]
    assert returned_after < PROMPT


async def test_connect_past_the_deadline_times_out_promptly(kind: str) -> None:
    """The deadline covers connecting (on asyncio FastInvoker's sweep cancels the connect)."""
    async with (
        never_accepting() as port,
        invoker_for(kind, f"http://127.0.0.1:{port}", upstream_timeout=0.3) as invoker,
    ):
        with anyio.fail_after(WAIT):
            started = anyio.current_time()
            result = await invoker.invoke(invocation())
            took = anyio.current_time() - started
            await wait_until(lambda: connecting_to(port) == 0)  # the attempt was given up
    assert result is not None
    assert isinstance(result.error, UpstreamTimeoutError)
    assert 0.3 <= took < 0.3 + PROMPT


# -- FastInvoker: aborts that meet its pool between two steps --------------------------------------


async def test_fast_abort_as_the_connection_is_made_sends_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """abort() runs after the connect completed but before the invoking task resumed (the
    connect's wrappers below call it just before returning the new connection)."""
    hanging = Hanging()
    async with raw_server(hanging) as server, fast(server.url, upstream_timeout=1) as invoker:
        for runtime in (AsyncioRuntime, TrioRuntime):
            real_connect = runtime.connect

            async def connect_then_abort(
                self: Runtime, *args: Any, _real: Any = real_connect
            ) -> Wire:
                wire: Wire = await _real(self, *args)
                invoker.abort()
                return wire

            monkeypatch.setattr(runtime, "connect", connect_then_abort)
        with anyio.fail_after(WAIT):
            result = await invoker.invoke(invocation())
            await wait_until(lambda: server.closed == server.connections == 1)
    assert cancelled(result)
    assert hanging.requests == []


async def test_fast_abort_while_waiting_for_a_pooled_connection() -> None:
    """max_concurrency=1: the second call waits for the first one's connection. The abort
    stops both; the second must not take the freed place to connect and send its request."""
    hanging = Hanging()
    async with (
        raw_server(hanging) as server,
        fast(server.url, max_concurrency=1, upstream_timeout=1) as invoker,
    ):
        results: list[InvocationResult] = []

        async def call() -> None:
            results.append(await invoker.invoke(invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_until(lambda: len(hanging.requests) == 1)
                tg.start_soon(call)
                await wait_until(lambda: len(invoker._waiters) == 1)  # waits for the pool
                invoker.abort()
    assert [cancelled(r) for r in results] == [True, True]
    assert len(hanging.requests) == 1
    assert server.connections == 1


@pytest.mark.parametrize("others", [0, 1], ids=["alone", "with-another-waiter"])
async def test_fast_pool_waiter_cancelled_as_it_is_woken(others: int) -> None:
    """A call waiting for a pool connection is cancelled (abort() on trio, any cancel scope
    elsewhere) in the same step as a freed connection wakes it: it must pass its turn on to
    the next waiter, if there is one, and otherwise just leave."""
    invoker = FastInvoker(ControllerConfig(gateway_url="http://127.0.0.1:9"))  # never dialled
    first = anyio.CancelScope()
    woken: list[str] = []

    async def wait(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await invoker._wait_for_connection(math.inf)
            woken.append(name)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "first", first)
            await wait_until(lambda: len(invoker._waiters) == 1)
            if others:
                tg.start_soon(wait, "second", anyio.CancelScope())
                await wait_until(lambda: len(invoker._waiters) == 2)
            first.cancel()
            invoker._waiters.wake()  # a connection came free (as in _release, _drop): no checkpoint
    assert first.cancelled_caught
    assert woken == (["second"] if others else [])
    assert not invoker._waiters


async def test_fast_invoker_abort_keeps_the_pool_consistent() -> None:
    """After an abort the aborted connections are gone from the pool's counts, and aclose
    closes what is left."""
    hanging = Hanging()
    async with raw_server(hanging) as server:
        invoker = FastInvoker(ControllerConfig(gateway_url=server.url))
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(invoker.invoke, invocation())
                await wait_until(lambda: len(hanging.requests) == 2)
                invoker.abort()
            await invoker.aclose()
            await wait_until(lambda: hanging.closed_by_client == 2)
    assert invoker._open == 0
    assert not invoker._busy
    assert not invoker._idle
