"""Scenario g, the child side: the delivery policy (issue 12), fixed bound vs adaptive.

Each part runs an `AsyncController` against a `FakeGateway` served on loopback in the same
process (its capacity model, outages and counters are the point here, not its speed), with the
default `RetryPolicy` and `RetryBudget`; ``mode`` picks ``adaptive_concurrency``: ``None``
(fixed: only ``max_concurrency`` bounds a function) or ``AdaptiveConcurrency(**options)``.

1. overload: one function with ``max_inflight`` (429 beyond it) and a latency growing with its
   in-flight count; N messages submitted back to back.
2. mixed: that function and a fast one on two topics, each offered a steady rate by its own
   producer; the fast function's throughput and p99 latency against its solo run.
3. outage: a function under a steady rate goes down (``set_down``) for a while and comes back:
   requests and retries during the outage against the retry budget, and the recovery time.

Latencies count from the moment a message was due (its place in the steady schedule), so a
producer held back by ``submit`` is counted against the run, not hidden.
"""

from __future__ import annotations

import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
from _common import BODY, NAMESPACE, USER_AGENT, percentile, rss_bytes

from aioconnector import AdaptiveConcurrency, AsyncController, ControllerConfig, RetryBudget
from aioconnector.testing import FakeGateway, Latency

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Job = dict[str, Any]
Row = dict[str, Any]
SLOW: Final = "slow"  # max_inflight, latency growing with in-flight (parts 1 and 2)
FAST: Final = "fast"  # no limit, a small latency (part 2)
FLAKY: Final = "flaky"  # goes down and comes back (part 3)
SAMPLE: Final = 0.1  # seconds between two looks at the controller's and the gateway's state
TRAJECTORY_STEP: Final = 0.25  # seconds between two points of the limit trajectory in a row
RECOVERY_WINDOW: Final = 0.5  # seconds over which "full throughput" is judged
FULL: Final = 0.9  # of the offered rate: "full throughput"
STALL: Final = 10.0  # seconds without a result (nor a due message) that end a run as stalled
WARM_UP_CALLS: Final = 16  # concurrent calls to the fast function before part 2's runs
_MIB: Final = 1024 * 1024


def address(function: str) -> str:
    return f"{function}.{NAMESPACE}"


def _adaptive(job: Job) -> AdaptiveConcurrency | None:
    return AdaptiveConcurrency(**job["adaptive"]) if job["mode"] == "adaptive" else None


@asynccontextmanager
async def _running(job: Job, gateway: FakeGateway) -> AsyncIterator[AsyncController]:
    """The gateway served on loopback and a controller entered against it."""
    async with gateway.serve() as url:
        config = ControllerConfig(
            gateway_url=url,
            max_concurrency=job["max_concurrency"],
            adaptive_concurrency=_adaptive(job),
            retry_budget=RetryBudget(),
            max_waiting=job["max_waiting"],
            result_buffer=4096,  # the consumer never holds a slot up
            upstream_timeout=30.0,
            user_agent=USER_AGENT,
            namespaces=(NAMESPACE,),
            startup_timeout=30.0,
            drain_timeout=5.0,  # all results are in at exit, unless the run stalled
        )
        async with AsyncController(config) as controller:
            yield controller


@dataclass
class Done:
    """One result: its topic, when it was due and when it came back (seconds from t0)."""

    topic: str
    ok: bool
    due: float
    done: float
    attempts: int
    status: int | None


@dataclass
class Sample:
    """The state of one function at one moment (seconds from t0)."""

    t: float
    limit: float | None
    in_flight: int
    waiting: int
    requests: int  # at the gateway, since t0
    throttled: int
    retries: int  # the controller's, all functions


@dataclass
class Traffic:
    """What one run produced: the results, the samples of the watched function, the clock."""

    t0: float
    results: list[Done] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    submitted: dict[str, list[float]] = field(default_factory=dict)  # submit times per topic
    last_due: float = 0.0
    stalled: str | None = None  # what was seen when results stopped coming (then cut short)


def steady(rate: float, duration: float) -> list[float]:
    """Due times of a steady rate over ``duration`` seconds."""
    return [index / rate for index in range(round(rate * duration))]


