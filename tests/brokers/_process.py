"""The packaged connectors, run as ``python -m aioconnector connect <broker>`` subprocesses or
in-process through their library API (``run(controller, options)``) by the tests.

Also here: polling with a deadline, a slow fake function that records when each call
started and finished, and the report of a run in which a connector was killed mid-stream.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio
import attrs

import aioconnector
from aioconnector import AsyncController, ControllerConfig, RetryPolicy, SourceStats
from aioconnector.connectors._base import READY_MARKER
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )

    import pytest
    from anyio.abc import Process

ROOT = Path(__file__).resolve().parents[2]
# The child imports the same aioconnector as this process, installed or from src/.
PACKAGE_ROOT = str(Path(aioconnector.__file__).resolve().parents[1])


def load_example(name: str) -> Any:
    """Import ``examples/<name>.py`` as the top-level module ``name`` (as mypy sees it)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@final
class ConnectorProcess:
    """A connector subprocess whose stdout and stderr go to the file ``log``."""

    def __init__(self, process: Process, log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self) -> str:
        """Everything it printed and logged so far."""
        return self.log.read_text(errors="replace")

    async def wait_ready(self, within: float = 15.0) -> None:
        """Wait until it logs that it consumes; fail with its output if it exits first."""
        with anyio.fail_after(within):
            while READY_MARKER not in await anyio.Path(self.log).read_text(errors="replace"):
                if self.process.returncode is not None:
                    raise AssertionError(f"the connector exited early:\n{self.output()}")
                await anyio.sleep(0.05)

    def terminate(self) -> None:
        """SIGTERM: a graceful stop."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        self.process.kill()

    async def wait(self, timeout: float) -> int:  # noqa: ASYNC109  (the deadline is the assertion)
        """Its exit status (negative: killed by that signal); fails after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def connector_process(
    broker: str, args: Sequence[str], *, env: Mapping[str, str], log: Path
) -> AsyncIterator[ConnectorProcess]:
    """Run ``python -m aioconnector connect <broker> <args>`` with only ``env`` (plus PATH, and
    PYTHONPATH for the aioconnector this process imports).

    Leaving kills it (by its pid) if it is still running, and reaps it.
    """
    pythonpath = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": pythonpath, **env}
    with log.open("wb") as output:  # the child keeps its own copy of the descriptor
        process = await anyio.open_process(
            [sys.executable, "-m", "aioconnector", "connect", broker, *args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    try:
        yield ConnectorProcess(process, log)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()  # waits for it


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            outcome = condition()
            if not isinstance(outcome, bool):
                outcome = await outcome
            if outcome:
                return
            await anyio.sleep(0.02)


@attrs.define
class Call:
    """One call of a :class:`SlowFunction`, with wall-clock times (as brokers timestamp)."""

    connector: str
    message_id: str
    started: float
    finished: float | None = None


@attrs.define
class SlowFunction:
    """A fake function that answers 200 after ``latency`` seconds and records every call.

    ``latency`` is a ``(low, high)`` range drawn from uniformly. Times are ``time.time()``, so
    that they compare with a broker's timestamps of acknowledgements. With ``gate``, each call
    first waits until the gate is set: what a test stops is then known to be in flight.
    """

    latency: tuple[float, float]
    calls: list[Call] = attrs.Factory(list)
    gate: anyio.Event | None = None

    async def __call__(self, request: RecordedRequest) -> FakeResponse:
        call = Call(
            connector=request.headers.get("x-connector", ""),
            message_id=request.headers.get("x-message-id", ""),
            started=time.time(),
        )
        self.calls.append(call)
        if self.gate is not None:
            await self.gate.wait()
        await anyio.sleep(random.uniform(*self.latency))
        call.finished = time.time()
        return FakeResponse(body=b"done")

    def finished(self, connector: str | None = None) -> dict[str, float]:
        """Message id -> when its first call (by ``connector``, or anyone) finished."""
        done: dict[str, float] = {}
        for call in self.calls:
            if call.finished is not None and connector in (None, call.connector):
                done[call.message_id] = min(call.finished, done.get(call.message_id, call.finished))
        return done

    def in_flight(self) -> set[str]:
        """The messages being worked on right now."""
        return {call.message_id for call in self.calls if call.finished is None}


def broker_config(url: str) -> ControllerConfig:
    """No retries in the connector: redelivery is the broker's job in these tests."""
    return ControllerConfig(gateway_url=url, retry=RetryPolicy.disabled(), startup_timeout=5)


@asynccontextmanager
async def running_in_process(
    run: Callable[..., Awaitable[SourceStats]], config: ControllerConfig, options: object
) -> AsyncIterator[list[SourceStats]]:
    """Run a connector's ``run(controller, options, stop=...)`` on a controller of ``config``
    during the block, then stop it; its stats are appended to the yielded list."""
    stop = anyio.Event()
    stats: list[SourceStats] = []

    async def consume() -> None:
        async with AsyncController(config) as controller:
            stats.append(await run(controller, options, stop=stop))

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        try:
            yield stats
        finally:
            stop.set()


def message_ids(gateway: FakeGateway, connector: str | None = None) -> Counter[str]:
    """How many times each message id was invoked (by ``connector``, or by any)."""
    return Counter(
        r.headers["x-message-id"]
        for r in gateway.invocations()
        if connector in (None, r.headers["x-connector"])
    )


def connector_env(gateway_url: str, name: str, **extra: str) -> dict[str, str]:
    """The environment of a connector subprocess that reports as ``name`` (X-Connector)."""
    return {"gateway_url": gateway_url, "connector_name": name, "retry_attempts": "1", **extra}


@attrs.frozen(kw_only=True)
class KillReport:
    """What happened to the published messages when the connector ``first`` was SIGKILLed
    mid-stream and ``second`` took over.

    ``by_first`` and ``by_second`` count invocations (a message invoked twice counts twice), so
    ``by_first + by_second == published - len(lost) + duplicates`` when every invoked id was
    published.
    """

    published: int
    by_first: int
    by_second: int
    duplicates: int  # invocations beyond the first of each id
    lost: frozenset[str]  # published ids never invoked

    def line(self, broker: str) -> str:
        return (
            f"{broker} SIGKILL mid-stream: published {self.published}, invoked by first"
            f" {self.by_first}, by second {self.by_second}, duplicates {self.duplicates},"
            f" lost {len(self.lost)}"
        )


def report_kill(
    broker: str,
    published: Collection[str],
    gateway: FakeGateway,
    capsys: pytest.CaptureFixture[str],
) -> KillReport:
    """Count, per published id, the invocations the gateway recorded from the connectors
    ``first`` (killed) and ``second``; print :meth:`KillReport.line` (shown with -q too)."""
    invoked = message_ids(gateway)
    report = KillReport(
        published=len(published),
        by_first=message_ids(gateway, "first").total(),
        by_second=message_ids(gateway, "second").total(),
        duplicates=sum(count - 1 for count in invoked.values()),
        lost=frozenset(set(published) - set(invoked)),
    )
    with capsys.disabled():
        print(f"\n{report.line(broker)}")  # noqa: T201
    return report
