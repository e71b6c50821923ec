"""A results subscriber that cannot keep up holds invocations back; nothing is lost or doubled."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import anyio
import anyio.abc

from aioconnector import AsyncController, ResultStream
from aioconnector.testing import FakeGateway

Connect = Callable[..., AsyncController]

MESSAGES = 150
BUFFER = 4
SLOTS = 8


async def test_slow_subscriber_holds_invocations_back(connect: Connect) -> None:
    gw = FakeGateway()
    gw.add_function("echo", topics="t")
    received: Counter[object] = Counter()
    submitted = 0
    worst = {"requests_ahead": 0, "submitted_ahead": 0, "in_flight": 0}

    async def lagging_reader(
        stream: ResultStream, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        task_status.started()
        async with stream:
            async for result in stream:
                assert result.ok, result.error
                received[result.context] += 1
                done = received.total()
                # Everything requested but not yet read holds a slot or sits in the buffer.
                worst["requests_ahead"] = max(worst["requests_ahead"], len(gw.invocations()) - done)
                worst["submitted_ahead"] = max(worst["submitted_ahead"], submitted - done)
                worst["in_flight"] = max(worst["in_flight"], controller.stats().in_flight)
                await anyio.sleep(0.005)  # the slow part

    with anyio.fail_after(45):
        async with (
            gw.serve() as url,
            anyio.create_task_group() as tg,
            connect(
                url, result_buffer=BUFFER, max_concurrency=SLOTS, drain_timeout=30
            ) as controller,
        ):
            await tg.start(lagging_reader, controller.results())
            for i in range(MESSAGES):
                assert await controller.submit("t", str(i), context=i) == 1
                submitted += 1
            # Leaving drains the submitted work, then ends the stream: the reader finishes.
    bound = BUFFER + SLOTS
    assert worst["requests_ahead"] <= bound, worst
    assert worst["submitted_ahead"] <= bound, worst
    assert worst["in_flight"] <= SLOTS, worst
    assert gw.peak_in_flight <= SLOTS
    # The reader really lagged: the bound was reached, so the limit above was exercised.
    assert worst["submitted_ahead"] >= BUFFER, worst
    # In the end every result arrived, exactly once.
    assert received == Counter(range(MESSAGES))
    assert len(gw.invocations()) == MESSAGES
