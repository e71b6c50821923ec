"""WaiterQueue: first come first served, and a turn given to a task cancelled before it
resumed is passed on (``lost_turn``), never lost; a task cancelled while waiting leaves."""

from __future__ import annotations

import anyio

from aioconnector._waiters import WaiterQueue

WAIT = 10  # seconds: the bound on every wait in these tests


async def queued(queue: WaiterQueue, count: int) -> None:
    with anyio.fail_after(WAIT):
        while len(queue) != count:
            await anyio.sleep(0.001)


async def test_tasks_are_woken_in_the_order_they_came() -> None:
    queue = WaiterQueue(lost_turn=lambda: None)
    order: list[int] = []

    async def waiter(index: int) -> None:
        await queue.wait()
        order.append(index)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(waiter, index)
                await queued(queue, index + 1)
            for woken in range(1, 5):
                queue.wake()
                while len(order) < woken:  # one at a time: trio shuffles what runs together
                    await anyio.sleep(0.001)
    assert order == [0, 1, 2, 3]
    assert len(queue) == 0


async def test_a_turn_given_then_cancelled_is_passed_on() -> None:
    lost: list[str] = []
    queue = WaiterQueue(lost_turn=lambda: lost.append("turn"))
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.wait)
            await queued(queue, 1)
            tg.cancel_scope.cancel()  # the waiting task is cancelled, and before it resumes...
            queue.wake()  # ...it is given its turn: it must pass the turn on
    assert lost == ["turn"]
    assert len(queue) == 0


async def test_a_task_cancelled_while_waiting_leaves_the_queue() -> None:
    lost: list[str] = []
    queue = WaiterQueue(lost_turn=lambda: lost.append("turn"))
    with anyio.fail_after(WAIT), anyio.move_on_after(0.01) as scope:
        await queue.wait()
    assert scope.cancelled_caught
    assert len(queue) == 0
    assert lost == []  # no turn was given: none to pass on
