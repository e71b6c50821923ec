"""FastInvoker opens at most a few connections at once (`_CONNECTS_AT_ONCE`): the other calls
wait their turn, in order, within their own deadline, and an abort stops them. Ten thousand
connects at once left a third of the memory per call fragmented after they ended."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aioconnector._errors import InvocationCancelledError, UpstreamTimeoutError
from aioconnector._fastpath import _invoker as invoker_module
from aioconnector._fastpath._wire import Wire
from aioconnector._results import InvocationResult
from aioconnector._runtime import AsyncioRuntime, Runtime, TrioRuntime

from .test_fastpath import OK, WAIT, answering, fast, invocation, raw_server, wait_until

AT_ONCE = 2


class Gate:
    """Holds every connect until opened, counting how many are held at the same time."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.held = 0
        self.peak = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(invoker_module, "_CONNECTS_AT_ONCE", AT_ONCE)
        gate = self
        for runtime in (AsyncioRuntime, TrioRuntime):
            real_connect = runtime.connect

            async def held_connect(self: Runtime, *args: Any, _real: Any = real_connect) -> Wire:
                gate.held += 1
                gate.peak = max(gate.peak, gate.held)
                try:
                    await gate.open.wait()
                    wire: Wire = await _real(self, *args)
                    return wire
                finally:
                    gate.held -= 1

            monkeypatch.setattr(runtime, "connect", held_connect)


async def test_calls_beyond_the_limit_wait_for_a_turn_then_all_succeed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    gate.install(monkeypatch)
    results: list[InvocationResult] = []
    async with raw_server(answering(OK)) as server, fast(server.url, max_concurrency=8) as invoker:

        async def call() -> None:
            results.append(await invoker.invoke(invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(call)
                await wait_until(lambda: len(invoker._connect_turns._waiters) == 5 - AT_ONCE)
                assert gate.held == AT_ONCE  # the others have not begun connecting
                gate.open.set()
    assert [result.ok for result in results] == [True] * 5
    assert gate.peak == AT_ONCE
    assert server.connections == 5


async def test_a_call_waiting_for_its_turn_times_out_within_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()  # never opened: the first two connects hang until their deadline
    gate.install(monkeypatch)
    async with fast("http://127.0.0.1:1", max_concurrency=8, upstream_timeout=0.2) as invoker:
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                results: list[InvocationResult] = []

                async def call() -> None:
                    results.append(await invoker.invoke(invocation()))

                for _ in range(AT_ONCE + 1):
                    tg.start_soon(call)
    assert len(results) == AT_ONCE + 1
    assert all(isinstance(result.error, UpstreamTimeoutError) for result in results)
    assert gate.peak == AT_ONCE  # the third never began to connect
    assert not invoker._connect_turns._waiters
    assert invoker._connect_turns.borrowed == 0


async def test_abort_stops_the_calls_waiting_for_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    gate.install(monkeypatch)
    results: list[InvocationResult] = []
    async with fast("http://127.0.0.1:1", max_concurrency=8, upstream_timeout=60) as invoker:

        async def call() -> None:
            results.append(await invoker.invoke(invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(call)
                await wait_until(lambda: len(invoker._connect_turns._waiters) == 4 - AT_ONCE)
                invoker.abort()
    assert [isinstance(result.error, InvocationCancelledError) for result in results] == [True] * 4
    assert gate.peak == AT_ONCE
    assert invoker._connect_turns.borrowed == 0
