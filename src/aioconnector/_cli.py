"""The command line: ``aioconnector demo|tester|topics|invoke|connect``, also ``python -m
aioconnector``."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from aioconnector import (
    AsyncController,
    AuthenticationError,
    BasicAuth,
    ConnectorError,
    ControllerConfig,
    DiscoveryError,
    GatewayUnavailableError,
    UpstreamStatusError,
    __version__,
    serve_health,
)
from aioconnector._config import parse_duration
from aioconnector.connectors import CONNECTORS
from aioconnector.connectors._base import SHUTDOWN_SIGNALS
from aioconnector.connectors._settings import (
    add_controller_flags,
    add_health_port_flag,
    add_log_level_flag,
    add_option_flags,
    health_port,
)
from aioconnector.testing import FakeGateway, FakeResponse

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from anyio.abc import TaskStatus

    from aioconnector import InvocationResult, ResultStream, SourceStats
    from aioconnector.connectors import Connector
    from aioconnector.connectors._base import Settings
    from aioconnector.testing import Handler, RecordedRequest

    Command = Callable[[argparse.Namespace, ControllerConfig, "_Interrupts"], Awaitable[int]]

__all__ = ["main"]

_PROG = "aioconnector"
_REPORTED = (ConnectorError, ValueError, TypeError, OSError)
_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it; SIGTERM gives 128 + 15 = 143
_UNMATCHED = 2
_JSON = "application/json"
_DEFAULT = "default: %(default)s"
_ERASE_LINE = "\x1b[K"  # ANSI: erase to the end of the line


class _CliError(Exception):
    """A problem the user can fix, reported as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    0: done; 1: an error (one line on stderr) or, for ``invoke``/``tester``, a failed invocation;
    2: a usage error, or ``invoke``/``tester`` matched no function; 130: stopped by Ctrl-C
    (SIGINT), 143: stopped by SIGTERM (``demo`` and ``tester`` print their summary first).
    ``connect`` stops gracefully on SIGTERM or SIGINT, with 0.
    """
    args = _parser().parse_args(argv)
    if args.command == "connect":
        return _connect(CONNECTORS[args.broker], args)
    if (args.username is None) != (args.password_file is None):
        args.subparser.error("--username and --password-file go together")  # exits 2
    try:
        _check_backend(args.backend)
        config = _config(args)
        args.body = _read_body(args) if args.command == "invoke" else b""
        return anyio.run(_run, args.run, args, config, backend=args.backend)
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):  # Ctrl-C outside the signal watcher's reach
            return _INTERRUPTED
        if not isinstance(leaf, (_CliError, *_REPORTED)):
            raise
        message = str(leaf) or type(leaf).__name__
        if isinstance(leaf, AuthenticationError):
            message += "; on the command line: --username NAME --password-file PATH"
        elif isinstance(leaf, GatewayUnavailableError):
            message += " To wait longer: --startup-timeout DURATION."
        _err(f"error: {message}")
        return 1


def _check_backend(backend: str) -> None:
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        raise _CliError("--backend trio needs trio: pip install 'aioconnector[trio]'")


# -- arguments and configuration --------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    gw = common.add_argument_group("gateway options (each flag wins over its environment variable)")
    gw.add_argument("--gateway", metavar="URL", help="gateway base URL (env gateway_url)")
    gw.add_argument("--username", metavar="NAME", help="basic-auth user for /system/*")
    gw.add_argument("--password-file", metavar="PATH", help="file holding its password")
    gw.add_argument("--async", dest="async_", action="store_true", help="use /async-function/")
    gw.add_argument("--callback-url", metavar="URL", help="X-Callback-Url of async invocations")
    gw.add_argument("--content-type", metavar="TYPE", help="Content-Type of invocations")
    gw.add_argument("--upstream-timeout", type=_seconds, metavar="S", help="per call; 0: none")
    gw.add_argument("--max-concurrency", type=_count, metavar="N", help="invocations at once")
    gw.add_argument(
        "--startup-timeout",
        type=_duration,
        metavar="DURATION",
        help="how long to retry the first lookup, e.g. 5s, 1m30s (env startup_timeout; 30s)",
    )
    gw.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help=_DEFAULT)

    parser = argparse.ArgumentParser(
        prog=_PROG, description="Route messages to OpenFaaS functions by their topic annotation."
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Command, text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=text, description=text)
        command.set_defaults(
            run=run,
            json_body=name in ("demo", "tester"),
            subparser=command,
            wait=False,
            callback_listen=None,
            callback_public_url=None,
            wait_timeout=None,
        )
        return command

    demo = add("demo", _demo, "Emit sample events round-robin over the topics and stream the "
               "results; without --gateway, against a built-in fake gateway.")  # fmt: skip
    demo.add_argument("--count", type=_count, metavar="N", help="stop after N events")
    demo.add_argument("--interval", type=_seconds, default=0.2, metavar="S", help=_DEFAULT)
    demo.add_argument("--stats-interval", type=_period, default=1.0, metavar="S", help=_DEFAULT)
    add_health_port_flag(demo)
    tester = add("tester", _tester, "Invoke a topic with a numbered JSON message, repeatedly.")
    tester.add_argument("--topic", default="payment.received", help=_DEFAULT)
    tester.add_argument("--interval", type=_seconds, default=1.0, metavar="S", help=_DEFAULT)
    tester.add_argument("--count", type=_count, metavar="N", help="default: forever")
    add_health_port_flag(tester)
    topics = add("topics", _topics, "Print the topic map discovered on the gateway.")
    topics.add_argument("--json", action="store_true", help='as {"topic": ["fn.ns", ...]}')
    invoke = add("invoke", _invoke, "Send one message to every function of a topic.")
    invoke.add_argument("topic")
    data = invoke.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="TEXT", help="the message (default: read stdin)")
    data.add_argument("--data-file", metavar="PATH", help="read the message from a file")
    invoke.add_argument(
        "--header", type=_header, action="append", metavar="'NAME: VALUE'", help="repeatable"
    )
    invoke.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_wait_flags(invoke.add_argument_group("waiting for async results (--async --wait)"))
    _add_connect(sub)
    return parser


def _add_wait_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--wait",
        action="store_true",
        help="with --async: receive each function's callback and print its final result",
    )
    group.add_argument(
        "--callback-listen",
        metavar="HOST:PORT",
        help="where to receive the callbacks, port 0 for any (env callback_listen)",
    )
    group.add_argument(
        "--callback-public-url",
        metavar="URL",
        help="how the gateway reaches that address, if not by it (env callback_public_url)",
    )
    group.add_argument(
        "--wait-timeout",
        type=_duration,
        metavar="DURATION",
        help="stop waiting after this, e.g. 30s, 10m (default: env callback_timeout; 10m)",
    )


def _add_connect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "Run a packaged broker connector until SIGTERM (see connect BROKER --help)."
    connect = sub.add_parser("connect", help=text, description=text)
    brokers = connect.add_subparsers(dest="broker", required=True, metavar="BROKER")
    for name, connector in sorted(CONNECTORS.items()):
        parser = brokers.add_parser(
            name,
            help=connector.summary,
            description=connector.description,
            epilog="Each flag wins over its variable. Installed with "
            f"{connector.install}; reference: docs/connectors.md.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        group = parser.add_argument_group(f"{name} options")
        add_option_flags(group, connector.options, connector.env_prefix)
        add_controller_flags(parser.add_argument_group("gateway options (OpenFaaS variables)"))
        add_log_level_flag(parser.add_argument_group("logging"))
        add_health_port_flag(parser.add_argument_group("health"))


def _count(text: str) -> int:
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _period(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0, got {text!r}")
    return value


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _config(args: argparse.Namespace) -> ControllerConfig:
    """Flags first, then the environment (``ControllerConfig.from_env``), then defaults."""
    credentials = None
    if args.username is not None:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
        credentials = BasicAuth(args.username, password)
    config = ControllerConfig.from_env(
        gateway_url=args.gateway,
        credentials=credentials,
        async_invocation=True if args.async_ else None,
        callback_url=args.callback_url,
        content_type=args.content_type,
        upstream_timeout=args.upstream_timeout or None,
        max_concurrency=args.max_concurrency,
        startup_timeout=args.startup_timeout,
        callback_listen=args.callback_listen,
        callback_public_url=args.callback_public_url,
    )
    _check_wait(args, config)
    if args.upstream_timeout == 0:  # like upstream_timeout=0 in the environment: no timeout
        config = attrs.evolve(config, upstream_timeout=None)
    if args.json_body and config.content_type is None:
        config = attrs.evolve(config, content_type=_JSON)
    return config


def _check_wait(args: argparse.Namespace, config: ControllerConfig) -> None:
    if not args.wait:
        flags = ("--callback-listen", "--callback-public-url", "--wait-timeout")
        given = [flag for flag in flags if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            raise _CliError(f"{' and '.join(given)} go with --async --wait")
        return
    if not config.async_invocation:
        raise _CliError("--wait waits for the callbacks of async invocations: add --async")
    if args.callback_url is not None:
        raise _CliError("--wait receives the callbacks itself: leave out --callback-url")
    if config.callback_listen is None:
        raise _CliError(
            "--wait needs a callback receiver: --callback-listen HOST:PORT (env "
            "callback_listen), an address the gateway can reach, with --callback-public-url "
            "URL if it reaches it by another"
        )


def _read_body(args: argparse.Namespace) -> bytes:
    if args.data is not None:
        return os.fsencode(args.data)  # the bytes given, even if not UTF-8
    if args.data_file is not None:
        return Path(args.data_file).read_bytes()
    if sys.stdin.isatty():
        _err("reading the message from stdin (end with Ctrl-D)")
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read() if buffer is not None else sys.stdin.read().encode()


# -- running: the event loop, Ctrl-C and the commands -----------------------------------------


class _Interrupts:
    """Ctrl-C (or SIGTERM) cancels the innermost stage (e.g. emitting, so results still drain),
    then all; the exit status is 128 + the first signal's number, as a shell reports it."""

    def __init__(self, outer: anyio.CancelScope) -> None:
        self.count = 0
        self.status = _INTERRUPTED
        self._scopes = [outer]

    @contextmanager
    def stage(self) -> Iterator[None]:
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                yield
            finally:
                if scope in self._scopes:
                    self._scopes.remove(scope)

    async def watch(self, *, task_status: TaskStatus[None]) -> None:
        with ExitStack() as stack:
            try:
                signals = stack.enter_context(
                    anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
                )
            except (NotImplementedError, RuntimeError, ValueError):
                task_status.started()  # not the main thread, or no signal support:
                return  # Ctrl-C stays a KeyboardInterrupt
            task_status.started()
            async for signum in signals:
                if not self.count:
                    self.status = 128 + signum
                self.count += 1
                scopes = self._scopes
                (scopes.pop() if len(scopes) > 1 else scopes[0]).cancel()