async def drive(
    controller: AsyncController,
    gateway: FakeGateway,
    schedules: dict[str, list[float]],
    watched: str,
    *,
    during: Any = None,
) -> Traffic:
    """One producer per topic submitting at its due times (or as fast as ``submit`` lets it
    when all are due at 0), one consumer reading every result, and a monitor sampling the
    ``watched`` function; ``during(traffic)`` runs alongside (the outage). Returns when every
    result is in."""
    expected = sum(len(times) for times in schedules.values())
    traffic = Traffic(t0=time.monotonic())
    t0, clock = traffic.t0, time.monotonic
    traffic.last_due = max((times[-1] for times in schedules.values() if times), default=0.0)
    gateway.reset_stats()
    retries0 = controller.stats().retries

    async def produce(topic: str, times: list[float]) -> None:
        log = traffic.submitted.setdefault(topic, [])
        for due in times:
            wait = t0 + due - clock()
            if wait > 0:
                await anyio.sleep(wait)
            await controller.submit(topic, BODY, context=due)
            log.append(clock() - t0)

    async def monitor() -> None:
        seen, since = -1, clock()
        while True:
            if len(traffic.results) != seen:
                seen, since = len(traffic.results), clock()
            elif clock() - since > STALL and clock() - t0 > traffic.last_due:
                traffic.stalled = _stall_report(controller, gateway, watched, seen, expected)
                tg.cancel_scope.cancel()
                return
            state = controller.stats()
            function = state.per_function.get(address(watched))
            load = gateway.function_stats(watched)
            traffic.samples.append(
                Sample(
                    t=clock() - t0,
                    limit=None if function is None else function.limit,
                    in_flight=0 if function is None else function.in_flight,
                    waiting=0 if function is None else function.waiting,
                    requests=load.requests,
                    throttled=load.throttled,
                    retries=state.retries - retries0,
                )
            )
            await anyio.sleep(SAMPLE)

    async with controller.results() as stream, anyio.create_task_group() as tg:
        tg.start_soon(monitor)
        if during is not None:
            tg.start_soon(during, traffic)
        async with anyio.create_task_group() as producers:
            for topic, times in schedules.items():
                producers.start_soon(produce, topic, times)
            async for result in stream:
                traffic.results.append(
                    Done(
                        topic=result.topic,
                        ok=result.ok,
                        due=float(result.context),  # type: ignore[arg-type]
                        done=clock() - t0,
                        attempts=result.attempts,
                        status=result.status,
                    )
                )
                if len(traffic.results) >= expected:
                    break
        tg.cancel_scope.cancel()
    return traffic


def _stall_report(
    controller: AsyncController, gateway: FakeGateway, watched: str, seen: int, expected: int
) -> str:
    """What a stalled run looked like, for the report (private attributes: diagnosis only)."""
    state = controller.stats()
    slots = getattr(controller, "_slots", None)
    dispatcher = getattr(controller, "_dispatch", None)
    waiters = getattr(slots, "_waiters", ())
    return (
        f"stalled: {seen} of {expected} results, no new one for {STALL:.0f} s; "
        f"slots borrowed {getattr(slots, 'borrowed', '?')}, slot waiters {len(waiters)}, "
        f"waiting without a slot {getattr(dispatcher, '_waiting', '?')}; "
        f"{watched}: {state.per_function.get(address(watched))}; "
        f"gateway in flight {gateway.function_stats(watched).inflight}"
    )


def _trajectory(traffic: Traffic) -> list[list[float | int | None]]:
    """[t, limit, in flight, waiting] every ``TRAJECTORY_STEP`` seconds, for the row."""
    points: list[list[float | int | None]] = []
    next_t = 0.0
    for s in traffic.samples:
        if s.t >= next_t:
            limit = None if s.limit is None else round(s.limit, 2)
            points.append([round(s.t, 2), limit, s.in_flight, s.waiting])
            next_t = s.t + TRAJECTORY_STEP
    return points


def _at(traffic: Traffic, t: float) -> Sample | None:
    """The first sample taken at ``t`` or later."""
    return next((s for s in traffic.samples if s.t >= t), None)


def _row(job: Job, part: int, case: str, **figures: Any) -> Row:
    return {
        "scenario": "g",
        "part": part,
        "case": case,
        "backend": job["backend"],
        "client": job["client"],
        "mode": job["mode"],
        "concurrency": job["max_concurrency"],
        "adaptive": job["adaptive"] if job["mode"] == "adaptive" else None,
        "max_waiting": job["max_waiting"],
        "rss_mib": rss_bytes() / _MIB,
        "error": None,
        **figures,
    }


def _latencies(results: list[Done], topic: str) -> tuple[float | None, float | None]:
    """p50 and p99 (ms) from due to result, of the topic's successful results."""
    ordered = sorted(r.done - r.due for r in results if r.topic == topic and r.ok)
    if not ordered:
        return None, None
    return percentile(ordered, 0.5) * 1e3, percentile(ordered, 0.99) * 1e3


# -- part 1: overload ----------------------------------------------------------------------------


def _slow(gateway: FakeGateway, job: Job) -> None:
    latency = Latency(base=job["slow_base"], per_inflight=job["slow_per_inflight"])
    gateway.add_function(SLOW, topics=SLOW, max_inflight=job["slow_max_inflight"], latency=latency)


