"""`Lane` alone: a function's limit (fixed or AIMD), its Retry-After gate, its retry budget and
its waiters. Time is what the test says: answers carry their send time and duration, and the
gate's timer is a fake ``call_later`` that the test fires."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import pytest

from aioconnector import (
    AdaptiveConcurrency,
    FunctionPolicy,
    FunctionState,
    InvocationResult,
    ResponseTooLargeError,
    RetryBudget,
    RetryPolicy,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aioconnector._lanes import Lane

WAIT = 10  # seconds: the bound on every wait in these tests


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled
        self.callback()


class Timers(list[FakeTimer]):
    """A fake ``call_later``: the timers it made, fired by the test."""

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.append(timer)
        return timer

    @property
    def live(self) -> list[FakeTimer]:
        return [timer for timer in self if not timer.cancelled]


def make_lane(
    *,
    max_concurrency: int | None = None,
    adaptive: AdaptiveConcurrency | None = None,
    budget: RetryBudget | None = None,
    retry: RetryPolicy | None = None,
    global_max: int = 64,
    now: float = 0.0,
) -> tuple[Lane, Timers]:
    timers = Timers()
    policy = FunctionPolicy(
        function="fn.openfaas-fn",
        retry=retry or RetryPolicy(),
        max_concurrency=max_concurrency,
        timeout=None,
        idempotent=False,
    )
    lane = Lane(
        policy,
        max_concurrency=global_max,
        adaptive=adaptive,
        budget=budget,
        call_later=timers,
        now=now,
    )
    return lane, timers


def answer(
    status: int | None = 200,
    *,
    error: Exception | None = None,
    duration: float = 0.1,
    retry_after: str | None = None,
) -> InvocationResult:
    if error is None and status is not None and not 200 <= status < 300:
        error = UpstreamStatusError(status)
    return InvocationResult(
        topic="t",
        function="fn.openfaas-fn",
        status=status,
        headers={} if retry_after is None else {"retry-after": retry_after},
        duration=duration,
        error=error,  # type: ignore[arg-type]
    )


OK = answer(200)


def full_success(lane: Lane, sent_at: float = 0.0) -> None:
    """One success while the function uses its whole limit."""
    lane.in_flight = lane.cap
    lane.done(OK, sent_at)


def successes_until(lane: Lane, cap: int, *, sent_at: float, most: int = 10_000) -> int:
    """Full-limit successes until the lane's cap reaches ``cap``."""
    count = 0
    while lane.cap < cap:
        full_success(lane, sent_at)
        count += 1
        assert count < most, f"the cap never reached {cap}: {lane.limit}"
    return count


def steady(limit: int, **adaptive: int) -> Lane:
    """An adaptive lane past slow start, at ``limit``: started at twice that and refused once
    (the first refusal halves the limit, as TCP's slow start ends)."""
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=2 * limit, **adaptive))
    refuse(lane, sent_at=-1.0)
    assert (lane.limit, lane.cap) == (limit, limit)
    return lane


def refuse(lane: Lane, *, sent_at: float, status: int = 429) -> None:
    """The function refuses one request sent at ``sent_at``, with the lane full."""
    lane.in_flight = lane.cap
    lane.done(answer(status), sent_at)


# -- the limit -------------------------------------------------------------------------------


def test_without_annotation_or_adaptive_only_the_global_bound_limits() -> None:
    lane, _ = make_lane()
    assert lane.cap >= 64  # the global slots are the bound
    assert lane.stats(0).limit is None
    refuse(lane, sent_at=0)
    assert lane.cap >= 64  # nothing adapts
    assert lane.stats(1).overloads == 1


def test_fixed_cap_from_the_annotation() -> None:
    lane, _ = make_lane(max_concurrency=3)
    assert (lane.cap, lane.stats(0).limit) == (3, 3.0)
    for _ in range(50):
        full_success(lane)
    refuse(lane, sent_at=1)
    refuse(lane, sent_at=5)
    assert (lane.cap, lane.limit) == (3, 3.0)  # not adaptive: fixed whatever happens


