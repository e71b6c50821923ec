"""Benchmarks of aioconnector against a loopback stub gateway, with the ceiling measured alongside.

Run with ``nox -s bench`` (or ``python benchmarks/bench.py``); ``--help`` lists the options.
The parent starts ``stub_server.py`` processes (one per stub delay), runs every measurement in a
fresh child process (``bench.py --child JOB``) one after another, collects the children's JSON
rows, prints one table per scenario plus the targets, and writes ``benchmarks/results.json``.

Scenarios (each on asyncio, uvloop when installed, and trio):

- a: throughput on a one-function topic, C = 1, 16, 64, 256;
- b: fan-out on a four-function topic;
- c: latency-bound (stub delay 50 ms): one consumer loop on the fan-out topic, and C in flight;
- d: memory with 10,000 invocations in flight (stub delay 1 s);
- e: added latency at 100 invocations/s, over the raw client's (= the stub's own) latency;
- f: idle RSS of a running controller (topic map built, no message), and with the library imported;
- g: delivery policy, fixed bound vs adaptive concurrency (asyncio and trio only), against an
  in-process ``FakeGateway``: 1. a function with ``max_inflight=4`` flooded, 2. that function
  and a fast one on two topics, 3. a 5 s outage under steady load (``_delivery.py``);
- h: topic matching at 10,000 subscriptions, per ``topic_matching`` dialect (exact, nats, mqtt,
  amqp): µs per ``functions_for`` for a plain topic, a cached topic and a new one, and the
  map's build time and size (``_matching.py``; no gateway, the first backend only).

Clients, all measured in the same run: ``raw`` (a minimal HTTP/1.1 keep-alive client: the
ceiling), ``httpx`` (a bare ``AsyncClient`` with ``Limits(C, C)``), ``aioconnector``
(``AsyncController(config)``) and ``aioconnector+httpx`` (with an explicit httpx transport); with
``--go-peer PATH``, also the Go connector-sdk (``benchmarks/go/``) in a, b and f.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Final

import _gopeer
from _common import HOST, RESULT_PREFIX, load_average, raise_fd_limit
from _report import BACKENDS, attach_ratios, evaluate_targets, print_report

HERE: Final = Path(__file__).resolve().parent
SRC: Final = HERE.parent / "src"
STUB: Final = HERE / "stub_server.py"
IDLE_CHILD: Final = HERE / "_idle.py"  # scenario f's aioconnector child: lean on purpose
DEFAULT_OUTPUT: Final = HERE / "results.json"
SCENARIOS: Final = ("a", "b", "c", "d", "e", "f", "g", "h")
#: Scenario g measures behaviour, not speed: asyncio and trio (uvloop behaves as asyncio).
POLICY_BACKENDS: Final = ("asyncio", "trio")
POLICY_PARTS: Final = (1, 2, 3)
POLICY_MODES: Final = ("fixed", "adaptive")
#: (client, mode) measured per scenario.
_LOOPING: Final = (("raw", "loop"), ("httpx", "loop"))
# The httpx path is measured with invoke only: it is the baseline, and its windows are slow.
_CONTROLLER: Final = (
    ("aioconnector", "invoke"),
    ("aioconnector", "submit"),
    ("aioconnector+httpx", "invoke"),
)
PLAN: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    # Scenario a also measures invoke with Prometheus metrics on: their cost per invocation.
    "a": (*_LOOPING, *_CONTROLLER, ("aioconnector+metrics", "invoke")),
    "b": _LOOPING + _CONTROLLER,
    "c": (*_LOOPING, ("aioconnector", "submit"), ("aioconnector+httpx", "submit")),
    "d": (
        ("raw", "conn/call"),
        ("httpx", "task/call"),
        ("aioconnector", "submit"),
        ("aioconnector+httpx", "submit"),
    ),
    "e": (
        ("raw", "paced"),
        ("httpx", "paced"),
        ("aioconnector", "invoke"),
        ("aioconnector+httpx", "invoke"),
    ),
    "f": (("aioconnector", "idle"),),  # raw and bare httpx hold no topic map: nothing to compare
    "g": (("aioconnector", "fixed"), ("aioconnector", "adaptive")),
    "h": tuple(("aioconnector", matching) for matching in ("exact", "nats", "mqtt", "amqp")),
}


@dataclass(frozen=True)
class Settings:
    requests: int = 20_000  # per measured window of a and b, with time_cap
    time_cap: float = 1.0
    warmup_cap: float = 0.2
    concurrency: tuple[int, ...] = (1, 16, 64, 256)
    fanout_concurrency: tuple[int, ...] = (16, 64)
    latency_delay: float = 0.05
    one_loop_messages: int = 20
    bounded_concurrency: tuple[int, ...] = (64, 256)
    bounded_cap: float = 1.0
    in_flight: int = 10_000
    memory_delay: float = 2.0  # long enough for every client that can to get N in flight
    memory_cap: float = 10.0
    latency_calls: int = 400
    latency_rate: float = 100.0
    idle_concurrency: int = 64  # max_concurrency of the idle controller (the config's default)
    idle_wait: float = 0.5  # seconds idle after entering, before RSS is read (f)
    # g: delivery policy (see _delivery.py)
    policy_concurrency: int = 64
    overload_messages: int = 2_000
    slow_max_inflight: int = 4
    slow_base: float = 0.01
    slow_per_inflight: float = 0.002
    fast_base: float = 0.002
    fast_rate: float = 400.0  # offered to the fast function (2)
    slow_rate: float = 400.0  # offered to the slow one: more than it can take (2)
    mixed_duration: float = 3.0
    flaky_base: float = 0.01
    outage_rate: float = 300.0
    outage_before: float = 2.0
    outage: float = 5.0
    outage_after: float = 4.0
    outage_status: int = 503
    # h: topic matching
    match_subscriptions: int = 10_000
    match_lookups: int = 100_000  # per measured loop (plain, hit, miss), best of 5


QUICK: Final = Settings(
    requests=400,
    time_cap=0.3,
    warmup_cap=0.1,
    concurrency=(1, 16),
    fanout_concurrency=(16,),
    one_loop_messages=4,
    bounded_concurrency=(16,),
    bounded_cap=0.5,
    in_flight=300,
    memory_delay=1.0,
    memory_cap=5.0,
    latency_calls=30,
    overload_messages=100,
    fast_rate=200.0,
    slow_rate=200.0,
    mixed_duration=0.5,
    outage_rate=100.0,
    match_lookups=5_000,
    match_subscriptions=1_000,
    outage_before=0.5,
    outage=0.5,
    outage_after=0.6,
)


# -- where the processes run -------------------------------------------------------------------


def _cpu_split() -> tuple[set[int], set[int]]:
    """The stub's CPU and the clients' CPUs; both empty where they cannot be pinned.

    Left to the scheduler on 2 cores, the stub and the client sometimes share one and the
    same client measures half as fast as in the run before (the raw asyncio client: 36 k/s or
    75 k/s). Pinned, each has a core of its own, in every run.
    """
    if not hasattr(os, "sched_getaffinity"):
        return set(), set()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(), set()
    return {cpus[-1]}, set(cpus[:-1])


STUB_CPUS, CLIENT_CPUS = _cpu_split()


def pin(pid: int, cpus: set[int]) -> None:
    if cpus:
        with contextlib.suppress(OSError):  # the process may already have ended
            os.sched_setaffinity(pid, cpus)


# -- the stub gateway --------------------------------------------------------------------------


class Stub:
    """``stub_server.py`` in its own process, on uvloop when installed."""

    def __init__(self, delay: float, *, uvloop: bool) -> None:
        command = [sys.executable, str(STUB), "--host", HOST, "--port", "0"]
        command += ["--delay", repr(delay), "--functions", "4"] + (["--uvloop"] if uvloop else [])
        self.delay = delay
        self.uvloop = uvloop
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
        pin(self.process.pid, STUB_CPUS)
        self.port = self._read_port(self.process.stdout)

    def _read_port(self, stdout: IO[str] | None) -> int:
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if selector.select(timeout=30):
                line = stdout.readline()
                if line.startswith("PORT "):
                    return int(line.split()[1])
        self.stop()
        raise RuntimeError(f"the stub server (delay {self.delay}) did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- jobs ----------------------------------------------------------------------------------------


def _plan(scenario: str, go_peer: Path | None) -> tuple[tuple[str, str], ...]:
    """``PLAN[scenario]``, with the Go peer after the looping clients when there is one."""
    plan = PLAN[scenario]
    if go_peer is None or scenario not in _gopeer.SCENARIOS:
        return plan
    mode = "idle" if scenario == "f" else "invoke"
    split = sum(1 for entry in plan if entry in _LOOPING)
    return (*plan[:split], (_gopeer.CLIENT, mode), *plan[split:])


def _policy_job(s: Settings, policy: dict[str, Any]) -> dict[str, Any]:
    """Scenario g's settings for its child; ``policy``: parts, adaptive options, max_waiting."""
    job = {
        "delay": None,  # no stub: the child serves a FakeGateway itself
        "max_concurrency": s.policy_concurrency,
        "overload_messages": s.overload_messages,
        "slow_max_inflight": s.slow_max_inflight,
        "slow_base": s.slow_base,
        "slow_per_inflight": s.slow_per_inflight,
        "fast_base": s.fast_base,
        "fast_rate": s.fast_rate,
        "slow_rate": s.slow_rate,
        "mixed_duration": s.mixed_duration,
        "flaky_base": s.flaky_base,
        "outage_rate": s.outage_rate,
        "outage_before": s.outage_before,
        "outage": s.outage,
        "outage_after": s.outage_after,
        "outage_status": s.outage_status,
        **policy,
    }
    # Part 1 at the slow function's ~250 msg/s, part 2 twice (solo, mixed) and its drain,
    # part 3 as long as its load: generous, for a loaded machine.
    parts = policy["parts"]
    seconds = (s.overload_messages / 50 if 1 in parts else 0) + 60
    seconds += 4 * s.mixed_duration + 30 if 2 in parts else 0
    seconds += s.outage_before + s.outage + s.outage_after + 30 if 3 in parts else 0
    job["timeout"] = seconds
    return job


