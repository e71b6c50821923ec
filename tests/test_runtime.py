"""The runtime seam: each event loop's task group, timer and events keep the same promises."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from aioconnector._runtime import current_runtime

WAIT = 10  # seconds: the bound on every wait in these tests


async def test_a_task_error_cancels_its_siblings_and_is_raised_as_itself() -> None:
    runtime = current_runtime()
    ended: list[str] = []

    async def sibling() -> None:
        try:
            await anyio.sleep(WAIT * 10)
        finally:
            ended.append("sibling")

    async def failing() -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("boom")

    async def group() -> None:
        async with runtime.task_group() as tasks:
            tasks.start_soon(sibling)
            tasks.start_soon(failing)

    with anyio.fail_after(WAIT), pytest.raises(ValueError, match="boom"):
        await group()
    assert ended == ["sibling"]  # cancelled and awaited before the error came out


async def test_leaving_waits_for_every_task_in_order_of_their_ends() -> None:
    runtime = current_runtime()
    done: list[int] = []
    gates = [anyio.Event() for _ in range(3)]

    async def task(index: int) -> None:
        await gates[index].wait()
        done.append(index)

    async def open_gates() -> None:
        for gate in reversed(gates):
            gate.set()
            while len(done) < 3 - gates.index(gate):
                await anyio.sleep(0.001)

    with anyio.fail_after(WAIT):
        async with runtime.task_group() as tasks:
            for index in range(3):
                tasks.start_soon(task, index)
            tasks.start_soon(open_gates)
    assert done == [2, 1, 0]


async def test_the_owners_cancellation_cancels_and_awaits_the_tasks() -> None:
    runtime = current_runtime()
    ended: list[str] = []
    started = anyio.Event()

    async def task() -> None:
        started.set()
        try:
            await anyio.sleep(WAIT * 10)
        finally:
            ended.append("task")

    with anyio.fail_after(WAIT):
        with anyio.CancelScope() as scope:
            async with runtime.task_group() as tasks:
                tasks.start_soon(task)
                await started.wait()
                scope.cancel()
                await anyio.sleep(WAIT * 10)  # cancelled here
        assert scope.cancelled_caught
    assert ended == ["task"]


async def test_call_later_calls_back_and_cancel_prevents_it() -> None:
    runtime = current_runtime()
    calls: list[str] = []
    called = anyio.Event()
    cancelled = runtime.call_later(0.01, lambda: calls.append("cancelled"))
    cancelled.cancel()

    def call() -> None:
        calls.append("called")
        called.set()

    runtime.call_later(0.02, call)
    with anyio.fail_after(WAIT):
        await called.wait()
        await anyio.sleep(0.05)  # past the cancelled one's time too
    assert calls == ["called"]


async def test_an_event_set_before_or_while_waiting_wakes_its_waiter() -> None:
    runtime = current_runtime()
    early = runtime.new_event()
    early.set()
    assert early.is_set()
    with anyio.fail_after(WAIT):
        await early.wait()  # already set: returns at once
        late = runtime.new_event()
        assert not late.is_set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(late.wait)
            await anyio.sleep(0.01)
            late.set()
    assert late.is_set()