def test_adaptive_limit_stays_within_the_annotation_and_max() -> None:
    lane, _ = make_lane(max_concurrency=3, adaptive=AdaptiveConcurrency(initial=8))
    assert lane.cap == 3  # the annotation caps the initial limit too
    for _ in range(20):
        full_success(lane)
    assert lane.cap == 3
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=4, max=6))
    for _ in range(20):
        full_success(lane)
    assert (lane.cap, lane.limit) == (6, 6.0)
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=4), global_max=5)
    for _ in range(20):
        full_success(lane)
    assert lane.cap == 5  # max None: max_concurrency


def test_slow_start_adds_one_per_success_while_half_the_limit_is_used() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=4))
    assert lane.cap == 4
    lane.in_flight = 4
    limits = []
    for _ in range(4):  # a round of four answers: 4, 3, 2, 1 in flight when each came
        lane.done(OK, 0)
        limits.append(lane.limit)
    assert limits == [5, 6, 6, 6]  # 2 and 1 in flight: under half of 6, nothing learnt
    assert lane.cap == 6
    assert lane.in_flight == 0


def test_success_with_the_limit_unused_learns_nothing() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=10))
    for _ in range(100):
        lane.in_flight = 4  # under half of 10
        lane.done(OK, 0)
    assert lane.limit == 10


OVERLOADS: list[InvocationResult] = [
    answer(429),
    answer(502),
    answer(503),
    answer(504),
    answer(None, error=UpstreamTimeoutError("no answer within 1s")),
    answer(None, error=UpstreamConnectionError("refused", request_sent=False)),
]


@pytest.mark.parametrize(
    "result", OVERLOADS, ids=["429", "502", "503", "504", "timeout", "refused"]
)
def test_overload_signals_decrease_the_limit(result: InvocationResult) -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=10))
    lane.in_flight = 10
    lane.done(result, 0)
    assert lane.limit == pytest.approx(5.0)  # the first signal ends slow start: halved
    assert lane.cap == 5
    assert lane.stats(1).overloads == 1
    lane.in_flight = 5
    lane.done(result, 1)  # sent after that decrease: times `decrease`
    assert lane.limit == pytest.approx(4.5)
    assert lane.stats(2).overloads == 2
    fixed, _ = make_lane(max_concurrency=10)
    fixed.in_flight = 1
    fixed.done(result, 0)
    assert (fixed.cap, fixed.stats(1).overloads) == (10, 1)  # counted, not acted on


NOT_OVERLOADS: list[InvocationResult] = [
    answer(400),
    answer(401),
    answer(404),
    answer(413),
    answer(500),
    answer(None, error=UpstreamConnectionError("lost after sending", request_sent=True)),
    answer(None, error=ResponseTooLargeError("too big")),
]


@pytest.mark.parametrize(
    "result", NOT_OVERLOADS, ids=["400", "401", "404", "413", "500", "lost", "too-large"]
)
def test_payload_errors_are_no_signal(result: InvocationResult) -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=10))
    lane.in_flight = 10
    lane.done(result, 0)
    assert (lane.limit, lane.cap) == (10, 10)
    assert lane.stats(1).overloads == 0
    full_success(lane)
    assert lane.limit == 11  # still in slow start


def test_the_decrease_factor_is_configurable() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=20, decrease=0.75))
    refuse(lane, sent_at=0)
    assert (lane.limit, lane.cap) == (10, 10)  # slow start ends: halved
    refuse(lane, sent_at=1)
    assert (lane.limit, lane.cap) == (7.5, 7)


