"""Cancellation storms: callers give up on invocations at random moments."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from aioconnector import AsyncController
from aioconnector.testing import FakeGateway

Connect = Callable[..., AsyncController]

CALLERS = 60
SEEDS = [20240611]


@pytest.mark.parametrize("seed", SEEDS)
async def test_cancellation_storm_leaves_a_working_controller(connect: Connect, seed: int) -> None:
    rng = random.Random(seed)
    gw = FakeGateway()
    gw.add_function("quick", topics="t")
    gw.add_function("slow", topics="t")
    gw.add_function("slower", topics="t")
    gw.set_fault("slow", latency=0.1)
    gw.set_fault("slower", latency=0.25)
    outcomes = {"completed": 0, "cancelled": 0}

    async def caller(i: int, give_up_after: float | None) -> None:
        with anyio.move_on_after(give_up_after) as scope:
            results = await controller.invoke("t", str(i), context=i)
        if scope.cancelled_caught:
            outcomes["cancelled"] += 1
        else:
            outcomes["completed"] += 1
            assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
            assert {r.context for r in results} == {i}

    with anyio.fail_after(45):
        # Few slots: callers are cancelled while waiting for a slot, mid-request and while
        # their results are published to a reader that is itself slow.
        async with (
            gw.serve() as url,
            connect(url, max_concurrency=16, result_buffer=2) as controller,
            controller.results() as stream,
            anyio.create_task_group() as tg,
        ):

            async def slow_reader() -> None:
                async for _ in stream:
                    await anyio.sleep(0.002)

            tg.start_soon(slow_reader)
            # One caller in five waits as long as it takes: the others' cancellations must
            # not break what runs beside them.
            delays = [None if rng.random() < 0.2 else rng.uniform(0, 1.5) for _ in range(CALLERS)]
            async with anyio.create_task_group() as callers:
                for i, delay in enumerate(delays):
                    callers.start_soon(caller, i, delay)
                    if rng.random() < 0.3:
                        await anyio.lowlevel.checkpoint()
            assert controller.stats().in_flight == 0
            assert outcomes["completed"] + outcomes["cancelled"] == CALLERS
            assert outcomes["cancelled"] > 0, outcomes
            assert outcomes["completed"] >= delays.count(None) > 0, outcomes
            # The controller still works after the storm.
            gw.clear_fault("slower")
            fresh = await controller.invoke("t", b"after the storm")
            assert [r.ok for r in fresh] == [True, True, True]
            assert [r.body for r in fresh] == [b"after the storm"] * 3
            assert controller.stats().in_flight == 0
            tg.cancel_scope.cancel()  # stop the reader
        # It exits cleanly: no error, nothing left running (warnings would fail the test).
    stats = controller.stats()
    assert stats.in_flight == 0
    assert stats.invocations_started >= stats.invocations_succeeded + stats.invocations_failed
