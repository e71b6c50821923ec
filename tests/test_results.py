"""Results streams: a stream that stops reading holds invocations back, never the other streams."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from aioconnector import AsyncController, ControllerConfig, InvocationResult
from aioconnector.testing import FakeGateway

STUCK_WARNING = "a results stream has been full"
NOT_DELIVERED = "was not delivered"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="aioconnector")
    return caplog


def _controller() -> AsyncController:
    gateway = FakeGateway()
    gateway.add_function("echo", topics="t")
    config = ControllerConfig(
        gateway_url="http://gateway.test", result_buffer=2, max_concurrency=16, drain_timeout=0
    )
    controller = AsyncController(config, transport=gateway.transport())
    controller._hub._warn_after = 0.05  # instead of 5 s
    return controller


@pytest.fixture
async def controller() -> AsyncIterator[AsyncController]:
    async with _controller() as controller:
        yield controller


async def test_a_stuck_stream_delays_no_other_stream(
    controller: AsyncController, logs: pytest.LogCaptureFixture
) -> None:
    stuck = controller.results()  # subscribed first, never read
    reader = controller.results()
    async with stuck, reader, anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            for i in range(10):
                tg.start_soon(controller.invoke, "t", str(i))
                # Each result reaches the reader while the stuck stream holds earlier ones.
                assert (await reader.receive()).body == str(i).encode()
            # Backpressure still holds: 2 results in the stuck buffer, 8 invocations waiting.
            assert controller.stats().in_flight == 8
            assert controller.stats().streams_full == 1
            while STUCK_WARNING not in logs.text:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # four times the threshold: still one warning for the episode
        assert logs.text.count(STUCK_WARNING) == 1
        # It counts the invocations waiting when it fired: on a loaded machine the threshold
        # may pass before all eight have reached the full stream.
        waiting = re.search(r"(\d+) invocation\(s\) wait", logs.text)
        assert waiting is not None
        assert 1 <= int(waiting[1]) <= 8
        await stuck.aclose()  # unsubscribing lets the waiting invocations finish
        with anyio.fail_after(10):
            while controller.stats().in_flight:
                await anyio.sleep(0.01)
    assert controller.stats().streams_full == 0
    assert NOT_DELIVERED not in logs.text  # closed on purpose: nothing counts as lost


async def test_a_slow_stream_is_not_held_behind_a_stuck_one(controller: AsyncController) -> None:
    stuck = controller.results()  # subscribed first, never read
    slow = controller.results()
    async with stuck, slow, anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            for i in range(2):
                await controller.invoke("t", str(i))  # both buffers are full now
            for i in range(2, 4):
                tg.start_soon(controller.invoke, "t", str(i))
            while controller.stats().in_flight < 2:  # "2" and "3" wait on both streams
                await anyio.sleep(0.01)
            received = [(await slow.receive()).body for _ in range(4)]
            while controller.stats().streams_full > 1:
                await anyio.sleep(0.01)
        assert sorted(received) == [b"0", b"1", b"2", b"3"]
        assert controller.stats().in_flight == 2  # still held back by the stuck stream
        await stuck.aclose()


async def test_shutdown_loses_only_what_the_stuck_stream_did_not_read(
    logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aioconnector._drain._CANCEL_GRACE", 0.05)
    received: list[InvocationResult] = []

    async def read(controller: AsyncController, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with controller.results() as stream:
            task_status.started()
            async for result in stream:
                received.append(result)  # noqa: PERF401 (one by one: watched below)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg, _controller() as controller:
            stuck = controller.results()  # subscribed first, never read until the end
            await tg.start(read, controller)
            for i in range(6):
                assert await controller.submit("t", str(i)) == 1
            while len(received) < 6:
                await anyio.sleep(0.01)
            # Leaving now (drain_timeout=0) with the stuck stream still full.
    assert sorted(r.body for r in received) == [str(i).encode() for i in range(6)]
    assert logs.text.count(NOT_DELIVERED) == 4  # 6 minus the 2 the stuck stream buffered
    async with stuck:
        assert len([r async for r in stuck]) == 2


async def test_cancelled_invocation_leaves_the_full_stream_without_its_result(
    controller: AsyncController, logs: pytest.LogCaptureFixture
) -> None:
    stuck = controller.results()
    reader = controller.results()
    async with stuck, reader:
        with anyio.fail_after(10):
            for i in range(2):
                await controller.invoke("t", str(i))  # fills the stuck stream
                assert (await reader.receive()).body == str(i).encode()
            with anyio.move_on_after(0.1) as scope:
                await controller.invoke("t", b"2")  # waits on the stuck stream: cancelled
            assert scope.cancelled_caught
            assert (await reader.receive()).body == b"2"
        assert logs.text.count(NOT_DELIVERED) == 1
        assert "its invocation was cancelled" in logs.text
        assert controller.stats().in_flight == 0
        assert controller.stats().streams_full == 0