def test_one_decrease_per_round_trip() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=10))
    lane.in_flight = 10  # ten requests sent at t=1
    lane.done(answer(429, duration=0.5), 1.0)  # answered at 1.5: decrease (slow start ends)
    assert lane.limit == pytest.approx(5.0)
    for _ in range(5):  # the rest of that round: sent before the decrease, already counted
        lane.done(answer(503, duration=0.7), 1.0)
    assert lane.limit == pytest.approx(5.0)
    assert lane.overloads == 6
    lane.done(answer(429, duration=0.1), 1.6)  # sent after the decrease: a new signal
    assert lane.limit == pytest.approx(4.5)
    lane.done(answer(None, error=UpstreamTimeoutError("t"), duration=1.0), 1.55)
    assert lane.limit == pytest.approx(4.5)  # sent before the last decrease (at 1.7)
    assert lane.in_flight == 2


def test_the_limit_never_goes_below_min() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=4, min=2))
    for second in range(20):
        refuse(lane, sent_at=float(second))
    assert (lane.limit, lane.cap) == (2, 2)
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=4))
    for second in range(50):
        refuse(lane, sent_at=float(second))
    assert (lane.limit, lane.cap) == (1, 1)  # min 1: the function can still be probed
    assert lane.stats(100).limit == 1


def test_after_a_decrease_the_limit_grows_by_one_per_round_trip() -> None:
    lane = steady(10, hold=0, max_hold=0)
    refuse(lane, sent_at=0)
    assert lane.cap == 9
    # Congestion avoidance: +1/limit per success, about one limit's worth of successes per +1.
    assert 8 <= successes_until(lane, 10, sent_at=1) <= 10
    assert 9 <= successes_until(lane, 11, sent_at=1) <= 11


# -- holding probes above a refused cap ----------------------------------------------------


def probe_intervals(lane: Lane, refusals: int) -> list[int]:
    """The function takes 10 at once: a request at its 11th refused. How many successes the
    lane waits, after each refusal, before it probes 11 again."""
    intervals = []
    for index in range(refusals):
        assert lane.cap == 11  # probing
        refuse(lane, sent_at=float(index + 1))
        intervals.append(successes_until(lane, 11, sent_at=float(index + 1) + 0.5))
    return intervals


def test_repeated_refusals_at_the_same_cap_space_the_probes_out() -> None:
    lane = steady(11, hold=4, max_hold=32)
    intervals = probe_intervals(lane, 8)
    # Each interval is the climb back (11 or 12 successes, as the fraction falls) plus the
    # hold, which grows with each refused probe up to max_hold: a function with a hard limit
    # is probed rarely.
    eager = steady(11, hold=0, max_hold=0)
    climbs = probe_intervals(eager, 8)  # without a hold: the climb alone
    assert max(climbs) - min(climbs) <= 1
    holds = [interval - climb for interval, climb in zip(intervals, climbs, strict=True)]
    assert holds[0] == 4  # hold
    assert holds == sorted(holds)
    assert holds[2] > holds[0]
    assert holds[-3:] == [32, 32, 32]  # max_hold


def test_a_probe_that_succeeds_above_the_refused_cap_ends_the_hold() -> None:
    lane = steady(11, hold=8, max_hold=64)
    probe_intervals(lane, 4)  # the hold grew
    # The function scaled out: the probe at 11 succeeds, and the next caps come a round trip
    # each, with no hold (neither at 12, nor at 13).
    assert successes_until(lane, 12, sent_at=10) <= 12
    assert successes_until(lane, 13, sent_at=10) <= 13
    # Refused at 13 later: a new cap, so the hold starts again from `hold`, not the grown one.
    refuse(lane, sent_at=11)
    interval = successes_until(lane, 13, sent_at=12)
    fresh = steady(13, hold=8, max_hold=64)
    refuse(fresh, sent_at=0)
    assert abs(interval - successes_until(fresh, 13, sent_at=1)) <= 1  # the fraction differs


