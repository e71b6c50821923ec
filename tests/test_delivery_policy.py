"""Per-function delivery policy through the controller, against FakeGateway on every wire
(in-process transport and httpx over loopback: HttpxInvoker; no transport: the fast path).

Requests are held in flight by handlers that wait for the test, never by sleeping; the only
clocks involved are the ones under test (timeouts, Retry-After), and results are asserted by
order and outcome.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import anyio
import pytest

from aioconnector import (
    AdaptiveConcurrency,
    AsyncController,
    InvocationCancelledError,
    InvocationResult,
    ResultStream,
    RetryBudget,
    RetryPolicy,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aioconnector.testing import FakeResponse, Latency, RecordedRequest

from .helpers import Wire

WAIT = 20  # seconds: the bound on every test's waits (a hang fails, never a slow machine)
NS = "openfaas-fn"


def addr(name: str) -> str:
    return f"{name}.{NS}"


class Held:
    """A handler that holds each request until the test releases it (oldest first)."""

    def __init__(self, *, hold: int | None = None) -> None:
        self.entered = 0
        self.bodies: list[bytes] = []
        self._hold = hold  # hold only the first `hold` requests; None: all
        self._passing = False
        self._held: deque[anyio.Event] = deque()

    async def __call__(self, request: RecordedRequest) -> FakeResponse:
        self.entered += 1
        self.bodies.append(request.body)
        if not self._passing and (self._hold is None or self.entered <= self._hold):
            event = anyio.Event()
            self._held.append(event)
            await event.wait()
        return FakeResponse(body=request.body)

    @property
    def held(self) -> int:
        return len(self._held)

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._held.popleft().set()

    def release_all(self) -> None:
        self._passing = True
        while self._held:
            self._held.popleft().set()


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (the test's fail_after bounds it)."""
    while not condition():
        await anyio.sleep(0.001)


async def collect(stream: ResultStream, into: list[InvocationResult]) -> None:
    async with stream:
        async for result in stream:
            into.append(result)  # noqa: PERF401 - one at a time: tests watch it grow


def lane(controller: AsyncController, name: str) -> tuple[float | None, int, int]:
    """(limit, in flight, waiting) of a function, as stats() shows it."""
    state = controller.stats().per_function.get(addr(name))
    if state is None:  # not invoked yet
        return None, 0, 0
    return state.limit, state.in_flight, state.waiting


# -- limits ----------------------------------------------------------------------------------