async def run_overload(job: Job) -> Row:
    gateway = FakeGateway()
    _slow(gateway, job)
    messages = job["overload_messages"]
    async with _running(job, gateway) as controller:
        traffic = await drive(controller, gateway, {SLOW: [0.0] * messages}, SLOW)
        state = controller.stats()
    load = gateway.function_stats(SLOW)
    ok = sum(r.ok for r in traffic.results)
    elapsed = max((r.done for r in traffic.results), default=math.nan)
    first = _at(traffic, 1.0)
    later = None
    if first is not None and elapsed > 1.0:
        requests = load.requests - first.requests
        later = (load.throttled - first.throttled) / requests if requests else 0.0
    p50, p99 = _latencies(traffic.results, SLOW)
    function = state.per_function.get(address(SLOW))
    return _row(
        job,
        1,
        "overload",
        messages=messages,
        succeeded=ok,
        failed=len(traffic.results) - ok,
        requests=load.requests,
        throttled=load.throttled,
        retries=state.retries,
        denied_retries=None if function is None else function.denied_retries,
        elapsed_s=elapsed,
        msg_per_s=len(traffic.results) / elapsed,
        ok_per_s=ok / elapsed,
        throttled_share_after_1s=later,
        peak_inflight=load.peak_inflight,
        max_inflight=job["slow_max_inflight"],
        p50_ms=p50,
        p99_ms=p99,
        final_limit=None if function is None else function.limit,
        trajectory=_trajectory(traffic),
        error=traffic.stalled,
    )


# -- part 2: mixed -------------------------------------------------------------------------------


async def _mixed_once(job: Job, *, with_slow: bool) -> tuple[Traffic, FakeGateway]:
    gateway = FakeGateway()
    _slow(gateway, job)
    gateway.add_function(FAST, topics=FAST, latency=Latency(base=job["fast_base"]))
    duration = job["mixed_duration"]
    schedules = {FAST: steady(job["fast_rate"], duration)}
    if with_slow:
        schedules[SLOW] = steady(job["slow_rate"], duration)
    async with _running(job, gateway) as controller:
        # Connections to the fast function opened before the timed run, in both runs alike.
        async with anyio.create_task_group() as tg:
            for _ in range(WARM_UP_CALLS):
                tg.start_soon(controller.invoke, FAST, BODY)
        traffic = await drive(controller, gateway, schedules, SLOW if with_slow else FAST)
    return traffic, gateway


def _fast_figures(traffic: Traffic) -> tuple[dict[str, Any], float | None, float | None]:
    """The fast function's successes per second (from the first due time to the later of the
    last due time and its last result), failures, and p50/p99 latency."""
    fast = [r for r in traffic.results if r.topic == FAST]
    ok = sum(r.ok for r in fast)
    span = max(traffic.last_due, max((r.done for r in fast), default=0.0))
    p50, p99 = _latencies(fast, FAST)
    return {"ok": ok, "failed": len(fast) - ok, "per_s": ok / span if span else None}, p50, p99


async def run_mixed(job: Job) -> Row:
    solo, _ = await _mixed_once(job, with_slow=False)
    mixed, gateway = await _mixed_once(job, with_slow=True)
    solo_fast, solo_p50, solo_p99 = _fast_figures(solo)
    fast, p50, p99 = _fast_figures(mixed)
    slow = [r for r in mixed.results if r.topic == SLOW]
    slow_ok = sum(r.ok for r in slow)
    load = gateway.function_stats(SLOW)
    share = fast["per_s"] / solo_fast["per_s"] if fast["per_s"] and solo_fast["per_s"] else None
    return _row(
        job,
        2,
        "mixed",
        fast_rate=job["fast_rate"],
        slow_rate=job["slow_rate"],
        duration_s=job["mixed_duration"],
        messages=len(mixed.results),
        fast_messages=len([r for r in mixed.results if r.topic == FAST]),
        solo_fast_per_s=solo_fast["per_s"],
        solo_p50_ms=solo_p50,
        solo_p99_ms=solo_p99,
        solo_failed=solo_fast["failed"],
        fast_per_s=fast["per_s"],
        fast_share_of_solo=share,
        fast_p50_ms=p50,
        fast_p99_ms=p99,
        p99_vs_solo=p99 / solo_p99 if p99 is not None and solo_p99 else None,
        fast_failed=fast["failed"],
        slow_messages=len(slow),
        slow_succeeded=slow_ok,
        slow_failed=len(slow) - slow_ok,
        slow_throttled=load.throttled,
        slow_requests=load.requests,
        failed=fast["failed"] + len(slow) - slow_ok,
        elapsed_s=max((r.done for r in mixed.results), default=math.nan),
        trajectory=_trajectory(mixed),
        error=solo.stalled or mixed.stalled,
    )


# -- part 3: outage ------------------------------------------------------------------------------