def test_a_refusal_below_the_refused_cap_holds_only_hold() -> None:
    lane = steady(11, hold=4, max_hold=1024)
    probe_intervals(lane, 6)  # the hold grew to 64 at cap 11
    refuse(lane, sent_at=20)  # the probe at 11 refused: 9.9
    refuse(lane, sent_at=21)  # and at 9 now: the capacity shrank
    assert lane.cap == 8
    fresh = steady(11, hold=4, max_hold=1024)  # refused at 9 the first time
    fresh.limit = 9.9
    fresh.cap = 9
    refuse(fresh, sent_at=0)
    assert fresh.cap == 8
    assert successes_until(lane, 9, sent_at=22) == successes_until(fresh, 9, sent_at=1) < 64


# -- the Retry-After gate --------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_closes_the_gate_until_the_timer(status: int) -> None:
    lane, timers = make_lane(max_concurrency=4)
    lane.in_flight = 2
    lane.done(answer(status, retry_after="2", duration=0.5), 1.0)  # answered at 1.5
    assert lane.cap == 0
    assert lane.gate_until == 3.5
    assert [timer.delay for timer in timers] == [2.0]
    state = lane.stats(2.0)
    assert state.gate_closed_for == 1.5
    lane.done(OK, 1.0)  # the other one in flight: the gate stays closed
    assert lane.cap == 0
    timers[0].fire()
    assert lane.cap == 4
    assert lane.stats(4.0).gate_closed_for == 0


@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, None), (429, "0"), (429, "soon"), (502, "2"), (500, "2")]
)
def test_no_gate_without_a_usable_retry_after_on_429_or_503(
    status: int, retry_after: str | None
) -> None:
    lane, timers = make_lane(max_concurrency=4)
    lane.in_flight = 1
    lane.done(answer(status, retry_after=retry_after), 0)
    assert lane.cap == 4
    assert timers == []
    assert lane.stats(0.5).gate_closed_for == 0


def test_the_gate_closes_for_at_most_max_delay() -> None:
    lane, timers = make_lane(retry=RetryPolicy(max_delay=3))
    lane.in_flight = 1
    lane.done(answer(429, retry_after="3600", duration=0.0), 10.0)
    assert [timer.delay for timer in timers] == [3.0]
    assert lane.gate_until == 13.0


def test_a_later_retry_after_extends_the_gate_an_earlier_one_does_not() -> None:
    lane, timers = make_lane()
    lane.in_flight = 3
    lane.done(answer(429, retry_after="2", duration=0), 0.0)  # until 2
    lane.done(answer(429, retry_after="1", duration=0), 0.5)  # until 1.5: no change
    assert len(timers.live) == 1
    assert lane.gate_until == 2.0
    lane.done(answer(503, retry_after="4", duration=0), 1.0)  # until 5: replaces the timer
    assert [timer.delay for timer in timers.live] == [4.0]
    assert timers[0].cancelled
    assert lane.gate_until == 5.0
    timers.live[0].fire()
    assert lane.cap > 0


def test_adaptive_limit_learnt_while_the_gate_is_closed_applies_when_it_opens() -> None:
    lane, timers = make_lane(adaptive=AdaptiveConcurrency(initial=10))
    lane.in_flight = 10
    lane.done(answer(429, retry_after="1", duration=0.5), 1.0)
    assert lane.cap == 0
    assert lane.limit == pytest.approx(5.0)  # slow start ends: halved
    for _ in range(5):  # answers still coming while closed: the cap stays 0
        lane.done(answer(503, duration=1.0), 2.0)
    assert lane.cap == 0
    assert lane.limit == pytest.approx(4.5)
    timers[0].fire()
    assert lane.cap == 4


def test_close_cancels_the_gate_timer() -> None:
    lane, timers = make_lane()
    lane.in_flight = 1
    lane.done(answer(429, retry_after="5"), 0)
    lane.close()
    assert timers[0].cancelled
    lane.close()  # twice: nothing to do


