"""Soak test: many invocations through a controller under random faults; no loss, no leak.

Runs a FakeGateway on loopback and an AsyncController (max_concurrency 64) in one process,
submits about ``--invocations`` invocations over a few topics while injecting seeded random
faults (429 with ``Retry-After: 0``, 503 then ok, dropped connections, functions slower than
``upstream_timeout``), consumes every result and then checks:

- no loss, no duplicate: exactly one result per (message, function);
- no leak: resident memory grows by at most ``--rss-growth-limit`` percent (default 25) from
  20% of the run to its end.

Why 25%: by 20% of the run the process is warm (every pooled connection open, buffers and
caches at their working size, the allocator's arenas populated), so what grows after that is
what the run keeps. The warm RSS is ~45 MiB here; a leak of ~150 bytes per invocation over the
remaining 80,000 invocations (~11 MiB) crosses 25% and is caught, while the allocator's
fragmentation and the garbage collector's timing (a MiB or two) stay far inside. Use a lower
limit with more invocations to catch smaller leaks.

Usage::

    python benchmarks/soak.py [--invocations 100000] [--seed N] [--backend asyncio|trio]

Exit status: 0 when both checks pass, 1 on lost or duplicated results, 2 on memory growth.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import attrs

from aioconnector import AsyncController, ControllerConfig, ResultStream
from aioconnector.testing import FakeGateway

NAMESPACE: Final = "openfaas-fn"
#: topic -> function names; "audit" listens to two topics.
TOPOLOGY: Final = {
    "orders": ("orders-a", "orders-b", "audit"),
    "payments": ("payments", "audit"),
    "emails": ("mailer",),
    "events": ("events-a", "events-b"),
}
FAULT_KINDS: Final = ("429", "503", "drop", "slow")
PROC_STATUS: Final = Path("/proc/self/status")
MIB: Final = 1024 * 1024


def rss_bytes() -> tuple[int, str]:
    """Resident set size now, and where it came from.

    ``/proc/self/status`` (VmRSS) where there is one; otherwise ``getrusage``'s ru_maxrss,
    which is the *peak* RSS (KiB on Linux, bytes on macOS): growth then reads as an upper bound.
    """
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024, "VmRSS"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak if sys.platform == "darwin" else peak * 1024), "ru_maxrss (peak)"


@attrs.define
class Sample:
    elapsed: float
    done: int
    rss: int


@attrs.define
class Run:
    """What the run saw, filled in as it goes."""

    target: int
    messages: int = 0
    submitted: int = 0  # invocations admitted (sum of the messages' fan-outs)
    done: int = 0  # results received
    outcomes: Counter[str] = attrs.field(factory=Counter)
    injected: Counter[str] = attrs.field(factory=Counter)
    samples: list[Sample] = attrs.field(factory=list)
    rss_source: str = ""
    elapsed: float = 0.0
    retries: int = 0
    succeeded: int = 0
    failed: int = 0
    refreshes: int = 0
    gateway_requests: int = 0
    peak_in_flight: int = 0
    lost: int = 0
    doubled: int = 0
    stray: int = 0


def outcome(error: BaseException | None) -> str:
    return "ok" if error is None else type(error).__name__


class Soak:
    """One soak run: the gateway, the fault injector, the consumer and the memory sampler."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)  # noqa: S311  (seeded, for reproducible runs)
        self.run = Run(target=args.invocations)
        self.gateway = FakeGateway()
        for name in sorted({f for fs in TOPOLOGY.values() for f in fs}):
            self.gateway.add_function(name, topics=[t for t, fs in TOPOLOGY.items() if name in fs])
        self.topics = sorted(TOPOLOGY)
        functions = sorted({f"{f}.{NAMESPACE}" for fs in TOPOLOGY.values() for f in fs})
        self.index = {address: i for i, address in enumerate(functions)}
        self.width = len(functions)
        # Preallocated, so the bookkeeping itself does not grow during the run: a counter per
        # (message, function), and each message's topic.
        self.seen = bytearray(args.invocations * self.width)
        self.topic_of = bytearray(args.invocations)
        self.requests_seen = 0
        self.fan_out: dict[str, tuple[str, ...]] = {}

    async def main(self) -> Run:
        run, args = self.run, self.args
        stop = anyio.Event()
        async with self.gateway.serve() as url, anyio.create_task_group() as tg:
            config = ControllerConfig(
                gateway_url=url,
                max_concurrency=args.max_concurrency,
                upstream_timeout=args.upstream_timeout,
                rebuild_interval=5.0,  # the topic map is swapped during the run, as in production
                result_buffer=1024,
                drain_timeout=60.0,
            )
            started = time.perf_counter()
            tg.start_soon(self.sample, stop, started)
            async with AsyncController(config) as controller:
                self.fan_out = {t: controller.functions_for(t) for t in self.topics}
                tg.start_soon(self.consume, controller.results())
                await self.submit_all(controller)
                # Leaving drains every submitted invocation, then ends the results stream.
            stats = controller.stats()
            run.elapsed = time.perf_counter() - started
            stop.set()
        gc.collect()
        rss, _ = rss_bytes()
        run.samples.append(Sample(run.elapsed, run.done, rss))
        self.requests_seen += sum(r.function is not None for r in self.gateway.requests)
        run.gateway_requests = self.requests_seen
        run.peak_in_flight = self.gateway.peak_in_flight
        run.retries, run.refreshes = stats.retries, stats.refreshes
        run.succeeded, run.failed = stats.invocations_succeeded, stats.invocations_failed
        self.check()
        return run

    async def submit_all(self, controller: AsyncController) -> None:
        run, rng = self.run, self.rng
        while run.submitted < run.target and run.messages < run.target:
            topic_index = rng.randrange(len(self.topics))
            functions = self.fan_out[self.topics[topic_index]]
            if rng.random() < self.args.fault_rate * len(functions):
                self.inject(rng.choice(functions))
            message = run.messages
            self.topic_of[message] = topic_index
            run.submitted += await controller.submit(
                self.topics[topic_index], str(message), context=message
            )
            run.messages += 1

    def inject(self, function: str) -> None:
        """A fault for the next request(s) to ``function``, whichever message they carry."""
        kind = self.rng.choice(FAULT_KINDS)
        self.run.injected[kind] += 1
        name, gw = function.rpartition(".")[0], self.gateway
        if kind == "429":
            gw.set_fault(name, status=429, headers={"Retry-After": "0"}, times=1)
        elif kind == "503":  # scaling from zero: one or two 503s, then the function answers
            times = self.rng.randint(1, 2)
            gw.set_fault(name, status=503, body="No endpoints available", times=times)
        elif kind == "drop":
            gw.set_fault(name, drop_connection=True, times=1)
        else:
            gw.set_fault(name, latency=self.args.upstream_timeout * 1.5, times=1)

    async def consume(self, stream: ResultStream) -> None:
        run, seen = self.run, self.seen
        async with stream:
            async for result in stream:
                assert isinstance(result.context, int)
                slot = result.context * self.width + self.index[result.function]
                if seen[slot] < 255:
                    seen[slot] += 1
                run.outcomes[outcome(result.error)] += 1
                run.done += 1

    async def sample(self, stop: anyio.Event, started: float) -> None:
        """Every second: RSS and progress; also empties the gateway's request recording,
        which would otherwise grow with the run."""
        run = self.run
        next_report = 10.0
        while not stop.is_set():
            self.requests_seen += sum(r.function is not None for r in self.gateway.requests)
            self.gateway.requests.clear()
            rss, run.rss_source = rss_bytes()
            elapsed = time.perf_counter() - started
            run.samples.append(Sample(elapsed, run.done, rss))
            if elapsed >= next_report:
                next_report += 10.0
                print(
                    f"  [{elapsed:6.0f}s] {run.done:>9,}/{run.target:,} results, "
                    f"RSS {rss / MIB:6.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            with anyio.move_on_after(1.0):
                await stop.wait()

    def check(self) -> None:
        """Exactly one result per (message, function of its topic); none anywhere else."""
        run = self.run
        expected = [{self.index[a] for a in self.fan_out[t]} for t in self.topics]
        for message in range(run.messages):
            wanted = expected[self.topic_of[message]]
            row = self.seen[message * self.width : (message + 1) * self.width]
            for column, count in enumerate(row):
                if column in wanted:
                    run.lost += count == 0
                    run.doubled += count > 1
                else:
                    run.stray += count


def sample_at(run: Run, fraction: float) -> Sample:
    """The first sample taken once ``fraction`` of the results had arrived."""
    goal = fraction * run.submitted
    return next((s for s in run.samples if s.done >= goal), run.samples[-1])


def report(run: Run, limit: float) -> int:
    rows: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))

    row("invocations (results)", f"{run.done:,} of {run.submitted:,} submitted")
    row("messages", f"{run.messages:,}")
    row("total time", f"{run.elapsed:,.1f} s")
    row("throughput", f"{run.done / run.elapsed:,.0f} invocations/s")
    for name, count in run.outcomes.most_common():
        row(f"  result: {name}", f"{count:,} ({100 * count / max(run.done, 1):.2f}%)")
    for kind in FAULT_KINDS:
        row(f"  fault injected: {kind}", f"{run.injected[kind]:,}")
    row("retries", f"{run.retries:,}")
    row("invocation requests at gateway", f"{run.gateway_requests:,} (results + retries)")
    row("peak in flight at gateway", f"{run.peak_in_flight}")
    row("topic map refreshes", f"{run.refreshes}")
    row("lost / doubled / stray", f"{run.lost} / {run.doubled} / {run.stray}")
    rss = [s.rss for s in run.samples]
    at10, at20, end = sample_at(run, 0.10), sample_at(run, 0.20), run.samples[-1]
    row(
        f"RSS samples ({run.rss_source})",
        f"{len(rss)}, min {min(rss) / MIB:.1f} MiB, max {max(rss) / MIB:.1f} MiB",
    )
    row(
        "RSS at 10% / 20% / end",
        f"{at10.rss / MIB:.1f} / {at20.rss / MIB:.1f} / {end.rss / MIB:.1f} MiB",
    )
    growth10 = end.rss - at10.rss
    growth20 = end.rss - at20.rss
    row("RSS growth 10% -> end", f"{growth10 / MIB:+.1f} MiB ({100 * growth10 / at10.rss:+.1f}%)")
    row(
        "RSS growth 20% -> end",
        f"{growth20 / MIB:+.1f} MiB ({100 * growth20 / at20.rss:+.1f}%)  [limit {limit:g}%]",
    )
    width = max(len(name) for name, _ in rows)
    print()
    print("aioconnector soak".center(width + 30, "="))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("=" * (width + 30))

    status = 0
    if run.lost or run.doubled or run.stray or run.done != run.submitted:
        print("FAIL: results were lost or duplicated")
        status = 1
    elif 100 * growth20 / at20.rss > limit:
        print(f"FAIL: RSS grew more than {limit:g}% from 20% of the run to its end")
        status = 2
    else:
        print("OK: one result per (message, function); memory stable")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--invocations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--upstream-timeout", type=float, default=5.0)
    parser.add_argument(
        "--fault-rate", type=float, default=0.005, help="chance of a fault per invocation"
    )
    parser.add_argument("--rss-growth-limit", type=float, default=25.0, help="percent")
    args = parser.parse_args(argv)
    if args.invocations < 10:
        parser.error("--invocations must be at least 10")
    print(
        f"soak: {args.invocations:,} invocations, seed {args.seed}, {args.backend}, "
        f"max_concurrency {args.max_concurrency}, fault rate {args.fault_rate:g}/invocation",
        file=sys.stderr,
        flush=True,
    )
    run = anyio.run(Soak(args).main, backend=args.backend)
    return report(run, args.rss_growth_limit)


if __name__ == "__main__":
    sys.exit(main())
