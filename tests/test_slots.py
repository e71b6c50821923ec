"""Slots: the controller's concurrency bound. Free slots are taken at once, a call beyond
``total`` waits, waiters are served in arrival order, and no slot is lost to a cancellation."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import pytest
from anyio.lowlevel import checkpoint

from aioconnector._slots import Slots

WAIT = 10  # seconds: the bound on every wait in these tests


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT):
        while not condition():
            await anyio.sleep(0.001)


def waiting(slots: Slots) -> int:
    """How many calls are queued for a slot."""
    return len(slots._waiters)


async def queued(slots: Slots, count: int) -> None:
    """Wait until ``count`` calls are queued for a slot."""
    await wait_until(lambda: waiting(slots) == count)


async def test_free_slots_are_taken_without_waiting() -> None:
    slots = Slots(3)
    # Free slots cost no checkpoint: even inside a cancelled scope they are taken.
    with anyio.CancelScope() as scope:
        scope.cancel()
        for taken in range(1, 4):
            await slots.acquire()
            assert slots.borrowed == taken
    assert not scope.cancelled_caught
    assert slots.borrowed == slots.total == 3
    assert waiting(slots) == 0


async def test_a_call_beyond_total_waits_for_a_release() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    got = anyio.Event()

    async def third() -> None:
        await slots.acquire()
        assert slots.borrowed <= slots.total
        got.set()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(third)
            await queued(slots, 1)
            await anyio.sleep(0.01)  # give the waiter turns: it must still be waiting
            assert not got.is_set()
            assert slots.borrowed == 2
            slots.release()
            await got.wait()
    assert slots.borrowed == 2  # the third call holds the released slot
    slots.release()
    slots.release()
    assert slots.borrowed == 0


async def test_a_waiting_call_is_cancellable() -> None:
    slots = Slots(1)
    await slots.acquire()
    with anyio.fail_after(WAIT), anyio.move_on_after(0.05) as scope:
        await slots.acquire()
    assert scope.cancelled_caught
    assert waiting(slots) == 0
    assert slots.borrowed == 1


@pytest.mark.parametrize("count", [2, 8])
async def test_waiters_are_served_first_come_first_served(count: int) -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[int] = []
    peak = 0

    async def waiter(index: int) -> None:
        nonlocal peak
        await slots.acquire()
        peak = max(peak, slots.borrowed)
        order.append(index)
        await checkpoint()  # hold the slot across a checkpoint
        slots.release()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for index in range(count):
                tg.start_soon(waiter, index)
                await queued(slots, index + 1)  # so they queue in this order
            slots.release()
    assert order == list(range(count))
    assert peak == 1
    assert slots.borrowed == 0
    assert waiting(slots) == 0


async def test_a_release_hands_the_slot_to_the_longest_waiter() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await slots.acquire()
        order.append(name)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first")
            await queued(slots, 1)
            slots.release()
            # Handed over: the slot is the waiter's before it even runs.
            assert slots.borrowed == 2
            assert waiting(slots) == 0
            # A newcomer arriving before the waiter resumes does not take its slot.
            tg.start_soon(waiter, "newcomer")
            await wait_until(lambda: order == ["first"])
            await queued(slots, 1)
            assert slots.borrowed == 2
            slots.release()
    assert order == ["first", "newcomer"]
    assert slots.borrowed == 2
    slots.release()
    slots.release()
    assert slots.borrowed == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []
    scopes = {name: anyio.CancelScope() for name in ("a", "b", "c")}

    async def waiter(name: str) -> None:
        with scopes[name]:
            await slots.acquire()
            order.append(name)
            slots.release()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for count, name in enumerate(scopes, 1):
                tg.start_soon(waiter, name)
                await queued(slots, count)
            scopes["b"].cancel()
            await queued(slots, 2)  # b is gone, a and c remain
            assert slots.borrowed == 1
            slots.release()
    assert order == ["a", "c"]
    assert not scopes["a"].cancelled_caught
    assert scopes["b"].cancelled_caught
    assert slots.borrowed == 0


async def test_the_only_waiter_cancelled_then_a_release_frees_the_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(slots.acquire)
            await queued(slots, 1)
            tg.cancel_scope.cancel()
    assert waiting(slots) == 0
    assert slots.borrowed == 1
    slots.release()  # nobody waits any more: the slot is free again
    assert slots.borrowed == 0
    await slots.acquire()  # and taken at once
    assert slots.borrowed == 1


@pytest.mark.parametrize("next_waiter", [True, False], ids=["to-next-waiter", "back-to-free"])
@pytest.mark.parametrize("order", ["cancel-then-release", "release-then-cancel"])
async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on(
    order: str, next_waiter: bool
) -> None:
    """The waiter's scope is cancelled in the same step as the release that hands it the slot.

    cancel-then-release: the waiter's wait is cancelled before it resumes, but its event is
    set (on both backends): acquire raises and must pass the slot on. release-then-cancel: the
    backend may let the waiter take the slot first; then the waiter releases it itself.
    Either way no slot is lost or counted twice."""
    slots = Slots(1)
    await slots.acquire()
    first = anyio.CancelScope()
    got: list[str] = []

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await slots.acquire()
            try:
                got.append(name)
                await anyio.sleep_forever()
            finally:
                slots.release()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first", first)
            await queued(slots, 1)
            second = anyio.CancelScope()
            if next_waiter:
                tg.start_soon(waiter, "second", second)
                await queued(slots, 2)
            if order == "cancel-then-release":
                first.cancel()
                slots.release()  # no checkpoint in between
            else:
                slots.release()
                first.cancel()
            if next_waiter:
                await wait_until(lambda: "second" in got)
                assert slots.borrowed == 1
                second.cancel()
            await wait_until(lambda: slots.borrowed == 0)
    assert first.cancelled_caught
    if order == "cancel-then-release":
        assert "first" not in got  # cancelled before it resumed: it never held the slot
    assert ("second" in got) is next_waiter
    assert slots.borrowed == 0
    assert waiting(slots) == 0
    await slots.acquire()  # nothing was lost: the slot is free
    assert slots.borrowed == 1


async def test_borrowed_never_exceeds_total_under_churn() -> None:
    slots = Slots(3)
    rng = random.Random(1234)
    holding = 0
    peak = 0
    done = 0

    async def worker(cancel_after: float | None) -> None:
        nonlocal holding, peak, done
        with anyio.move_on_after(cancel_after if cancel_after is not None else WAIT):
            for _ in range(20):
                await slots.acquire()
                try:
                    holding += 1
                    peak = max(peak, holding)
                    assert slots.borrowed <= slots.total
                    assert holding <= slots.borrowed
                    await checkpoint()
                finally:
                    holding -= 1
                    slots.release()
        done += 1

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                cancel_after = rng.choice([None, None, 0.0, 0.001, 0.002])
                tg.start_soon(worker, cancel_after)
    assert done == 30
    assert peak == 3
    assert holding == 0
    assert slots.borrowed == 0
    assert waiting(slots) == 0