async def test_waiters_wait_while_the_gate_is_closed_and_go_when_it_opens() -> None:
    lane, timers = make_lane(max_concurrency=2)
    lane.in_flight = 1
    lane.done(answer(429, retry_after="1"), 0)
    got: list[int] = []

    async def request(index: int) -> None:
        await lane.wait_turn()
        got.append(index)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for index in range(3):  # one at a time: trio starts tasks in any order
                tg.start_soon(request, index)
                await until(lambda n=index + 1: len(lane.waiters) == n)  # type: ignore[misc]
            assert lane.stats(0).waiting == 3
            assert got == []
            timers[0].fire()  # two turns: the limit
            await until(lambda: len(got) == 2)
            assert sorted(got) == [0, 1]  # the first two to come (woken together)
            assert lane.in_flight == 2
            assert len(lane.waiters) == 1
            lane.done(OK, 2.0)  # one answered: the third goes
    assert got[2] == 2
    assert lane.in_flight == 2


# -- waiters ---------------------------------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await anyio.sleep(0.001)


async def test_waiters_are_given_turns_in_order_as_requests_end() -> None:
    lane, _ = make_lane(max_concurrency=1)
    lane.in_flight = 1
    got: list[int] = []

    async def request(index: int) -> None:
        await lane.wait_turn()
        got.append(index)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(request, index)
                await until(lambda n=index + 1: len(lane.waiters) == n)  # type: ignore[misc]
            for done in range(1, 4):
                lane.done(OK, 0)
                await until(lambda n=done: len(got) == n)  # type: ignore[misc]
                assert lane.in_flight == 1  # taken on the woken waiter's behalf
    assert got == [0, 1, 2]


async def test_a_lost_turn_passes_on() -> None:
    lane, _ = make_lane(max_concurrency=1)
    lane.in_flight = 1
    got: list[str] = []

    async def request(name: str) -> None:
        await lane.wait_turn()
        got.append(name)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()
            tg.start_soon(_cancellable, first, request, "first")
            await until(lambda: len(lane.waiters) == 1)
            tg.start_soon(request, "second")
            await until(lambda: len(lane.waiters) == 2)
            first.cancel()  # cancelled, and before it resumes...
            lane.done(OK, 0)  # ...it is given the turn: it must pass it on
    assert got == ["second"]
    assert lane.in_flight == 1  # the second's turn, no more, no less
    assert len(lane.waiters) == 0


async def _cancellable(scope: anyio.CancelScope, func: Callable[..., Any], *args: object) -> None:
    with scope:
        await func(*args)


async def test_a_waiter_cancelled_before_its_turn_leaves_without_one() -> None:
    lane, _ = make_lane(max_concurrency=1)
    lane.in_flight = 1
    with anyio.fail_after(WAIT):
        with anyio.move_on_after(0.01) as scope:
            await lane.wait_turn()
        assert scope.cancelled_caught
    assert len(lane.waiters) == 0
    assert lane.in_flight == 1


# -- policy updates -----------------------------------------------------------------------


async def test_a_raised_annotation_limit_wakes_waiters() -> None:
    lane, _ = make_lane(max_concurrency=1)
    lane.in_flight = 1
    got: list[int] = []

    async def request(index: int) -> None:
        await lane.wait_turn()
        got.append(index)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(request, index)
            await until(lambda: len(lane.waiters) == 3)
            lane.update(attrs.evolve(lane.policy, max_concurrency=3), 64)
            await until(lambda: len(got) == 2)
            assert lane.in_flight == 3
            assert len(lane.waiters) == 1
            lane.update(attrs.evolve(lane.policy, max_concurrency=None), 64)
    assert sorted(got) == [0, 1, 2]


def test_an_update_keeps_what_was_learnt() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=4))
    for _ in range(10):
        full_success(lane)
    learnt = lane.limit
    assert learnt > 4
    lane.update(lane.policy, 64)
    assert lane.limit == learnt
    lane.update(attrs.evolve(lane.policy, max_concurrency=3), 64)
    assert (lane.limit, lane.cap) == (3, 3)  # the new annotation bounds it
    lane.update(attrs.evolve(lane.policy, max_concurrency=None), 64)
    assert lane.limit == 3  # and it grows again from there, not from the start


