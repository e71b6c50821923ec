"""Shutdown with a hundred and more invocations in flight: one result each, none lost or doubled.

150 messages x 2 functions (not the 300 of the brief): on a shared 2-core machine each real
loopback invocation costs several milliseconds of CPU, and 300 invocations already put more than
a hundred in flight at shutdown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import anyio
import anyio.abc

from aioconnector import AsyncController, InvocationCancelledError, InvocationResult, ResultStream
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

Connect = Callable[..., AsyncController]

MESSAGES = 150
FUNCTIONS = ("alpha.openfaas-fn", "beta.openfaas-fn")
DRAIN = 2.0


def is_stuck(message: int) -> bool:
    """Every third message hangs in both functions, far past drain_timeout."""
    return message % 3 == 0


async def handler(request: RecordedRequest) -> FakeResponse:
    message = int(request.body)
    await anyio.sleep(60 if is_stuck(message) else 0.05 + (message % 7) * 0.02)
    return FakeResponse(body=request.body)


async def test_shutdown_gives_exactly_one_result_per_invocation(connect: Connect) -> None:
    gw = FakeGateway()
    gw.add_function("alpha", topics="t", handler=handler)
    gw.add_function("beta", topics="t", handler=handler)
    results: list[InvocationResult] = []

    async def collect(stream: ResultStream, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        async with stream:
            results.extend([result async for result in stream])

    with anyio.fail_after(50):
        async with (
            gw.serve() as url,
            anyio.create_task_group() as tg,
            # Enough slots for every hanging invocation (100) and some of the others.
            connect(url, max_concurrency=128, drain_timeout=DRAIN) as controller,
        ):
            await tg.start(collect, controller.results())
            for i in range(MESSAGES):
                assert await controller.submit("t", str(i), context=i) == 2
            assert controller.stats().in_flight > 100  # hundreds in flight at shutdown
            # Leaving drains for DRAIN seconds, then cancels what is still running.
    stats = controller.stats()

    counts = Counter((r.context, r.function) for r in results)
    expected = {(i, f) for i in range(MESSAGES) for f in FUNCTIONS}
    assert set(counts) == expected  # none lost
    assert set(counts.values()) == {1}  # none doubled
    for result in results:
        assert isinstance(result.context, int)
        if is_stuck(result.context):
            assert isinstance(result.error, InvocationCancelledError), result
            assert result.status is None
            assert result.function in str(result.error)
        else:  # finished within the drain: the real answer
            assert result.ok, result.error
            assert result.body == str(result.context).encode()
    cancelled = sum(isinstance(r.error, InvocationCancelledError) for r in results)
    assert cancelled == 2 * len([i for i in range(MESSAGES) if is_stuck(i)])
    assert stats.in_flight == 0
    assert stats.invocations_started == 2 * MESSAGES
    assert stats.invocations_succeeded + stats.invocations_failed == 2 * MESSAGES
    assert stats.invocations_failed == cancelled
