"""The child side: run one job (a scenario, a backend, a client) and print one JSON line a row.

Every measurement has a warm-up (excluded) and a measured window bounded twice: a number of
invocations and a time cap. Client CPU is this process's CPU time over the window (the stub is
another process); the stub's CPU over the same window is read from /proc to show whether the stub
was the limit.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
from _clients import (
    Call,
    ControllerDriver,
    HttpxDriver,
    RawDriver,
    open_controller,
    open_httpx,
    open_raw,
)
from _common import (
    BODY,
    FANOUT_FUNCTIONS,
    RESULT_PREFIX,
    TOPIC_FANOUT,
    TOPIC_ONE,
    cpu_seconds,
    peak_rss_bytes,
    percentile,
    process_cpu_seconds,
    reset_peak_rss,
    rss_bytes,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from aioconnector import AsyncController, ResultStream

Job = dict[str, Any]
Row = dict[str, Any]
_TAIL: Final = 0.5  # seconds past the time cap for calls in flight to finish (then cut)
_DRAIN: Final = 30.0  # at most this long for cut submit-mode invocations to finish
_MIB: Final = 1024 * 1024
_MEMORY_WARMUP: Final = 50
_BATCH: Final = 250  # invocations started between two looks at the clock (scenario d)


class _Window:
    """Counts and gauges of one measured window."""

    def __init__(self, stub_pid: int | None) -> None:
        self.remaining = 0
        self.invocations = 0
        self.failed = 0
        self.capped = False  # the time cap ended it before the request budget
        self.cut = 0  # calls still running at cap + tail, cancelled and not counted
        self._stub_pid = stub_pid
        self._stub0 = process_cpu_seconds(stub_pid)
        self._cpu0 = cpu_seconds()
        self._t0 = time.perf_counter()
        self.elapsed = self.cpu = 0.0
        self.stub_cpu: float | None = None

    def stop(self) -> _Window:
        self.elapsed = time.perf_counter() - self._t0
        self.cpu = cpu_seconds() - self._cpu0
        stub1 = process_cpu_seconds(self._stub_pid)
        if self._stub0 is not None and stub1 is not None and self.elapsed > 0:
            self.stub_cpu = (stub1 - self._stub0) / self.elapsed
        return self


def _tail(cap: float) -> float:
    """How long calls in flight at the time cap may still finish before they are cut."""
    return min(_TAIL, cap)


async def closed_loop(
    calls: list[Call], units: int, budget: int, cap: float, stub_pid: int | None
) -> _Window:
    """Every caller loops until ``budget`` invocations are taken or ``cap`` seconds pass.

    Calls in flight when the cap passes may finish during a short tail; those still running
    after it are cancelled and not counted (only a client slower than the tail has any).
    """
    window = _Window(stub_pid)
    window.remaining = budget
    deadline = time.perf_counter() + cap
    clock = time.perf_counter
    running = 0

    async def worker(call: Call) -> None:
        nonlocal running
        while window.remaining > 0:
            window.remaining -= units
            running += 1
            window.failed += await call()
            running -= 1
            window.invocations += units
            if clock() >= deadline:
                window.capped = window.remaining > 0
                return

    with anyio.move_on_after(cap + _tail(cap)) as tail:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(worker, call)
    if tail.cancelled_caught:
        window.capped, window.cut = True, running * units
    return window.stop()


async def submit_loop(
    controller: AsyncController, topic: str, budget: int, cap: float, stub_pid: int | None
) -> _Window:
    """One producer calling ``submit`` and one consumer reading every result.

    ``budget`` counts invocations (``submit`` says how many functions each message matched).
    Results still awaited after the cap and its tail are not counted; the invocations are left
    to finish (uncounted) before the next window starts.
    """
    expected = received = 0
    producing = True
    deadline = time.perf_counter() + cap
    async with controller.results() as stream:
        window = _Window(stub_pid)
        with anyio.move_on_after(cap + _tail(cap)) as tail:
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    nonlocal received
                    async for result in stream:
                        received += 1
                        if not result.ok:
                            window.failed += 1
                        if not producing and received >= expected:
                            tg.cancel_scope.cancel()

                tg.start_soon(consume)
                while expected < budget:
                    if time.perf_counter() >= deadline:
                        window.capped = True
                        break
                    expected += await controller.submit(topic, BODY)
                producing = False
                if received >= expected:
                    tg.cancel_scope.cancel()
        window.invocations = received
        window.stop()
    if tail.cancelled_caught:
        window.capped, window.cut = True, expected - received
        with anyio.move_on_after(_DRAIN):
            while controller.stats().in_flight:  # noqa: ASYNC110  (no event to wait on)
                await anyio.sleep(0.01)
    return window


def _open(job: Job, topic: str, concurrency: int) -> AbstractAsyncContextManager[Any]:
    client, port = job["client"], job["port"]
    if client == "raw":
        return open_raw(job["backend"], port, topic)
    if client == "httpx":
        return open_httpx(port, topic, concurrency)
    buffer = max(256, concurrency)
    return open_controller(
        port,
        topic,
        concurrency,
        via_httpx=client == "aioconnector+httpx",
        result_buffer=buffer,
        metrics=client == "aioconnector+metrics",
    )


def _row(job: Job, case: str, concurrency: int, window: _Window, units: int, **extra: Any) -> Row:
    elapsed = window.elapsed or float("nan")
    invocations = window.invocations
    return {
        "scenario": job["scenario"],
        "case": case,
        "backend": job["backend"],
        "client": job["client"],
        "mode": job["mode"],
        "concurrency": concurrency,
        "invocations": invocations,
        "messages": invocations // units,
        "failed": window.failed,
        "elapsed_s": round(window.elapsed, 4),
        "inv_per_s": invocations / elapsed,
        "msg_per_s": invocations / units / elapsed,
        "cpu_us_per_inv": window.cpu / invocations * 1e6 if invocations else None,
        "rss_mib": rss_bytes() / _MIB,
        "stub_cpu": window.stub_cpu,
        "capped": window.capped,
        "cut": window.cut,
        "error": None,
        **extra,
    }


def emit(row: Row) -> None:
    """Print one row for the parent (non-finite numbers as null: the output is strict JSON)."""
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
    }
    print(RESULT_PREFIX + json.dumps(clean, allow_nan=False), flush=True)


async def _measure(job: Job, driver: Any, calls: list[Call], units: int, budget: int) -> _Window:
    """Warm-up, then the measured window, with callers or (mode submit) the producer loop."""
    pid = job["stub_pid"]
    warm = max(2 * len(calls) * units, budget // 10)
    if job["mode"] == "submit":
        controller = driver.controller
        topic = TOPIC_FANOUT if units == len(FANOUT_FUNCTIONS) else TOPIC_ONE
        await submit_loop(controller, topic, warm, job["warmup_cap"], pid)
        return await submit_loop(controller, topic, budget, job["cap"], pid)
    await closed_loop(calls, units, warm, job["warmup_cap"], pid)
    return await closed_loop(calls, units, budget, job["cap"], pid)


def _invoker(driver: Any) -> str | None:
    return driver.invoker_name() if isinstance(driver, ControllerDriver) else None


async def run_throughput(job: Job) -> None:
    """Scenarios a and b: C callers looping (or one submit loop), stub answering at once."""
    topic = TOPIC_ONE if job["scenario"] == "a" else TOPIC_FANOUT
    for concurrency in job["concurrency"]:
        async with _open(job, topic, concurrency) as driver:
            calls = [driver.caller(k) for k in range(concurrency)]
            window = await _measure(job, driver, calls, driver.units, job["requests"])
            emit(_row(job, topic, concurrency, window, driver.units, invoker=_invoker(driver)))


async def run_latency_bound(job: Job) -> None:
    """Scenario c: the stub answers after ``delay``; rate versus the ideal."""
    delay = job["delay"]
    fan_out = len(FANOUT_FUNCTIONS)
    # One loop, one message at a time, on the fan-out topic: ideal 1/delay messages per second.
    one_loop = dict(
        job,
        mode="invoke" if job["client"].startswith("aio") else "fan-out",
        cap=max(job["cap"], job["messages"] * delay * 2),  # twice the ideal time
    )
    async with _open(job, TOPIC_FANOUT, fan_out) as driver:
        calls = [driver.fan_out_caller()]
        budget = job["messages"] * fan_out
        window = await _measure(one_loop, driver, calls, fan_out, budget)
        ideal = 1 / delay
        emit(_row(one_loop, "one-loop", fan_out, window, fan_out, ideal_msg_per_s=ideal))
    # Bounded concurrency on the one-function topic: ideal C/delay messages per second.
    for concurrency in job["concurrency"]:
        async with _open(job, TOPIC_ONE, concurrency) as driver:
            calls = [driver.caller(k) for k in range(concurrency)]
            budget = round(concurrency * job["cap"] / delay * 0.6)  # ~60% of the cap at ideal
            window = await _measure(job, driver, calls, 1, budget)
            ideal = concurrency / delay
            emit(_row(job, "bounded", concurrency, window, 1, ideal_msg_per_s=ideal))


async def _run_one(call: Call, tally: list[int]) -> None:
    failed = await call()
    tally[1] += 1
    tally[2] += failed


async def _warm_up_many(driver: Any, pid: int | None) -> AsyncController | None:
    """A few concurrent calls before the baseline; the controller, for aioconnector."""
    if isinstance(driver, ControllerDriver):
        await submit_loop(driver.controller, TOPIC_ONE, _MEMORY_WARMUP, 30.0, pid)
        return driver.controller
    assert isinstance(driver, RawDriver | HttpxDriver)
    async with anyio.create_task_group() as tg:
        for _ in range(_MEMORY_WARMUP):
            tg.start_soon(_run_one, driver.one_shot(), [0, 0, 0])
    return None


async def run_memory(job: Job) -> None:
    """Scenario d: N invocations in flight at once; RSS before, peak, and per invocation.

    Exits the process as soon as the row is printed: tearing down 10,000 connections (or, for
    httpx past its time cap, 10,000 queued requests) would measure nothing and take long.
    """
    n, cap, pid = job["in_flight"], job["cap"], job["stub_pid"]
    tally = [0, 0, 0]  # started, finished, failed
    async with _open(job, TOPIC_ONE, n) as driver, anyio.create_task_group() as tg:
        controller = await _warm_up_many(driver, pid)
        gc.collect()
        before = peak = rss_bytes()
        peak_reset = reset_peak_rss()
        in_flight_max = 0
        window = _Window(pid)
        deadline = time.perf_counter() + cap
        starting = True  # invocations are still being started

        async def submit_all(ctl: AsyncController) -> None:
            nonlocal starting
            for _ in range(n):
                if time.perf_counter() >= deadline:
                    break
                tally[0] += await ctl.submit(TOPIC_ONE, BODY)
            starting = False

        async def consume(stream: ResultStream) -> None:
            async for result in stream:
                tally[1] += 1
                tally[2] += not result.ok

        if controller is not None:
            tg.start_soon(consume, controller.results())  # subscribed before the first submit
            tg.start_soon(submit_all, controller)
        while time.perf_counter() < deadline:
            if controller is None and starting:
                # Started in batches, so that a client whose cost grows with the number in
                # flight (httpx's pool) still stops near the time cap.
                for _ in range(min(_BATCH, n - tally[0])):
                    tg.start_soon(_run_one, driver.one_shot(), tally)
                    tally[0] += 1
                starting = tally[0] < n
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(0.005)
            peak = max(peak, rss_bytes())
            in_flight = tally[0] - tally[1] if controller is None else controller.stats().in_flight
            in_flight_max = max(in_flight_max, in_flight)
            if not starting and tally[1] >= tally[0]:
                break
        window.stop()
        window.invocations, window.failed = tally[1], tally[2]
        window.capped = tally[1] < n
        if peak_reset:
            peak = max(peak, peak_rss_bytes())
        emit(
            _row(
                job,
                "in-flight",
                n,
                window,
                1,
                invoker=_invoker(driver),
                in_flight_target=n,
                in_flight_max=in_flight_max,
                rss_before_mib=before / _MIB,
                rss_peak_mib=peak / _MIB,
                bytes_per_in_flight=(peak - before) / in_flight_max if in_flight_max else None,
                started=tally[0],
                bytes_per_started=(peak - before) / tally[0] if tally[0] else None,
                # Per invocation started: past the time cap, few may have finished.
                cpu_us_per_inv=window.cpu / tally[0] * 1e6 if tally[0] else None,
                delay=job["delay"],
            )
        )
        sys.stdout.flush()
        os._exit(0)


async def run_added_latency(job: Job) -> None:
    """Scenario e: sequential calls paced at ``rate`` per second; latency percentiles."""
    calls, rate, pid = job["calls"], job["rate"], job["stub_pid"]
    async with _open(job, TOPIC_ONE, 1) as driver:
        call = driver.caller(0)
        latencies: list[float] = []
        window: _Window | None = None
        for phase, count in (("warm-up", max(10, calls // 10)), ("measured", calls)):
            if phase == "measured":
                latencies.clear()
                window = _Window(pid)
            failed = 0
            start = time.perf_counter()
            for index in range(count):
                wait = start + index / rate - time.perf_counter()
                if wait > 0:
                    await anyio.sleep(wait)
                sent = time.perf_counter()
                failed += await call()
                latencies.append(time.perf_counter() - sent)
        assert window is not None
        window.stop()
        window.invocations, window.failed = len(latencies), failed
        ordered = sorted(latencies)
        emit(
            _row(
                job,
                "paced",
                1,
                window,
                1,
                invoker=_invoker(driver),
                rate=rate,
                p50_ms=percentile(ordered, 0.50) * 1e3,
                p99_ms=percentile(ordered, 0.99) * 1e3,
                max_ms=ordered[-1] * 1e3,
                mean_ms=sum(ordered) / len(ordered) * 1e3,
            )
        )


async def run_policy(job: Job) -> None:
    """Scenario g (``_delivery.py``): imported here, so other children do without it."""
    from _delivery import run_delivery  # noqa: PLC0415

    await run_delivery(job)


async def run_matching(job: Job) -> None:
    """Scenario h (``_matching.py``)."""
    from _matching import run_matching as run  # noqa: PLC0415

    await run(job)


RUNNERS: Final = {
    "a": run_throughput,
    "b": run_throughput,
    "c": run_latency_bound,
    "d": run_memory,
    "e": run_added_latency,
    "g": run_policy,
    "h": run_matching,
}


def child_main(job: Job) -> None:
    """Run ``job`` on its backend in this (fresh) process."""
    runner = RUNNERS[job["scenario"]]
    backend = job["backend"]
    if backend == "trio":
        anyio.run(runner, job, backend="trio")
    else:
        options = {"use_uvloop": backend == "uvloop"}
        anyio.run(runner, job, backend="asyncio", backend_options=options)