# -- the retry budget ------------------------------------------------------------------------


def allowed(lane: Lane, now: float, most: int = 1000) -> int:
    """Retries the budget allows at ``now``, taking them all."""
    count = 0
    while lane.may_retry(now):
        count += 1
        assert count < most
    return count


def test_budget_allows_minimum_plus_ratio_of_first_attempts() -> None:
    lane, _ = make_lane(budget=RetryBudget(ratio=0.5, window=10, minimum=2))
    assert allowed(lane, 0.0) == 2  # no traffic: the minimum
    assert lane.stats(0).denied_retries == 1
    for _ in range(6):
        lane.first_attempt(0.5)
    assert allowed(lane, 0.5) == 3  # 2 + 0.5 x 6 = 5 in the window, 2 taken already
    assert lane.denied_retries == 2
    lane.first_attempt(0.6)
    assert allowed(lane, 0.6) == 1  # 5 taken, 5.5 allowed
    assert lane.denied_retries == 3


def test_budget_recovers_as_the_window_slides() -> None:
    lane, _ = make_lane(budget=RetryBudget(ratio=0.0, window=10, minimum=3))
    assert allowed(lane, 0.0) == 3
    assert allowed(lane, 9.9) == 0  # still in the window
    assert allowed(lane, 10.0) == 3  # the retries at 0 fell out of it
    lane, _ = make_lane(budget=RetryBudget(ratio=0.0, window=10, minimum=3))
    assert allowed(lane, 5.0) == 3
    assert allowed(lane, 14.5) == 0  # those at 5 count until 15
    assert allowed(lane, 15.5) == 3
    assert allowed(lane, 1000.0) == 3  # long quiet: everything forgotten


def test_first_attempts_fall_out_of_the_window_too() -> None:
    lane, _ = make_lane(budget=RetryBudget(ratio=1.0, window=10, minimum=0))
    for _ in range(5):
        lane.first_attempt(0.0)
    assert allowed(lane, 5.0) == 5
    for _ in range(5):
        lane.first_attempt(6.0)
    assert allowed(lane, 9.0) == 5  # 10 firsts, 5 retries taken
    assert allowed(lane, 11.0) == 0  # the firsts at 0 are gone: 5 firsts, 10 retries
    assert allowed(lane, 15.5) == 0  # those at 5 are gone too: 5 firsts, 5 retries
    for _ in range(3):
        lane.first_attempt(15.5)
    assert allowed(lane, 15.5) == 3
    assert allowed(lane, 16.5) == 0  # the firsts at 6 are gone: 3 firsts, 8 retries
    assert allowed(lane, 25.6) == 0  # all gone, and no minimum


def test_budget_zero_denies_every_retry_and_none_allows_all() -> None:
    lane, _ = make_lane(budget=RetryBudget(ratio=0, minimum=0))
    for _ in range(100):
        lane.first_attempt(0.0)
    assert allowed(lane, 0.0) == 0
    assert lane.stats(0).denied_retries == 1
    unlimited, _ = make_lane(budget=None)
    assert all(unlimited.may_retry(0.0) for _ in range(10_000))
    assert unlimited.denied_retries == 0


# -- stats -----------------------------------------------------------------------------------


def test_stats_show_the_lane() -> None:
    lane, _ = make_lane(adaptive=AdaptiveConcurrency(initial=5), budget=RetryBudget(minimum=0))
    lane.in_flight = 2
    lane.done(answer(503, retry_after="2", duration=0.0), 1.0)
    assert not lane.may_retry(1.0)
    assert lane.stats(2.0) == FunctionState(
        limit=pytest.approx(2.5),  # type: ignore[arg-type]  # slow start ends: halved
        in_flight=1,
        waiting=0,
        gate_closed_for=1.0,
        overloads=1,
        denied_retries=1,
    )
    assert math.isinf(make_lane()[0].limit)
