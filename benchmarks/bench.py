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
- f: idle RSS of a running controller (topic map built, no message), and with the library imported.

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
SCENARIOS: Final = ("a", "b", "c", "d", "e", "f")
#: (client, mode) measured per scenario.
_LOOPING: Final = (("raw", "loop"), ("httpx", "loop"))
# The httpx path is measured with invoke only: it is the baseline, and its windows are slow.
_CONTROLLER: Final = (
    ("aioconnector", "invoke"),
    ("aioconnector", "submit"),
    ("aioconnector+httpx", "invoke"),
)
PLAN: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "a": _LOOPING + _CONTROLLER,
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


def build_jobs(
    scenarios: list[str],
    backends: list[str],
    clients: list[str],
    settings: Settings,
    go_peer: Path | None = None,
) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    s = settings
    for scenario in scenarios:
        for backend in backends:
            for client, mode in _plan(scenario, go_peer):
                if client not in clients and client != _gopeer.CLIENT:
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
        elif row["scenario"] == "f":
            imported = row.get("rss_imported_mib")
            before = "" if imported is None else f"imported {imported:.1f} MiB, "
            parts.append(f"{before}running {row['rss_mib']:.1f} MiB")
        else:
            parts.append(f"{row['case'][:3]} C={row['concurrency']} {row['inv_per_s']:,.0f} inv/s")
    return "; ".join(parts)


# -- the command line ----------------------------------------------------------------------------


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: choose among {', '.join(allowed)}")
    return list(dict.fromkeys(names))


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
        help="comma-separated, among a,b,c,d,e,f (default: all)",
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
    jobs = build_jobs(args.scenario, backends, args.client, settings, args.go_peer)

    started = time.monotonic()
    load_before = load_average()
    stubs: dict[float, Stub] = {}
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        for job in jobs:
            delay = job["delay"]
            if delay not in stubs:
                stubs[delay] = Stub(delay, uvloop=have["uvloop"])
            job |= {"port": stubs[delay].port, "stub_pid": stubs[delay].process.pid}
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
        "backends": backends,
        "clients": args.client,
    }
    if args.go_peer is not None:
        meta["go_peer"] = str(args.go_peer)
    context = {
        "delay_ms": round(settings.latency_delay * 1000),
        "delay_s": settings.memory_delay,
        "rate": round(settings.latency_rate),
        "idle_c": settings.idle_concurrency,
        "idle_s": settings.idle_wait,
    }
    print_report(rows, targets, failures, meta, context)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, "rows": rows, "targets": targets, "failures": failures}
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