async def test_annotation_max_concurrency_is_enforced(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        held = Held()
        wire.gateway.add_function(
            "slow",
            topics="slow",
            handler=held,
            annotations={"com.aioconnector.max_concurrency": "3"},
        )
        results: list[InvocationResult] = []
        async with (
            anyio.create_task_group() as tg,
            wire.controller(max_concurrency=64) as controller,
        ):
            tg.start_soon(collect, controller.results(), results)
            for index in range(20):
                await controller.submit("slow", str(index).encode())
            await until(lambda: held.entered == 3 and lane(controller, "slow")[2] == 17)
            assert lane(controller, "slow") == (3, 3, 17)
            # The 17 waiting hold no slot: only those on the wire do.
            assert controller.stats().in_flight == 3
            held.release(1)  # one answered: exactly one more goes
            await until(lambda: held.entered == 4)
            assert lane(controller, "slow") == (3, 3, 16)
            held.release_all()
            await until(lambda: len(results) == 20)
            assert lane(controller, "slow") == (3, 0, 0)
        assert all(result.ok for result in results)
        assert sorted(int(result.body) for result in results) == list(range(20))
        stats = wire.gateway.function_stats("slow")
        assert (stats.requests, stats.peak_inflight) == (20, 3)


async def test_a_saturated_function_does_not_block_others(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        held = Held()
        wire.gateway.add_function(
            "slow",
            topics="slow",
            handler=held,
            annotations={"com.aioconnector.max_concurrency": "2"},
        )
        wire.gateway.add_function("fast", topics="fast")
        slow_results: list[InvocationResult] = []
        async with (
            anyio.create_task_group() as tg,
            wire.controller(max_concurrency=4) as controller,
        ):
            tg.start_soon(collect, controller.results(), slow_results)
            for index in range(10):  # far more than max_concurrency
                await controller.submit("slow", str(index).encode())
            await until(lambda: held.entered == 2 and lane(controller, "slow")[2] == 8)
            # slow holds 2 of the 4 slots; its 8 waiting hold none: fast flows.
            for index in range(20):
                (fast,) = await controller.invoke("fast", b"f%d" % index)
                assert fast.ok
            async with anyio.create_task_group() as burst:  # and concurrently, within 2 slots
                for index in range(8):
                    burst.start_soon(controller.invoke, "fast", b"b%d" % index)
            assert held.entered == 2  # slow still saturated the whole time
            assert wire.gateway.function_stats("fast").requests == 28
            held.release_all()
            await until(lambda: sum(r.function == addr("slow") for r in slow_results) == 10)
        assert all(result.ok for result in slow_results)


# -- the Retry-After gate --------------------------------------------------------------------


async def test_retry_after_gate_holds_the_function_while_others_flow(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        gw = wire.gateway
        gw.add_function("busy", topics="busy")
        gw.add_function("other", topics="other")
        gw.set_fault("busy", status=429, headers={"Retry-After": "1"}, times=1)
        async with wire.controller() as controller, anyio.create_task_group() as tg:
            got: dict[str, InvocationResult] = {}

            async def invoke(body: bytes) -> None:
                (got[body.decode()],) = await controller.invoke("busy", body)

            tg.start_soon(invoke, b"first")
            await until(lambda: addr("busy") in controller.stats().per_function)
            await until(lambda: controller.stats().per_function[addr("busy")].gate_closed_for > 0)
            tg.start_soon(invoke, b"second")  # while the gate is closed: waits for it
            await until(lambda: lane(controller, "busy")[2] >= 1)
            for index in range(5):  # others flow meanwhile
                (other,) = await controller.invoke("other", b"o%d" % index)
                assert other.ok
            assert len(gw.invocations("busy")) == 1  # nothing of busy went yet
        assert got["first"].ok
        assert got["first"].attempts == 2
        assert got["second"].ok
        assert got["second"].attempts == 1
        busy = gw.invocations("busy")
        assert len(busy) == 3
        # The gate (1 s, from the 429's answer) held both the retry and the other message.
        assert all(later.time - busy[0].time >= 0.9 for later in busy[1:])
        assert sorted(r.body for r in busy[1:]) == [b"first", b"second"]
        others = gw.invocations("other")
        assert all(busy[0].time <= o.time <= busy[1].time for o in others)
        assert controller.stats().per_function[addr("busy")].overloads == 1


async def test_a_refresh_keeps_what_each_routed_function_learnt(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        gw = wire.gateway
        gw.add_function("plain", topics="plain")  # no policy annotation
        gw.add_function("gone", topics="gone")
        adaptive = AdaptiveConcurrency(initial=2)
        async with wire.controller(
            adaptive_concurrency=adaptive, retry=RetryPolicy.disabled()
        ) as controller:
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(controller.invoke, "plain", b"x")
            await controller.invoke("gone", b"x")
            gw.set_fault("plain", status=429, headers={"Retry-After": "1"}, times=1)
            (refused,) = await controller.invoke("plain", b"x")  # not retried: the gate closes
            before = controller.stats().per_function[addr("plain")]
            assert before.gate_closed_for > 0
            gw.remove_function("gone")
            await controller.refresh()
            after = controller.stats().per_function
            assert addr("gone") not in after  # no longer routed: its lane went
            assert after[addr("plain")].limit == before.limit  # learnt, not reset to initial
            assert after[addr("plain")].overloads == 1
            assert after[addr("plain")].gate_closed_for > 0  # still closed
            (later,) = await controller.invoke("plain", b"later")
        assert refused.status == 429
        assert later.ok
        plain = gw.invocations("plain")
        assert plain[-1].time - plain[-2].time >= 0.9  # it waited for the gate, refresh or not


# -- the retry budget ------------------------------------------------------------------------


async def test_retry_budget_spent_returns_failures_at_once(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        wire.gateway.add_function("down", topics="down")
        wire.gateway.set_fault("down", status=503)  # every request, no Retry-After
        retry = RetryPolicy(attempts=5, initial_delay=0.001)
        budget = RetryBudget(ratio=0, minimum=2, window=3600)
        async with wire.controller(retry=retry, retry_budget=budget) as controller:
            results = [(await controller.invoke("down", b"%d" % i))[0] for i in range(5)]
            stats = controller.stats()
        assert [r.status for r in results] == [503] * 5
        assert all(isinstance(r.error, UpstreamStatusError) for r in results)
        # The first message retried twice (the minimum) and was then denied; the others at once.
        assert [r.attempts for r in results] == [3, 1, 1, 1, 1]
        assert len(wire.gateway.invocations("down")) == 7
        assert stats.retries == 2
        assert stats.invocations_failed == 5
        assert stats.per_function[addr("down")].denied_retries == 5
        assert stats.per_function[addr("down")].overloads == 7


async def test_retry_budget_is_per_function(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        wire.gateway.add_function("down", topics="down")
        wire.gateway.add_function("flaky", topics="flaky")
        wire.gateway.set_fault("down", status=503)
        retry = RetryPolicy(attempts=3, initial_delay=0.001)
        budget = RetryBudget(ratio=0, minimum=1, window=3600)
        async with wire.controller(retry=retry, retry_budget=budget) as controller:
            for index in range(3):
                await controller.invoke("down", b"%d" % index)
            wire.gateway.set_fault("flaky", status=502, times=1)
            (flaky,) = await controller.invoke("flaky", b"x")  # its own budget: retried
        assert flaky.ok
        assert flaky.attempts == 2


# -- policy from annotations ---------------------------------------------------------------


async def test_policy_for_reflects_annotations_and_falls_back_to_the_config(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        gw = wire.gateway
        annotations = {
            "com.openfaas.retry.attempts": "5",
            "com.openfaas.retry.codes": "429,500",
            "com.openfaas.retry.max_wait": "2s",
            "com.aioconnector.max_concurrency": "2",
            "com.aioconnector.timeout": "3s",
            "com.aioconnector.idempotent": "true",
        }
        gw.add_function("declared", topics="t", annotations=annotations)
        gw.add_function("plain", topics="t")
        retry = RetryPolicy(attempts=2)
        async with wire.controller(retry=retry, upstream_timeout=7.0) as controller:
            declared = controller.policy_for(addr("declared"))
            assert declared.retry.attempts == 5
            assert declared.retry.statuses == {429, 500}
            assert declared.retry.max_delay == 2.0
            assert declared.retry.retry_on_timeout is True
            assert (declared.max_concurrency, declared.timeout, declared.idempotent) == (
                2,
                3.0,
                True,
            )
            assert declared.annotations == annotations
            for fallback in (controller.policy_for(addr("plain")), controller.policy_for("nope.x")):
                assert fallback.retry == retry
                assert (fallback.max_concurrency, fallback.timeout) == (None, 7.0)
                assert fallback.idempotent is False
            with pytest.raises(TypeError, match="function"):
                controller.policy_for(None)  # type: ignore[arg-type]
            await controller.invoke("t", b"x")
            per_function = controller.stats().per_function
            assert per_function[addr("declared")].limit == 2
            assert per_function[addr("plain")].limit is None
            # Changed at the gateway: seen at the next refresh; removed: the config again.
            gw.add_function(
                "declared", topics="t", annotations={"com.openfaas.retry.attempts": "1"}
            )
            gw.add_function(
                "plain", topics="t", annotations={"com.aioconnector.max_concurrency": "9"}
            )
            await controller.refresh()
            assert controller.policy_for(addr("declared")).retry.attempts == 1
            assert controller.policy_for(addr("declared")).max_concurrency is None
            assert controller.policy_for(addr("plain")).max_concurrency == 9
            assert controller.stats().per_function[addr("plain")].limit == 9


def warnings_about(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and name in record.getMessage()
    ]


async def test_invalid_annotation_is_logged_once_per_change(
    wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(WAIT):
        caplog.set_level(logging.WARNING, logger="aioconnector")
        gw = wire.gateway
        gw.add_function("odd", topics="t", annotations={"com.aioconnector.max_concurrency": "zero"})
        async with wire.controller() as controller:
            assert len(warnings_about(caplog, "odd")) == 1
            await controller.refresh()
            await controller.refresh()
            assert len(warnings_about(caplog, "odd")) == 1  # the same problem: not again
            assert controller.policy_for(addr("odd")).max_concurrency is None  # the config's
            gw.add_function(
                "odd", topics="t", annotations={"com.aioconnector.max_concurrency": "-1"}
            )
            await controller.refresh()
            logged = warnings_about(caplog, "odd")
            assert len(logged) == 2  # changed: reported again
            assert "com.aioconnector.max_concurrency='-1'" in logged[1]
            assert "'zero'" in logged[0]
            gw.add_function(
                "odd", topics="t", annotations={"com.aioconnector.max_concurrency": "4"}
            )
            await controller.refresh()
            assert controller.policy_for(addr("odd")).max_concurrency == 4
            gw.add_function(
                "odd", topics="t", annotations={"com.aioconnector.max_concurrency": "-1"}
            )
            await controller.refresh()  # invalid again after a valid one: a change, reported
            assert len(warnings_about(caplog, "odd")) == 3
            (result,) = await controller.invoke("t", b"x")  # and the function is still invoked
            assert result.ok


# -- per-function timeouts -------------------------------------------------------------------


async def test_timeout_annotation_applies_to_its_function_only(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        stuck, patient = Held(), Held()
        wire.gateway.add_function(
            "stuck",
            topics="stuck",
            handler=stuck,
            annotations={"com.aioconnector.timeout": "200ms"},
        )
        wire.gateway.add_function("patient", topics="patient", handler=patient)
        async with wire.controller(upstream_timeout=60.0) as controller:
            async with anyio.create_task_group() as tg:
                got: list[InvocationResult] = []

                async def invoke_patient() -> None:
                    got.extend(await controller.invoke("patient", b"p"))

                tg.start_soon(invoke_patient)
                await until(lambda: patient.entered == 1)
                (timed_out,) = await controller.invoke("stuck", b"s")  # 0.2 s, patient in flight
                assert got == []
                patient.release()
            stuck.release_all()
        assert isinstance(timed_out.error, UpstreamTimeoutError)
        assert "200ms" not in str(timed_out.error)  # the seconds, as upstream_timeout's are
        assert "0.2" in str(timed_out.error)
        assert got[0].ok
        assert got[0].body == b"p"


async def test_timeout_annotation_zero_means_no_timeout(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        impatient, forever = Held(), Held()
        wire.gateway.add_function("impatient", topics="impatient", handler=impatient)
        wire.gateway.add_function(
            "forever",
            topics="forever",
            handler=forever,
            annotations={"com.aioconnector.timeout": "0"},
        )
        async with wire.controller(upstream_timeout=0.2) as controller:
            async with anyio.create_task_group() as tg:
                got: list[InvocationResult] = []

                async def invoke_forever() -> None:
                    got.extend(await controller.invoke("forever", b"f"))

                tg.start_soon(invoke_forever)
                await until(lambda: forever.entered == 1)
                (timed_out,) = await controller.invoke("impatient", b"i")  # upstream_timeout
                assert got == []
                forever.release()
            impatient.release_all()
        assert isinstance(timed_out.error, UpstreamTimeoutError)
        assert got[0].ok


async def test_idempotent_annotation_retries_after_a_timeout(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        once, careful_once = Held(hold=1), Held(hold=1)  # the first request of each never answers
        timeout = {"com.aioconnector.timeout": "200ms"}
        wire.gateway.add_function(
            "safe",
            topics="safe",
            handler=once,
            annotations={**timeout, "com.aioconnector.idempotent": "true"},
        )
        wire.gateway.add_function(
            "careful", topics="careful", handler=careful_once, annotations=timeout
        )
        async with wire.controller(retry=RetryPolicy(initial_delay=0.001)) as controller:
            (safe,) = await controller.invoke("safe", b"s")
            (careful,) = await controller.invoke("careful", b"c")
            once.release_all()
            careful_once.release_all()
        assert safe.ok
        assert safe.attempts == 2
        assert once.bodies == [b"s", b"s"]
        assert isinstance(careful.error, UpstreamTimeoutError)
        assert careful.attempts == 1
        assert careful_once.bodies == [b"c"]


# -- shutdown and backpressure -------------------------------------------------------------


async def test_shutdown_cancels_invocations_waiting_for_a_turn(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        held = Held()
        wire.gateway.add_function(
            "slow",
            topics="slow",
            handler=held,
            annotations={"com.aioconnector.max_concurrency": "1"},
        )
        results: list[InvocationResult] = []
        invoked: list[InvocationResult] = []

        async def invoke(controller: AsyncController) -> None:
            invoked.extend(await controller.invoke("slow", b"invoked"))

        async with anyio.create_task_group() as tg:
            async with wire.controller(drain_timeout=0.1) as controller:
                tg.start_soon(collect, controller.results(), results)
                for index in range(4):
                    await controller.submit("slow", b"%d" % index)
                await until(lambda: held.entered == 1 and lane(controller, "slow")[2] == 3)
                tg.start_soon(invoke, controller)
                await until(lambda: lane(controller, "slow")[2] == 4)
            # Left: drain_timeout passed with 1 on the wire and 4 waiting for its turn.
            held.release_all()
        assert len(results) == 5
        assert held.entered == 1  # nothing waiting was sent
        assert all(isinstance(r.error, InvocationCancelledError) for r in results)
        assert sorted(r.attempts for r in results) == [0, 0, 0, 0, 1]
        assert len(invoked) == 1
        assert isinstance(invoked[0].error, InvocationCancelledError)


async def test_submit_waits_while_max_waiting_invocations_wait(wire: Wire) -> None:
    with anyio.fail_after(WAIT):
        held = Held()
        wire.gateway.add_function(
            "slow",
            topics="slow",
            handler=held,
            annotations={"com.aioconnector.max_concurrency": "1"},
        )
        results: list[InvocationResult] = []
        events: list[str] = []
        async with (
            anyio.create_task_group() as tg,
            wire.controller(max_waiting=2, max_concurrency=8) as controller,
        ):
            tg.start_soon(collect, controller.results(), results)
            for index in range(3):  # 1 on the wire, 2 waiting: max_waiting
                await controller.submit("slow", b"%d" % index)
                await until(lambda n=index: held.entered + lane(controller, "slow")[2] == n + 1)  # type: ignore[misc]

            async def submit(index: int) -> None:
                await controller.submit("slow", b"%d" % index)
                events.append(f"submitted {index}")

            for index in (3, 4):
                assert lane(controller, "slow")[1:] == (1, 2)  # full
                tg.start_soon(submit, index)
                for _ in range(20):  # it stays held: nothing frees room
                    await anyio.sleep(0.001)
                events.append(f"release {index - 3}")
                held.release()  # answered: the next waiting goes on the wire, room for one
                await until(lambda n=index: events[-1] == f"submitted {n}")  # type: ignore[misc]
                await until(lambda: lane(controller, "slow")[2] == 2)
            held.release_all()
            await until(lambda: len(results) == 5)
        assert events == ["release 0", "submitted 3", "release 1", "submitted 4"]
        assert [r.body for r in results] == [b"0", b"1", b"2", b"3", b"4"]  # FIFO, one at a time
        assert all(r.ok for r in results)


# -- adaptive concurrency ------------------------------------------------------------------


# 120 messages: asyncio's debug mode with httpx takes ~10 ms of CPU each, and the machine is
# shared; the 50 s bound (under pytest's 60) only catches a hang.
MESSAGES = 120


async def test_adaptive_concurrency_finds_the_capacity_without_failures(wire: Wire) -> None:
    with anyio.fail_after(50):
        gw = wire.gateway
        gw.add_function("capped", topics="capped", max_inflight=4, latency=Latency(base=0.002))
        # Below the capacity at first: slow start must find it. (From the default initial 8,
        # twice the capacity, the decrease by x0.9 per round trip takes ~7 round trips; on a
        # loaded machine a few messages then get three 429s in a row and fail.)
        adaptive = AdaptiveConcurrency(initial=2)
        results: list[InvocationResult] = []
        async with (
            anyio.create_task_group() as tg,
            wire.controller(max_concurrency=64, adaptive_concurrency=adaptive) as controller,
        ):
            tg.start_soon(collect, controller.results(), results)
            for index in range(MESSAGES):
                await controller.submit("capped", b"%d" % index)
            await until(lambda: len(results) == MESSAGES)
            state = controller.stats().per_function[addr("capped")]
        failed = [r for r in results if not r.ok]
        assert failed == []
        assert sorted(int(r.body) for r in results) == list(range(MESSAGES))
        assert state.limit is not None
        assert 1 <= state.limit <= 64
        assert state.in_flight == state.waiting == 0
        stats = gw.function_stats("capped")
        assert stats.peak_inflight <= 4
        assert stats.statuses[200] == MESSAGES
        assert stats.throttled == state.overloads  # every 429 seen, and nothing else counted