async def _run(command: Command, args: argparse.Namespace, config: ControllerConfig) -> int:
    status = _INTERRUPTED
    async with anyio.create_task_group() as tg:
        interrupts = _Interrupts(tg.cancel_scope)
        await tg.start(interrupts.watch)
        status = await command(args, config, interrupts)
        tg.cancel_scope.cancel()
    return interrupts.status if interrupts.count else status


def _controller(
    config: ControllerConfig, args: argparse.Namespace | None = None
) -> AsyncController:
    """With a health port (demo, tester), metrics too when prometheus-client is installed."""
    port = None if args is None else health_port(vars(args), os.environ)
    metrics = port is not None and importlib.util.find_spec("prometheus_client") is not None
    return AsyncController(config, on_startup_retry=_report_retry, metrics=metrics)


@asynccontextmanager
async def _health(controller: AsyncController, args: argparse.Namespace) -> AsyncIterator[None]:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``--health-port`` while the block runs."""
    port = health_port(vars(args), os.environ)
    if port is None:
        yield
        return
    async with anyio.create_task_group() as tg:
        serve = functools.partial(serve_health, controller, port, host="0.0.0.0")  # noqa: S104
        await tg.start(serve)
        _err(f"health: http://0.0.0.0:{port}/healthz, /readyz, /metrics")
        yield
        tg.cancel_scope.cancel()


def _report_retry(error: DiscoveryError, attempt: int, delay: float) -> None:
    _err(f"gateway not ready (attempt {attempt}): {error}; retrying in {delay:.1f}s")


async def _demo(args: argparse.Namespace, config: ControllerConfig, stop: _Interrupts) -> int:
    tally = _Tally()
    output = _Output(tally, args.count)
    try:
        async with AsyncExitStack() as stack:
            if args.gateway is None:  # the built-in fake, whatever gateway_url the env has
                url = await stack.enter_async_context(_sample_gateway().serve())
                _out(f"demo: a fake OpenFaaS gateway at {url} (use --gateway URL for a real one)")
                config = attrs.evolve(config, gateway_url=url)
            tg = await stack.enter_async_context(anyio.create_task_group())
            async with _controller(config, args) as controller, _health(controller, args):
                topics = sorted(controller.topics())
                if not topics:
                    raise _CliError(f"no topics on {config.gateway_url}: no function has one")
                _print_topics(controller)
                tally.started = True
                output.start()
                tg.start_soon(_print_results, controller.results(), output)
                ticker = await tg.start(_print_stats, controller, output, args.stats_interval)
                with stop.stage():
                    await _emit(controller, topics, args, output)
            ticker.cancel()  # the results stream ends by itself once the controller has exited
    finally:
        output.close()
        if tally.started:
            _out(tally.summary())
    return 0


def _sample_gateway() -> FakeGateway:
    gateway = FakeGateway()
    gateway.add_function("order-store", topics=["orders"])  # echoes the event
    gateway.add_function("audit", topics=["orders", "payments"], handler=FakeResponse(body="ok"))
    captured = FakeResponse(body='{"status": "captured"}', headers={"Content-Type": _JSON})
    gateway.add_function("payment-processor", topics=["payments"], handler=captured)
    gateway.add_function("slow-report", topics=["reports"])
    gateway.set_fault("slow-report", latency=0.3)  # a latency alone delays the normal answer
    gateway.add_function("flaky-mailer", topics=["orders"], handler=_every_nth_fails(3))
    return gateway


def _every_nth_fails(n: int) -> Handler:
    calls = itertools.count(1)

    def handle(_: RecordedRequest) -> FakeResponse:
        if next(calls) % n == 0:
            return FakeResponse(status=500, body="smtp relay unavailable")
        return FakeResponse(body="sent")

    return handle


async def _emit(
    controller: AsyncController, topics: list[str], args: argparse.Namespace, output: _Output
) -> None:
    tally = output.tally
    next_at = anyio.current_time()
    while args.count is None or tally.sent < args.count:
        if tally.sent:
            next_at += args.interval
            await anyio.sleep_until(next_at)
        n = tally.sent + 1
        topic = topics[(n - 1) % len(topics)]
        event = json.dumps({"id": n, "topic": topic, "sent_at": _now()})
        await controller.submit(topic, event, headers={"X-Message-Id": str(n)})
        tally.sent = n
        output.update()


async def _print_results(results: ResultStream, output: _Output) -> None:
    async with results:
        async for result in results:
            output.tally.add(result)
            output.line(_result_line(result))


async def _print_stats(
    controller: AsyncController,
    output: _Output,
    interval: float,
    *,
    task_status: TaskStatus[anyio.CancelScope],
) -> None:
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        last_time, last_count = anyio.current_time(), 0
        while True:
            await anyio.sleep(interval)
            stats, now = controller.stats(), anyio.current_time()
            rate = (stats.invocations_started - last_count) / (now - last_time)
            last_time, last_count = now, stats.invocations_started
            output.line(
                f"stats: {rate:.1f} invocations/s, {stats.in_flight} in flight, "
                f"{stats.invocations_failed} failed, {output.tally.sent} events sent"
            )


async def _tester(args: argparse.Namespace, config: ControllerConfig, stop: _Interrupts) -> int:
    tally = _Tally()
    output = _Output(tally, args.count)
    try:
        async with _controller(config, args) as controller, _health(controller, args):
            tally.started = True
            output.start()
            with stop.stage():
                while args.count is None or tally.sent < args.count:
                    if tally.sent:
                        await anyio.sleep(args.interval)
                    n = tally.sent + 1
                    body = json.dumps({"id": n, "sent_at": _now()})
                    results = await controller.invoke(
                        args.topic, body, headers={"X-Message-Id": str(n)}
                    )
                    tally.sent = n
                    if not results:
                        output.clear()
                        _warn_unmatched(args.topic, controller, "warning: ")
                    for result in results:
                        tally.add(result)
                        output.line(_result_line(result, body=80))
                    output.update()
    finally:
        output.close()
        if tally.started:
            _out(tally.summary())
    if tally.failed:
        return 1
    return _UNMATCHED if tally.sent and not tally.invocations else 0


async def _topics(args: argparse.Namespace, config: ControllerConfig, _: _Interrupts) -> int:
    async with _controller(config) as controller:
        if args.json:
            routes = {t: sorted(controller.functions_for(t)) for t in sorted(controller.topics())}
            _out(json.dumps(routes, indent=2))
        elif controller.topics():
            _print_topics(controller)
        else:
            _err(f"no topics on {config.gateway_url}: no function has one")
    return 0


async def _invoke(args: argparse.Namespace, config: ControllerConfig, stop: _Interrupts) -> int:
    async with _controller(config) as controller:
        headers = dict(args.header or ())
        results: Sequence[InvocationResult]
        if args.wait:
            results = await _invoke_and_wait(controller, args, headers, stop)
        else:
            results = await controller.invoke(args.topic, args.body, headers=headers)
        if not results:
            _warn_unmatched(args.topic, controller)
    if args.json:
        _out(json.dumps([_result_json(result) for result in results], indent=2))
    else:
        for result in results:
            _out(_result_line(result))
            if result.body:
                _out(result.body.decode(errors="replace").rstrip("\n"))
    if not results:
        return _UNMATCHED
    return 0 if all(result.ok for result in results) else 1


async def _invoke_and_wait(
    controller: AsyncController,
    args: argparse.Namespace,
    headers: dict[str, str],
    stop: _Interrupts,
) -> tuple[InvocationResult, ...]:
    """``invoke --async --wait``: the results the callbacks bring, in address order. Past
    ``--wait-timeout``, or on Ctrl-C, those still awaited end as timeouts (so the controller
    does not wait for them at exit)."""
    pending = await controller.invoke_async(args.topic, args.body, headers=headers)
    if not pending:
        return ()
    host, port = controller.callback_address or ("?", 0)
    where = controller.config.callback_public_url or f"{host}:{port}"
    _err(f"{len(pending)} invocation(s) sent; waiting for their callbacks at {where}")
    with stop.stage(), anyio.move_on_after(args.wait_timeout):
        for invocation in pending:
            await invocation.result()
    waiting = sum(not invocation.done() for invocation in pending)
    if waiting:
        why = "interrupted" if stop.count else f"--wait-timeout {args.wait_timeout:g}s passed"
        _err(f"{why} with {waiting} invocation(s) awaiting their callback")
    return tuple([await invocation.result(timeout=0) for invocation in pending])


# -- connect: a packaged connector as a process ----------------------------------------------

_log = logging.getLogger("aioconnector.connect")


def _connect(connector: Connector[Any], args: argparse.Namespace) -> int:
    """Run ``connector`` on asyncio (the broker clients are asyncio-only) until a stop signal."""
    try:
        connector.require()
        settings = connector.settings(vars(args), os.environ)
    except (ConnectorError, ValueError, OSError) as exc:  # OSError: a basic-auth secret missing
        _err(f"error: {exc}")
        return 1
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.log_level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per invocation
    reported: tuple[type[BaseException], ...] = (*_REPORTED, *connector.errors())
    try:
        stats = anyio.run(_consume, connector, settings, backend="asyncio")
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):  # before the signal handlers were in place
            return _INTERRUPTED
        if not isinstance(leaf, reported):
            raise
        _err(f"error: {type(leaf).__name__}: {leaf}")
        return 1
    settled = ", ".join(f"{kind.value} {count}" for kind, count in stats.settled.items())
    outcomes = ", ".join(f"{kind.value} {count}" for kind, count in stats.outcomes.items())
    _log.info(
        "stopped: received %d (%s), unsettled %d; outcomes: %s",
        stats.received,
        settled,
        stats.unsettled,
        outcomes,
    )
    return 0


async def _consume(connector: Connector[Any], settings: Settings[Any]) -> SourceStats:
    port = settings.health_port
    # With a health port, metrics too when prometheus-client is installed (else /metrics
    # answers 404 saying so).
    metrics = port is not None and importlib.util.find_spec("prometheus_client") is not None
    controller = AsyncController(settings.config, on_startup_retry=_report_retry, metrics=metrics)
    async with controller:
        if port is None:
            return await connector.run(controller, settings.options, stop_signals=SHUTDOWN_SIGNALS)
        stats: list[SourceStats] = []  # ready once the connector consumes, until it stops
        async with anyio.create_task_group() as tg:

            async def consume(*, task_status: TaskStatus[None]) -> None:
                stats.append(
                    await connector.run(
                        controller,
                        settings.options,
                        stop_signals=SHUTDOWN_SIGNALS,
                        task_status=task_status,
                    )
                )
                tg.cancel_scope.cancel()  # the health endpoint goes with it

            consuming = anyio.Event()
            serve = functools.partial(
                serve_health,
                controller,
                port,
                host="0.0.0.0",  # noqa: S104 - Kubernetes probes come to the pod's address
                ready=lambda: consuming.is_set() and not stats,
            )
            await tg.start(serve)
            _log.info("health endpoint on port %d: /healthz, /readyz, /metrics", port)
            await tg.start(consume)
            consuming.set()
        return stats[0]


# -- printing -----------------------------------------------------------------------------------


@attrs.define
class _Tally:
    """What ``demo`` and ``tester`` saw, for the summary line."""

    started: bool = False
    sent: int = 0
    invocations: int = 0
    failed: int = 0
    total_time: float = 0.0
    max_time: float = 0.0

    def add(self, result: InvocationResult) -> None:
        self.invocations += 1
        self.failed += not result.ok
        self.total_time += result.duration
        self.max_time = max(self.max_time, result.duration)

    def summary(self) -> str:
        mean = self.total_time / self.invocations if self.invocations else 0.0
        return (
            f"summary: {self.sent} events sent, {self.invocations} invocations, "
            f"{self.invocations - self.failed} ok, {self.failed} failed, "
            f"duration mean {mean * 1000:.1f} ms, max {self.max_time * 1000:.1f} ms"
        )


class _Output:
    """The result lines of ``demo``/``tester`` on stdout. On a terminal, with ``--count``, a
    progress line stays below them, redrawn in place; elsewhere (a pipe, a file) only lines."""

    def __init__(self, tally: _Tally, total: int | None) -> None:
        self.tally = tally
        self._total = total
        self._live = total is not None and sys.stdout.isatty()
        self._shown = False
        self._since = time.monotonic()

    def start(self) -> None:
        """Count the rate from now (the gateway answered)."""
        self._since = time.monotonic()
        self.update()

    def line(self, text: str) -> None:
        if self._live:
            self.clear()
            sys.stdout.write(f"{text}\n")
            self.update()
        else:
            _out(text)

    def update(self) -> None:
        if self._live:
            sys.stdout.write(f"\r{_ERASE_LINE}{self._progress()}")
            sys.stdout.flush()
            self._shown = True

    def clear(self) -> None:
        """Take the progress line away (before writing something else to the terminal)."""
        if self._shown:
            sys.stdout.write(f"\r{_ERASE_LINE}")
            sys.stdout.flush()
            self._shown = False

    def close(self) -> None:
        """Leave the final progress line in place, ended by a newline."""
        if self._shown:
            self.update()
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._shown = self._live = False

    def _progress(self) -> str:
        tally = self.tally
        rate = tally.invocations / max(time.monotonic() - self._since, 1e-3)
        return (
            f"progress: {tally.sent} of {self._total} events sent, {tally.invocations} "
            f"invocations done, {tally.failed} failed, {rate:.1f} invocations/s"
        )


def _result_line(result: InvocationResult, *, body: int = 0) -> str:
    """``topic -> function  200  3.1 ms``; failures read ``FAIL 500`` or ``FAIL <error class>``."""
    error = result.error
    if result.ok:
        outcome = str(result.status)
    elif error is None or isinstance(error, UpstreamStatusError):
        outcome = f"FAIL {result.status}"
    else:
        outcome = f"FAIL {type(error).__name__}"
    line = f"{result.topic} -> {result.function}  {outcome}  {result.duration * 1000:.1f} ms"
    if body:
        text = " ".join(result.body.decode(errors="replace").split())
        line += f"  {text if len(text) <= body else text[: body - 3] + '...'}"
    return line


def _result_json(result: InvocationResult) -> dict[str, object]:
    return {
        "topic": result.topic,
        "function": result.function,
        "status": result.status,
        "ok": result.ok,
        "duration": result.duration,
        "call_id": result.call_id,
        "error": None if result.error is None else str(result.error),
        "body": result.body.decode("utf-8", errors="replace"),
    }


def _print_topics(controller: AsyncController) -> None:
    topics = sorted(controller.topics())
    width = max(len("TOPIC"), *map(len, topics))
    _out(f"{'TOPIC':<{width}}  FUNCTIONS")
    for topic in topics:
        _out(f"{topic:<{width}}  {', '.join(sorted(controller.functions_for(topic)))}")


def _warn_unmatched(topic: str, controller: AsyncController, level: str = "") -> None:
    known = ", ".join(sorted(controller.topics())) or "none"
    _err(f"{level}no function subscribes to {topic!r} (topics: {known})")


def _out(line: str) -> None:
    print(line, flush=True)  # flushed: results stream live through pipes too


def _err(line: str) -> None:
    print(f"{_PROG}: {line}", file=sys.stderr)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
