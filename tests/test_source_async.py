"""run_source(invoke_async=True): a message is settled once its functions' callbacks came.

The functions here "run for minutes": each blocks in the FakeGateway until the test lets it
finish, after the gateway answered 202. The queue-worker's callbacks reach the controller's
built-in receiver on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import anyio
import attrs
import pytest

from aioconnector import (
    InvocationResult,
    RetryPolicy,
    Settlement,
    SourceMessage,
    UpstreamStatusError,
    UpstreamTimeoutError,
    run_source,
)
from aioconnector.testing import FakeResponse, RecordedRequest

from .helpers import Wire

RECEIVER = {"callback_listen": "127.0.0.1:0", "drain_timeout": 0}


@attrs.frozen
class Msg:
    id: int
    topic: str


def convert(msg: Msg) -> SourceMessage:
    return SourceMessage(topic=msg.topic, body=b"{}", message_id=str(msg.id))


async def listed(items: Sequence[Msg]) -> AsyncIterator[Msg]:
    for item in items:
        yield item


@attrs.define
class Log:
    """What happened, in order: ``start N`` (a function began), ``settle N VERDICT``."""

    events: list[str] = attrs.Factory(list)
    results: dict[int, Sequence[InvocationResult]] = attrs.Factory(dict)
    released: list[int] = attrs.Factory(list)

    async def settle(
        self, msg: Msg, verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        self.events.append(f"settle {msg.id} {verdict.value}")
        self.results[msg.id] = results

    async def release(self, msg: Msg) -> None:
        self.released.append(msg.id)

    def started(self) -> list[str]:
        return [event for event in self.events if event.startswith("start")]


class LongRunning:
    """A function handler that runs until the test finishes it: ``await finish(message id)``."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._done: dict[str, anyio.Event] = {}

    def _event(self, message_id: str) -> anyio.Event:
        return self._done.setdefault(message_id, anyio.Event())

    async def __call__(self, request: RecordedRequest) -> FakeResponse:
        message_id = request.headers["x-message-id"]
        settled = sum(event.startswith("settle") for event in self._log.events)
        self._log.events.append(f"start {message_id} (settled before: {settled})")
        await self._event(message_id).wait()
        return FakeResponse(body=f"done {message_id}")

    def finish(self, message_id: int) -> None:
        self._event(str(message_id)).set()

    def finish_all(self) -> None:
        for event in self._done.values():
            event.set()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(10):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), f"still waiting for {what}"


async def test_each_message_is_settled_from_its_callbacks(wire: Wire) -> None:
    wire.gateway.add_function("good", topics="orders,mixed", handler=FakeResponse(body="ok"))
    wire.gateway.add_function("bad", topics="mixed", handler=FakeResponse(status=500))
    items = [Msg(0, "orders"), Msg(1, "mixed"), Msg(2, "nobody"), Msg(3, "bad\ntopic")]
    log = Log()
    async with wire.controller(retry=RetryPolicy.disabled(), **RECEIVER) as ctrl:
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl, listed(items), convert=convert, settle=log.settle, invoke_async=True
            )
        assert ctrl.callback_stats().accepted == 3
    assert sorted(log.events) == [
        "settle 0 ack",
        "settle 1 retry",
        "settle 2 unmatched",
        "settle 3 invalid",
    ]
    assert stats.unsettled == 0
    # The functions' own statuses and bodies, from their callbacks, not the 202s.
    (good,) = log.results[0]
    assert (good.function, good.status, good.body, good.ok) == (
        "good.openfaas-fn",
        200,
        b"ok",
        True,
    )
    bad, good_too = log.results[1]
    assert (bad.status, good_too.status) == (500, 200)
    assert isinstance(bad.error, UpstreamStatusError)
    calls = wire.gateway.invocations()
    assert all(call.is_async for call in calls)
    assert sorted(call.headers["x-message-id"] for call in calls) == ["0", "1", "1"]
    assert {r.call_id for r in (*log.results[0], *log.results[1])} == {
        call.headers["x-call-id"] for call in calls
    }


