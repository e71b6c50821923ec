"""run_source: bounded in-flight messages, one settlement each, graceful stop."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import anyio
import attrs
import pytest

from aioconnector import (
    InvocationResult,
    RetryPolicy,
    Settlement,
    SourceMessage,
    run_source,
    settlement_of,
)
from aioconnector.testing import FakeResponse, RecordedRequest

from .helpers import Wire


@attrs.frozen
class Msg:
    id: int
    topic: str
    body: bytes = b"{}"


def convert(msg: Msg) -> SourceMessage:
    return SourceMessage(topic=msg.topic, body=msg.body, message_id=str(msg.id))


@attrs.define
class Settled:
    verdicts: dict[int, Settlement] = attrs.Factory(dict)
    counts: dict[int, int] = attrs.Factory(dict)

    async def __call__(
        self, msg: Msg, verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        self.verdicts[msg.id] = verdict
        self.counts[msg.id] = self.counts.get(msg.id, 0) + 1
        assert all(r.context is msg for r in results)


async def listed(items: Sequence[Msg]) -> AsyncIterator[Msg]:
    for item in items:
        yield item


def test_settlement_of() -> None:
    ok = InvocationResult(topic="t", function="f", status=200)
    bad = InvocationResult(topic="t", function="g", status=500)
    assert settlement_of(()) is Settlement.UNMATCHED
    assert settlement_of((ok, ok)) is Settlement.ACK
    assert settlement_of((ok, bad)) is Settlement.RETRY


async def test_every_message_is_settled_once_with_the_right_verdict(wire: Wire) -> None:
    wire.gateway.add_function("good", topics="orders,mixed")
    wire.gateway.add_function("bad", topics="mixed")
    wire.gateway.set_fault("bad", status=500)
    items = [
        Msg(0, "orders"),
        Msg(1, "mixed"),
        Msg(2, "nobody"),
        Msg(3, "bad\ntopic"),
        Msg(4, "orders"),
    ]
    settled = Settled()
    async with wire.controller(retry=RetryPolicy.disabled()) as ctrl:
        with anyio.fail_after(10):
            stats = await run_source(ctrl, listed(items), convert=convert, settle=settled)
    assert settled.verdicts == {
        0: Settlement.ACK,
        1: Settlement.RETRY,
        2: Settlement.UNMATCHED,
        3: Settlement.INVALID,
        4: Settlement.ACK,
    }
    assert set(settled.counts.values()) == {1}
    assert stats.received == 5
    assert stats.unsettled == 0
    assert stats.settled[Settlement.ACK] == 2
    ids = sorted(r.headers["x-message-id"] for r in wire.gateway.invocations())
    assert ids == ["0", "1", "1", "4"]


async def test_a_function_deployed_since_the_last_refresh_is_not_missed(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled = Settled()
    async with wire.controller() as ctrl:
        wire.gateway.add_function("new", topics="fresh")  # after the controller's first map
        await anyio.sleep(0.01)
        # The map is younger than the refresh-on-miss threshold: unmatched, no refresh.
        await run_source(ctrl, listed([Msg(1, "fresh")]), convert=convert, settle=settled)
        assert settled.verdicts[1] is Settlement.UNMATCHED
        assert ctrl.stats().refreshes == 1
        # An older map is refreshed before a message is settled as unmatched.
        monkeypatch.setattr("aioconnector._source._MISS_REFRESH_AFTER", timedelta(0))
        await run_source(ctrl, listed([Msg(2, "fresh")]), convert=convert, settle=settled)
        assert settled.verdicts[2] is Settlement.ACK
        assert ctrl.stats().refreshes == 2
    assert [r.headers["x-message-id"] for r in wire.gateway.invocations()] == ["2"]


async def test_an_explicit_message_id_header_is_kept(wire: Wire) -> None:
    wire.gateway.add_function("good", topics="t")

    def with_header(msg: Msg) -> SourceMessage:
        return SourceMessage(topic="t", body=b"", headers={"x-message-id": "mine"}, message_id="7")

    async with wire.controller() as ctrl:
        await run_source(ctrl, listed([Msg(7, "t")]), convert=with_header, settle=Settled())
    (request,) = wire.gateway.invocations()
    assert request.headers.get_list("x-message-id") == ["mine"]


async def test_in_flight_messages_are_bounded(wire: Wire) -> None:
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.set_fault("slow", latency=0.05)
    fetched: list[float] = []

    async def source() -> AsyncIterator[Msg]:
        for i in range(12):
            fetched.append(anyio.current_time())
            yield Msg(i, "t")

    settled = Settled()
    async with wire.controller(max_concurrency=10) as ctrl:
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl, source(), convert=convert, settle=settled, max_in_flight=3
            )
    assert stats.settled[Settlement.ACK] == 12
    assert wire.gateway.peak_in_flight == 3


async def test_stop_finishes_what_is_in_flight_and_fetches_no_more(wire: Wire) -> None:
    stop = anyio.Event()
    release = anyio.Event()

    async def held(request: RecordedRequest) -> FakeResponse:
        await release.wait()  # none can finish, and free a worker, before the feed stopped
        return FakeResponse(body=request.body)

    wire.gateway.add_function("slow", topics="t", handler=held)
    finalized = anyio.Event()
    fetched = 0

    async def endless() -> AsyncIterator[Msg]:
        nonlocal fetched
        try:
            while True:
                fetched += 1
                yield Msg(fetched, "t")
        finally:
            finalized.set()

    settled = Settled()
    async with wire.controller() as ctrl, anyio.create_task_group() as tg:

        async def stop_soon() -> None:  # once the four workers' invocations are in
            while len(wire.gateway.invocations()) < 4:
                await anyio.sleep(0.005)
            stop.set()
            await finalized.wait()  # the feed has stopped: the fifth message stays unsent
            release.set()

        tg.start_soon(stop_soon)
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl, endless(), convert=convert, settle=settled, max_in_flight=4, stop=stop
            )
    assert finalized.is_set()
    assert stats.received == fetched
    assert stats.settled[Settlement.ACK] == 4  # the four in flight finished and were settled
    assert stats.unsettled == fetched - 4  # at most the one waiting for a worker
    assert stats.unsettled <= 1
    assert len(wire.gateway.invocations()) == 4


async def test_stop_after_drain_timeout_leaves_messages_unsettled(wire: Wire) -> None:
    wire.gateway.add_function("stuck", topics="t")
    wire.gateway.set_fault("stuck", latency=30)
    stop = anyio.Event()
    settled = Settled()

    async def endless() -> AsyncIterator[Msg]:
        for i in range(1000):
            yield Msg(i, "t")

    async with wire.controller(drain_timeout=0.1) as ctrl, anyio.create_task_group() as tg:
        tg.start_soon(lambda: _set_later(stop, 0.1))
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl,
                endless(),
                convert=convert,
                settle=settled,
                max_in_flight=2,
                stop=stop,
                drain_timeout=0.2,
            )
    assert settled.verdicts == {}
    assert stats.unsettled == stats.received
    assert stats.received in (2, 3)


async def test_unsettled_messages_are_released_at_stop(wire: Wire) -> None:
    wire.gateway.add_function("stuck", topics="t")
    wire.gateway.set_fault("stuck", latency=30)
    stop = anyio.Event()
    released: list[int] = []

    async def release(msg: Msg) -> None:
        released.append(msg.id)

    async def endless() -> AsyncIterator[Msg]:
        for i in range(1000):
            yield Msg(i, "t")

    async with wire.controller(drain_timeout=0.1) as ctrl, anyio.create_task_group() as tg:
        tg.start_soon(_set_later, stop, 0.1)
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl,
                endless(),
                convert=convert,
                settle=Settled(),
                max_in_flight=2,
                stop=stop,
                drain_timeout=0.2,
                release=release,
            )
    assert sorted(released) == list(range(stats.received))
    assert stats.unsettled == stats.received


async def test_started_with_task_status_reports_ready(wire: Wire) -> None:
    wire.gateway.add_function("f", topics="t")
    stop = anyio.Event()
    send, receive = anyio.create_memory_object_stream[Msg](10)
    settled = Settled()

    async def source() -> AsyncIterator[Msg]:
        async with receive:
            async for msg in receive:
                yield msg

    async with wire.controller() as ctrl, anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: run_source(
                ctrl, source(), convert=convert, settle=settled, stop=stop, task_status=task_status
            )
        )
        async with send:
            await send.send(Msg(1, "t"))
            with anyio.fail_after(5):
                while 1 not in settled.verdicts:
                    await anyio.sleep(0.01)
        stop.set()
    assert settled.verdicts == {1: Settlement.ACK}


async def _set_later(event: anyio.Event, delay: float) -> None:
    await anyio.sleep(delay)
    event.set()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")
async def test_a_stop_signal_stops_the_run(wire: Wire) -> None:
    wire.gateway.add_function("f", topics="t")

    async def endless() -> AsyncIterator[Msg]:
        i = 0
        while True:
            i += 1
            if i == 5:
                os.kill(os.getpid(), signal.SIGUSR1)
            yield Msg(i, "t")
            await anyio.sleep(0.01)

    async with wire.controller() as ctrl:
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl,
                endless(),
                convert=convert,
                settle=Settled(),
                stop_signals=(signal.SIGUSR1,),
            )
    assert stats.received >= 5
    assert stats.settled[Settlement.ACK] + stats.unsettled == stats.received


async def test_an_error_while_settling_propagates_as_itself(wire: Wire) -> None:
    wire.gateway.add_function("f", topics="t")

    async def broken(msg: Msg, verdict: Settlement, results: Sequence[InvocationResult]) -> None:
        raise ConnectionResetError("broker went away")

    async with wire.controller() as ctrl:
        with pytest.raises(ConnectionResetError, match="broker went away"):
            await run_source(ctrl, listed([Msg(1, "t")]), convert=convert, settle=broken)


async def test_bad_max_in_flight(wire: Wire) -> None:
    async with wire.controller() as ctrl:
        with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
            await run_source(ctrl, listed([]), convert=convert, settle=Settled(), max_in_flight=0)


async def test_a_stop_after_the_source_ended_still_bounds_the_drain(wire: Wire) -> None:
    wire.gateway.add_function("stuck", topics="t")
    wire.gateway.set_fault("stuck", latency=30)
    stop = anyio.Event()
    released: list[int] = []

    async def release(msg: Msg) -> None:
        released.append(msg.id)

    async with wire.controller(drain_timeout=0.1) as ctrl, anyio.create_task_group() as tg:
        # The source ends at once; the stop comes while its message is still being invoked.
        tg.start_soon(_set_later, stop, 0.1)
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl,
                listed([Msg(1, "t")]),
                convert=convert,
                settle=Settled(),
                stop=stop,
                drain_timeout=0.1,
                release=release,
            )
    assert (stats.received, stats.unsettled, released) == (1, 1, [1])


async def test_one_object_yielded_twice_while_in_flight_is_settled_twice(wire: Wire) -> None:
    """Messages are told apart by their taking, not by identity: a source may yield the same
    object again (an interned string, a cached record) while the first is in flight."""
    both_in = anyio.Event()
    arrived = 0

    async def hold_until_both_arrived(request: RecordedRequest) -> FakeResponse:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_in.set()
        await both_in.wait()
        return FakeResponse(body=request.body)

    wire.gateway.add_function("echo", topics="orders", handler=hold_until_both_arrived)
    message = Msg(7, "orders")
    settled: list[tuple[Msg, Settlement]] = []

    async def settle(msg: Msg, verdict: Settlement, _: Sequence[InvocationResult]) -> None:
        settled.append((msg, verdict))

    async with wire.controller() as ctrl:
        with anyio.fail_after(10):
            stats = await run_source(
                ctrl, listed([message, message]), convert=convert, settle=settle, max_in_flight=2
            )
    assert arrived == 2  # both were in flight at once
    assert settled == [(message, Settlement.ACK), (message, Settlement.ACK)]
    assert settled[0][0] is settled[1][0] is message
    assert (stats.received, stats.unsettled) == (2, 0)
    assert stats.settled[Settlement.ACK] == 2