def build_jobs(
    scenarios: list[str],
    backends: list[str],
    clients: list[str],
    settings: Settings,
    go_peer: Path | None = None,
    *,
    policy: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    s = settings
    policy = policy or {
        "parts": list(POLICY_PARTS),
        "modes": list(POLICY_MODES),
        "adaptive": {},
        "max_waiting": 1024,
    }
    for scenario in scenarios:
        for backend in backends:
            if scenario == "g" and backend not in POLICY_BACKENDS:
                continue
            if scenario == "h" and backend != backends[0]:
                continue  # no I/O: one backend says it all
            for client, mode in _plan(scenario, go_peer):
                if client not in clients and client != _gopeer.CLIENT:
                    continue
                if scenario == "g" and mode not in policy["modes"]:
                    continue
                job: dict[str, Any] = {
                    "scenario": scenario,
                    "backend": backend,
                    "client": client,
                    "mode": mode,
                    "warmup_cap": s.warmup_cap,
                }
                if client == _gopeer.CLIENT:
                    job["go_peer"] = str(go_peer)
                if scenario in ("a", "b"):
                    concurrency = s.concurrency if scenario == "a" else s.fanout_concurrency
                    job |= {"delay": 0.0, "concurrency": list(concurrency)}
                    job |= {"requests": s.requests, "cap": s.time_cap}
                    job["timeout"] = len(concurrency) * (s.time_cap + s.warmup_cap + 15) + 60
                elif scenario == "c":
                    job |= {"delay": s.latency_delay, "concurrency": list(s.bounded_concurrency)}
                    job |= {"messages": s.one_loop_messages, "cap": s.bounded_cap}
                    rounds = 1 + len(s.bounded_concurrency)
                    job["timeout"] = rounds * (s.bounded_cap + s.warmup_cap + 15) + 60
                elif scenario == "d":
                    job |= {"delay": s.memory_delay, "in_flight": s.in_flight}
                    job |= {"cap": s.memory_cap, "timeout": s.memory_cap + 120}
                elif scenario == "g":
                    job |= _policy_job(s, policy)
                elif scenario == "h":
                    job |= {"delay": None, "subscriptions": s.match_subscriptions}
                    job |= {"lookups": s.match_lookups, "timeout": 300}
                elif scenario == "f":
                    job |= {"delay": 0.0, "concurrency": s.idle_concurrency}
                    job |= {"idle": s.idle_wait, "timeout": s.idle_wait + 60}
                else:
                    job |= {"delay": 0.0, "calls": s.latency_calls, "rate": s.latency_rate}
                    job["timeout"] = s.latency_calls * 1.1 / s.latency_rate * 1.5 + 60
                jobs.append(job)
    return jobs


def child_command(job: dict[str, Any]) -> list[str]:
    """``bench.py --child JOB``; ``_idle.py JOB`` for aioconnector in f, whose RSS is measured
    without the bench's own modules."""
    if job["scenario"] == "f" and job["client"] != _gopeer.CLIENT:
        return [sys.executable, str(IDLE_CHILD), json.dumps(job)]
    return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]


