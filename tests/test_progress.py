"""Submitted work always progresses: a message admitted by `submit` holds a concurrency slot
while it waits for a worker, so no worker may wait for a slot while such a message waits for it.

Each test builds the interleaving that once deadlocked, deliberately: with
``max_concurrency=1`` a second `submit` takes (or queues for) the only slot while the one
worker still needs a slot for the first message (its next function, or its retry).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from aioconnector import RetryPolicy
from aioconnector.testing import FakeResponse, RecordedRequest

from .helpers import Wire

WAIT = 10  # far beyond what these take; reached only if the controller is stuck


async def test_a_fan_out_finishes_while_later_messages_queue_for_its_slot(wire: Wire) -> None:
    wire.gateway.add_function("a", topics="two")
    wire.gateway.add_function("b", topics="two")
    wire.gateway.add_function("c", topics="one")
    async with wire.controller(max_concurrency=1) as controller, controller.results() as stream:
        with anyio.fail_after(WAIT):
            # No checkpoint between them: the second submit queues for the slot before the
            # worker started on the first message, so it is ahead of the fan-out's next slot.
            assert await controller.submit("two", b"1") == 2
            assert await controller.submit("one", b"2") == 1
            assert await controller.submit("two", b"3") == 2
            got = [(await stream.receive()) for _ in range(5)]
    assert sorted((r.function, r.body) for r in got) == [
        ("a.openfaas-fn", b"1"), ("a.openfaas-fn", b"3"),
        ("b.openfaas-fn", b"1"), ("b.openfaas-fn", b"3"),
        ("c.openfaas-fn", b"2"),
    ]  # fmt: skip
    assert all(r.ok for r in got)
    assert wire.gateway.peak_in_flight == 1


async def test_a_retry_finishes_while_a_later_message_holds_the_slot(wire: Wire) -> None:
    first_tries: list[bytes] = []

    def unavailable_once(request: RecordedRequest) -> FakeResponse:
        if request.body not in first_tries:
            first_tries.append(request.body)
            return FakeResponse(status=503, body="busy")
        return FakeResponse(body=request.body)

    wire.gateway.add_function("f", topics="t", handler=unavailable_once)
    retry = RetryPolicy(initial_delay=0.2, jitter=False)
    async with (
        wire.controller(max_concurrency=1, retry=retry) as controller,
        controller.results() as stream,
    ):
        with anyio.fail_after(WAIT):
            assert await controller.submit("t", b"1") == 1
            while controller.stats().retries == 0:  # the first message waits for its retry
                await anyio.sleep(0.01)
            # The slot is free during that wait: this message takes it, and waits for the
            # only worker, which will need the slot back for the retry.
            assert await controller.submit("t", b"2") == 1
            got = [(await stream.receive()) for _ in range(2)]
    assert sorted((r.body, r.attempts, r.ok) for r in got) == [(b"1", 2, True), (b"2", 2, True)]