@dataclass
class Outage:
    """What the outage task saw: when it began and ended (seconds from t0), and the counters
    (gateway requests and 503s, the controller's retries) at both ends."""

    start: float = math.nan
    end: float = math.nan
    requests: tuple[int, int] = (0, 0)
    failures: tuple[int, int] = (0, 0)
    retries: tuple[int, int] = (0, 0)


def _recovery(traffic: Traffic, outage: Outage, rate: float) -> float | None:
    """Seconds from the end of the outage until successes keep ``FULL`` x the offered rate
    in every ``RECOVERY_WINDOW`` up to the end of the offered load; None if they never do."""
    done = sorted(r.done for r in traffic.results if r.ok and r.topic == FLAKY)
    stop = traffic.last_due
    starts = [outage.end + k * SAMPLE for k in range(int((stop - outage.end) / SAMPLE) + 1)]
    starts = [s for s in starts if s + RECOVERY_WINDOW <= stop + 1e-9]
    need = FULL * rate * RECOVERY_WINDOW
    full = [sum(1 for t in done if s <= t < s + RECOVERY_WINDOW) >= need - 1e-9 for s in starts]
    for index in range(len(starts)):
        if all(full[index:]):
            return starts[index] - outage.end
    return None


async def run_outage(job: Job) -> Row:
    gateway = FakeGateway()
    gateway.add_function(FLAKY, topics=FLAKY, latency=Latency(base=job["flaky_base"]))
    rate, before, length = job["outage_rate"], job["outage_before"], job["outage"]
    total = before + length + job["outage_after"]
    outage = Outage()
    budget = RetryBudget()

    async with _running(job, gateway) as controller:

        async def take_down(traffic: Traffic) -> None:
            await anyio.sleep(max(0.0, traffic.t0 + before - time.monotonic()))
            load, retries = gateway.function_stats(FLAKY), controller.stats().retries
            gateway.set_down(FLAKY, status=job["outage_status"], duration=length)
            outage.start = time.monotonic() - traffic.t0
            first = (load.requests, load.statuses.get(job["outage_status"], 0), retries)
            await anyio.sleep(max(0.0, traffic.t0 + outage.start + length - time.monotonic()))
            outage.end = time.monotonic() - traffic.t0
            load, retries = gateway.function_stats(FLAKY), controller.stats().retries
            last = (load.requests, load.statuses.get(job["outage_status"], 0), retries)
            outage.requests, outage.failures, outage.retries = (
                (first[0], last[0]),
                (first[1], last[1]),
                (first[2], last[2]),
            )

        traffic = await drive(
            controller, gateway, {FLAKY: steady(rate, total)}, FLAKY, during=take_down
        )
        state = controller.stats()
    requests = outage.requests[1] - outage.requests[0]
    retries = outage.retries[1] - outage.retries[0]
    firsts = requests - retries  # requests that were first attempts
    # The budget's window ending with the outage: first attempts in it allow retries.
    submitted = traffic.submitted.get(FLAKY, [])
    in_window = sum(1 for t in submitted if outage.end - budget.window <= t < outage.end)
    # A retry is allowed while fewer than ratio x firsts + minimum were made: up to the ceiling.
    allowance = math.ceil(budget.ratio * in_window + budget.minimum)
    ok = sum(r.ok for r in traffic.results)
    recovery = _recovery(traffic, outage, rate)
    function = state.per_function.get(address(FLAKY))
    before_ok = sum(1 for r in traffic.results if r.ok and 1.0 <= r.done < outage.start)
    return _row(
        job,
        3,
        "outage",
        rate=rate,
        outage_s=length,
        outage_status=job["outage_status"],
        messages=len(traffic.results),
        succeeded=ok,
        failed=len(traffic.results) - ok,
        outage_requests=requests,
        outage_failures=outage.failures[1] - outage.failures[0],
        outage_first_attempts=firsts,
        outage_retries=retries,
        budget_allowance=allowance,
        budget_window_first_attempts=in_window,
        load_factor=requests / firsts if firsts else None,
        retries=state.retries,
        denied_retries=None if function is None else function.denied_retries,
        ok_per_s_before=before_ok / (outage.start - 1.0) if outage.start > 1.0 else None,
        recovery_s=recovery,
        elapsed_s=max((r.done for r in traffic.results), default=math.nan),
        outage_start_s=outage.start,
        outage_end_s=outage.end,
        trajectory=_trajectory(traffic),
        error=traffic.stalled,
    )


PARTS: Final = {1: run_overload, 2: run_mixed, 3: run_outage}


async def run_delivery(job: Job) -> None:
    """Scenario g: the parts asked for, one row each, printed as they are done."""
    from _measure import emit  # noqa: PLC0415  (no import cycle at load time)

    for part in job["parts"]:
        emit(await PARTS[part](job))