async def test_a_message_is_settled_only_after_its_function_finished(wire: Wire) -> None:
    log = Log()
    function = LongRunning(log)
    wire.gateway.add_function("report", topics="reports", handler=function)
    items = [Msg(n, "reports") for n in range(4)]
    async with wire.controller(**RECEIVER) as ctrl, anyio.create_task_group() as tg:
        stats: list[object] = []

        async def consume() -> None:
            stats.append(
                await run_source(
                    ctrl,
                    listed(items),
                    convert=convert,
                    settle=log.settle,
                    max_in_flight=2,
                    invoke_async=True,
                )
            )

        tg.start_soon(consume)
        await wait_for(lambda: len(log.started()) == 2, "two functions running")
        await anyio.sleep(0.1)  # room for a wrong third start; the right code never makes one
        # Accepted (202) and running for "minutes": nothing settled, no third message taken.
        assert len(log.started()) == 2
        assert ctrl.callback_stats().pending == 2
        assert not any(event.startswith("settle") for event in log.events)
        first = int(log.started()[0].split()[1])
        function.finish(first)
        await wait_for(lambda: f"settle {first} ack" in log.events, "the first settled")
        await wait_for(lambda: len(log.started()) == 3, "a third function started")
        for n in range(4):
            function.finish(n)
        await wait_for(lambda: bool(stats), "the source is done")
    assert sorted(e for e in log.events if e.startswith("settle")) == [
        f"settle {n} ack" for n in range(4)
    ]
    # At most two messages between fetch and settle: each start saw enough settled before it.
    for index, event in enumerate(log.started()):
        settled_before = int(event.rsplit(" ", 1)[1].rstrip(")"))
        assert settled_before >= index - 1, log.events
    # Each settled after its own function finished: the result carries its callback's body.
    for n in range(4):
        (result,) = log.results[n]
        assert result.body == f"done {n}".encode()


async def test_a_callback_that_never_comes_is_a_retry(wire: Wire) -> None:
    wire.gateway.add_function("lost", topics="t")
    wire.gateway.set_callbacks("lost", lose=True)
    log = Log()
    async with wire.controller(callback_timeout=0.2, **RECEIVER) as ctrl:
        with anyio.fail_after(10):
            await run_source(
                ctrl, listed([Msg(1, "t")]), convert=convert, settle=log.settle, invoke_async=True
            )
        assert ctrl.callback_stats().timed_out == 1
    assert log.events == ["settle 1 retry"]
    (result,) = log.results[1]
    assert isinstance(result.error, UpstreamTimeoutError)


async def test_a_refused_async_request_is_a_retry_at_once(wire: Wire) -> None:
    wire.gateway.add_function("full", topics="t")
    wire.gateway.set_fault("full", status=503)  # the gateway answers 503, not 202
    log = Log()
    async with wire.controller(retry=RetryPolicy.disabled(), **RECEIVER) as ctrl:
        with anyio.fail_after(10):
            await run_source(
                ctrl, listed([Msg(1, "t")]), convert=convert, settle=log.settle, invoke_async=True
            )
        assert ctrl.callback_stats().accepted == 0
    assert log.events == ["settle 1 retry"]
    assert [r.status for r in log.results[1]] == [503]


async def test_a_stop_leaves_messages_awaiting_callbacks_to_release(wire: Wire) -> None:
    log = Log()
    function = LongRunning(log)
    wire.gateway.add_function("report", topics="reports", handler=function)
    stop = anyio.Event()
    async with wire.controller(**RECEIVER) as ctrl:
        try:
            async with anyio.create_task_group() as tg:
                stats: list[object] = []

                async def consume() -> None:
                    stats.append(
                        await run_source(
                            ctrl,
                            listed([Msg(1, "reports")]),
                            convert=convert,
                            settle=log.settle,
                            stop=stop,
                            drain_timeout=0.1,
                            release=log.release,
                            invoke_async=True,
                        )
                    )

                tg.start_soon(consume)
                await wait_for(lambda: len(log.started()) == 1, "the function running")
                stop.set()
                await wait_for(lambda: bool(stats), "run_source returned")
        finally:
            function.finish_all()
    (result,) = stats
    assert getattr(result, "unsettled", None) == 1
    assert log.released == [1]
    assert not any(event.startswith("settle") for event in log.events)


async def test_without_a_receiver_it_fails_before_taking_a_message(wire: Wire) -> None:
    taken: list[Msg] = []

    async def source() -> AsyncIterator[Msg]:
        taken.append(Msg(1, "t"))
        yield taken[-1]

    log = Log()
    async with wire.controller() as ctrl:
        with pytest.raises(ValueError, match=r"invoke_async=True\) needs .* callback_listen"):
            await run_source(ctrl, source(), convert=convert, settle=log.settle, invoke_async=True)
    assert taken == []
    assert wire.gateway.invocations() == []