def run_child(job: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Run one job in a fresh interpreter; its rows, and what went wrong if anything did."""
    command = child_command(job)
    process = subprocess.Popen(  # noqa: S603
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pin(process.pid, CLIENT_CPUS)
    problem = None
    try:
        out, err = process.communicate(timeout=job["timeout"])
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        problem = f"killed after {job['timeout']:.0f} s"
    except BaseException:  # Ctrl-C: the child goes too
        process.kill()
        process.wait()
        raise
    rows = [
        json.loads(line[len(RESULT_PREFIX) :])
        for line in out.splitlines()
        if line.startswith(RESULT_PREFIX)
    ]
    if problem is None and process.returncode != 0:
        problem = f"exit status {process.returncode}"
    if problem is None and not rows:
        problem = "no result"
    if problem is not None:
        tail = "\n    ".join(err.strip().splitlines()[-12:])
        problem = f"{problem}{':' if tail else ''}\n    {tail}" if tail else problem
    return rows, problem


def _summary(rows: list[dict[str, Any]]) -> str:
    parts = []
    for row in rows:
        if row["scenario"] == "d":
            per = row.get("bytes_per_in_flight")
            kib = "-" if per is None else f"{per / 1024:.1f} KiB/inv"
            parts.append(f"{row['in_flight_max']:,} in flight, {kib}")
        elif row["scenario"] == "e":
            parts.append(f"p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms")
        elif row["scenario"] == "g":
            parts.append(_policy_summary(row))
        elif row["scenario"] == "h":
            parts.append(f"hit {row['hit_us']:.2f} us, miss {row['miss_us']:.2f} us")
        elif row["scenario"] == "f":
            imported = row.get("rss_imported_mib")
            before = "" if imported is None else f"imported {imported:.1f} MiB, "
            parts.append(f"{before}running {row['rss_mib']:.1f} MiB")
        else:
            parts.append(f"{row['case'][:3]} C={row['concurrency']} {row['inv_per_s']:,.0f} inv/s")
    return "; ".join(parts)


def _policy_summary(row: dict[str, Any]) -> str:
    if row["part"] == 1:
        return f"1: {row['failed']} failed, {row['throttled']} 429s, {row['msg_per_s']:.0f} msg/s"
    if row["part"] == 2:
        share = row["fast_share_of_solo"]
        shown = "-" if share is None else f"{share * 100:.0f}%"
        return f"2: fast {shown} of solo, p99 {row['fast_p99_ms'] or 0:.1f} ms"
    recovery = row["recovery_s"]
    back = "never" if recovery is None else f"{recovery:.1f} s"
    return f"3: {row['outage_retries']} retries in outage, recovered {back}"


# -- the command line ----------------------------------------------------------------------------


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose among {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _parts(text: str) -> list[int]:
    names = _names(text, tuple(map(str, POLICY_PARTS)), "--parts")
    return sorted(int(name) for name in names)


def _adaptive_options(text: str) -> dict[str, Any]:
    """``initial=4,hold=0``: AdaptiveConcurrency's fields, checked by building one."""
    from aioconnector import AdaptiveConcurrency  # noqa: PLC0415  (after the path fix)

    options: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {part!r}")
        try:
            options[name.strip()] = None if value == "None" else json.loads(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None
    try:
        AdaptiveConcurrency(**options)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency values must be >= 1")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from _clients import CLIENTS  # noqa: PLC0415  (imports aioconnector: after the path fix)

    parser = argparse.ArgumentParser(
        description="aioconnector benchmarks against a loopback stub gateway (see the module "
        "docstring and benchmarks/README.md)."
    )
    parser.add_argument(
        "--scenario",
        type=lambda t: _names(t, SCENARIOS, "--scenario"),
        default=list(SCENARIOS),
        help="comma-separated, among a,b,c,d,e,f,g,h (default: all)",
    )
    parser.add_argument(
        "--backend",
        type=lambda t: _names(t, BACKENDS, "--backend"),
        help="comma-separated, among asyncio,uvloop,trio (default: all installed; "
        "asyncio with --quick)",
    )
    parser.add_argument(
        "--client",
        type=lambda t: _names(t, CLIENTS, "--client"),
        default=list(CLIENTS),
        help=f"comma-separated, among {','.join(CLIENTS)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few requests per measurement (smoke test)"
    )
    parser.add_argument("--requests", type=int, help="invocations per window (a, b)")
    parser.add_argument("--time-cap", type=float, help="seconds per window (a, b)")
    parser.add_argument("--concurrency", type=_ints, help="C values for scenario a")
    parser.add_argument("--in-flight", type=int, help="invocations in flight (d)")
    parser.add_argument("--memory-delay", type=float, help="stub delay in seconds (d)")
    parser.add_argument("--memory-cap", type=float, help="time cap in seconds (d)")
    parser.add_argument("--latency-calls", type=int, help="paced calls (e)")
    parser.add_argument(
        "--parts",
        type=_parts,
        default=list(POLICY_PARTS),
        help="scenario g's parts: 1 overload, 2 mixed, 3 outage (default: 1,2,3)",
    )
    parser.add_argument(
        "--policy",
        type=lambda t: _names(t, POLICY_MODES, "--policy"),
        default=list(POLICY_MODES),
        help="scenario g's policies: fixed, adaptive (default: both)",
    )
    parser.add_argument(
        "--adaptive",
        type=_adaptive_options,
        default={},
        metavar="NAME=VALUE,...",
        help="scenario g: AdaptiveConcurrency's fields for the adaptive runs, e.g. "
        "initial=4,hold=0,max_hold=0 (default: its defaults)",
    )
    parser.add_argument(
        "--max-waiting",
        type=_positive,
        default=1024,
        help="scenario g: ControllerConfig.max_waiting (default: 1024, the config's default)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the JSON results (default: {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--go-peer",
        type=_gopeer.check,
        default=os.environ.get(_gopeer.ENV) or None,
        metavar="PATH",
        help="the Go peer's binary (benchmarks/go/, see benchmarks/README.md): another client "
        f"in scenarios a, b and f, and a 'vs go' ratio (default: ${_gopeer.ENV}, else none)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace) -> Settings:
    settings = QUICK if args.quick else Settings()
    overrides = {
        "requests": args.requests,
        "time_cap": args.time_cap,
        "concurrency": args.concurrency,
        "in_flight": args.in_flight,
        "memory_delay": args.memory_delay,
        "memory_cap": args.memory_cap,
        "latency_calls": args.latency_calls,
    }
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("aioconnector", "httpx", "httpcore", "h11", "anyio", "trio", "uvloop"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    if versions["aioconnector"] is None:
        from aioconnector import __version__  # noqa: PLC0415  (run from a checkout)

        versions["aioconnector"] = f"{__version__} (source tree)"
    return versions


def _child(job: dict[str, Any]) -> None:
    if job["client"] == _gopeer.CLIENT:
        _gopeer.run(job)
        return
    from _measure import child_main  # noqa: PLC0415  (the child only)

    child_main(job)


def _start_stubs(jobs: list[dict[str, Any]], stubs: dict[float, Stub], *, uvloop: bool) -> None:
    """One stub per delay the jobs need, the port in each job (g serves its own gateway)."""
    for job in jobs:
        delay = job["delay"]
        if delay is None:
            continue
        if delay not in stubs:
            stubs[delay] = Stub(delay, uvloop=uvloop)
        job |= {"port": stubs[delay].port, "stub_pid": stubs[delay].process.pid}


def _context(settings: Settings) -> dict[str, Any]:
    """The settings the report's titles quote."""
    return {
        "delay_ms": round(settings.latency_delay * 1000),
        "delay_s": settings.memory_delay,
        "rate": round(settings.latency_rate),
        "idle_c": settings.idle_concurrency,
        "idle_s": settings.idle_wait,
        "g_messages": settings.overload_messages,
        "g_max_inflight": settings.slow_max_inflight,
        "g_c": settings.policy_concurrency,
        "g_fast_rate": settings.fast_rate,
        "g_slow_rate": settings.slow_rate,
        "g_duration": settings.mixed_duration,
        "g_outage_rate": settings.outage_rate,
        "g_outage": settings.outage,
        "g_status": settings.outage_status,
        "h_subscriptions": settings.match_subscriptions,
    }


def main(argv: list[str] | None = None) -> int:
    if not _installed("aioconnector") and (SRC / "aioconnector").is_dir():
        sys.path.insert(0, str(SRC))  # run from a checkout without installing
    args = parse_args(argv)
    raise_fd_limit()  # children and stubs inherit it
    if args.child is not None:
        _child(json.loads(args.child))
        return 0

    settings = _settings(args)
    have = {"asyncio": True, "uvloop": _installed("uvloop"), "trio": _installed("trio")}
    wanted = args.backend or (["asyncio"] if args.quick else list(BACKENDS))
    backends = [b for b in wanted if have[b]]
    for missing in (b for b in wanted if not have[b]):
        print(f"note: {missing} is not installed; skipping that backend", file=sys.stderr)
    if not backends:
        print("no backend to run", file=sys.stderr)
        return 2
    policy = {
        "parts": args.parts,
        "modes": args.policy,
        "adaptive": args.adaptive,
        "max_waiting": args.max_waiting,
    }
    jobs = build_jobs(args.scenario, backends, args.client, settings, args.go_peer, policy=policy)

    started = time.monotonic()
    load_before = load_average()
    stubs: dict[float, Stub] = {}
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        _start_stubs(jobs, stubs, uvloop=have["uvloop"])
        for number, job in enumerate(jobs, 1):
            label = f"{job['scenario']} {job['backend']} {job['client']} {job['mode']}"
            print(f"[{number}/{len(jobs)}] {label} ...", end="", file=sys.stderr, flush=True)
            began = time.monotonic()
            found, problem = run_child(job)
            took = time.monotonic() - began
            rows += found
            print(f" {_summary(found)} ({took:.1f} s)", file=sys.stderr, flush=True)
            if problem is not None:
                failures.append(f"{label}: {problem}")
                print(f"    FAILED: {problem}", file=sys.stderr, flush=True)
    finally:
        for stub in stubs.values():
            stub.stop()
    load_after = load_average()

    attach_ratios(rows)
    targets = evaluate_targets(rows)
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.monotonic() - started, 1),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "versions": _versions(),
        "stub": {"uvloop": have["uvloop"], "delays": sorted(stubs)},
        "pinned": {"stub": sorted(STUB_CPUS), "clients": sorted(CLIENT_CPUS)},
        "settings": asdict(settings),
        "scenarios": args.scenario,
        "policy": policy if "g" in args.scenario else None,
        "backends": backends,
        "clients": args.client,
    }
    if args.go_peer is not None:
        meta["go_peer"] = str(args.go_peer)
    context = _context(settings)
    print_report(rows, targets, failures, meta, context)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "rows": rows, "targets": targets, "failures": failures}
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
