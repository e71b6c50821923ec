"""Shared plumbing of the broker connector examples: options as flags and env, logging, run.

A broker example (``nats_jetstream.py``, ``redis_streams.py``...) is a short program:

- an attrs ``Options`` class whose fields are made with :func:`option`: each one is also a
  command-line flag (``max_deliver`` -> ``--max-deliver``) defaulting to an environment variable
  (``nats_max_deliver`` with ``env_prefix="nats_"``); :func:`options_parser` builds the parser
  (with ``--log-level``) and :func:`parse_options` the ``Options``;
- the gateway settings every OpenFaaS connector reads from the environment (``gateway_url``,
  ``upstream_timeout``, ``max_concurrency``, ``drain_timeout``, ``retry_attempts``,
  ``basic_auth``...), through ``ControllerConfig.from_env()``;
- an async ``run(config, options, *, stop=None, stop_signals=())`` built on
  ``aioconnector.run_source``, which :func:`run_connector` runs on asyncio (the broker clients
  are asyncio-only) with :data:`SHUTDOWN_SIGNALS`: SIGTERM or SIGINT stops fetching, lets the
  messages in flight finish (up to ``drain_timeout``), and the process exits 0.

The examples import it as ``import _connector_cli as cli``: Python puts the script's folder first
on ``sys.path``. Only the public API of aioconnector is used.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import attrs

from aioconnector import ConnectorError, Settlement

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from aioconnector import InvocationResult, SourceStats

__all__ = [
    "READY_MARKER",
    "SHUTDOWN_SIGNALS",
    "announce_ready",
    "describe",
    "env_flag",
    "env_switch",
    "names",
    "option",
    "options_parser",
    "parse_options",
    "positive_int",
    "run_connector",
    "seconds",
]

T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound="attrs.AttrsInstance")

SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
"""Pass as ``run_source(..., stop_signals=...)``: either one stops the connector gracefully."""

READY_MARKER: Final = "ready:"
"""Logged (by :func:`announce_ready`) once the connector consumes; tests wait for it."""

_log = logging.getLogger("connector")


def option(default: T, help: str) -> T:
    """A field of an attrs options class that is also a flag, with ``help`` as its help.

    The default's type picks the flag's parser: ``bool`` an on/off switch, ``int``
    :func:`positive_int`, ``float`` :func:`seconds`, ``tuple`` :func:`names`, ``str`` as is.
    The flag of ``max_deliver`` is ``--max-deliver``, its variable ``<env_prefix>max_deliver``.
    """
    field: T = attrs.field(default=default, metadata={"help": help})
    return field


def options_parser(
    cls: type[attrs.AttrsInstance], doc: str | None, *, env_prefix: str
) -> argparse.ArgumentParser:
    """A parser with ``--log-level`` and a flag for each :func:`option` of ``cls``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env_flag(
        parser,
        "--log-level",
        env="log_level",
        default="INFO",
        type=_log_level,
        help="DEBUG, INFO, WARNING or ERROR",
    )
    for field in attrs.fields(cls):
        if "help" not in field.metadata:
            continue  # an attrs field, but not a flag
        flag, env = f"--{field.name.replace('_', '-')}", env_prefix + field.name
        if isinstance(field.default, bool):
            env_switch(parser, flag, env=env, help=field.metadata["help"])
            continue
        parse = _PARSERS.get(type(field.default), str)
        env_flag(
            parser, flag, env=env, default=field.default, type=parse, help=field.metadata["help"]
        )
    return parser


def parse_options(cls: type[OptionsT], args: argparse.Namespace) -> OptionsT:
    """The options ``cls`` from parsed arguments (the fields that are flags)."""
    given = {f.name: getattr(args, f.name) for f in attrs.fields(cls) if hasattr(args, f.name)}
    return cls(**given)


def env_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    env: str,
    default: object,
    help: str,
    type: Callable[[str], object] = str,
) -> None:
    """Add ``flag``; when it is not given, the variable ``env`` (parsed by ``type``) or ``default``.

    An invalid value in the environment is reported by argparse like an invalid flag.
    """
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    from_env = os.environ.get(env, "").strip()
    parser.add_argument(
        flag,
        type=type,
        default=from_env or default,  # argparse applies `type` to a str default
        metavar=flag.lstrip("-").split("-")[-1].upper(),
        help=f"{help} (env {env}; default: {shown})".replace("%", "%%"),
    )


def env_switch(parser: argparse.ArgumentParser, flag: str, *, env: str, help: str) -> None:
    """Add an on/off ``flag``, also turned on by ``env`` set to true/1/yes/on."""
    value = os.environ.get(env, "").strip().lower()
    parser.add_argument(
        flag,
        action="store_true",
        default=value in ("true", "1", "yes", "on"),
        help=f"{help} (env {env}=true)",
    )


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def seconds(text: str) -> float:
    """An argparse type: a number of seconds >= 0 (``0.5``, ``30``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def names(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of names, blanks and duplicates dropped."""
    parts = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not parts:
        raise argparse.ArgumentTypeError(f"expected one or more comma-separated names: {text!r}")
    return parts


def _log_level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return text.upper()


_PARSERS: dict[type, Callable[[str], Any]] = {
    int: positive_int,
    float: seconds,
    tuple: names,
}


def announce_ready(logger: logging.Logger, what: str) -> None:
    """Log that the connector consumes ``what``; tests wait for this line.

    Call it from the source after one ``await anyio.lowlevel.checkpoint()``: ``run_source``
    starts its signal watcher without waiting for it, and a SIGTERM that comes before the
    watcher runs still kills the process.
    """
    logger.info("%s consuming %s", READY_MARKER, what)


def describe(verdict: Settlement, results: Sequence[InvocationResult]) -> str:
    """Why a message was not acknowledged, in a few words, for logs and dead letters."""
    if verdict is Settlement.UNMATCHED:
        return "no function subscribes to its topic"
    if verdict is Settlement.INVALID:
        return "invalid message (see the warning logged before)"
    failures = [r for r in results if not r.ok]
    return "; ".join(
        f"{r.function}: {f'HTTP {r.status}' if r.status is not None else r.error}" for r in failures
    )


def run_connector(
    main: Callable[[], Awaitable[SourceStats]],
    *,
    log_level: str = "INFO",
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Configure logging and run ``main`` on asyncio; return the process's exit status.

    0 when ``main`` returns (its stats are logged), 1 with a one-line message for a
    :class:`~aioconnector.ConnectorError` (e.g. no gateway), a configuration ``ValueError``,
    an ``OSError`` or one of the broker client's ``errors``, 130 on an interrupt that came
    before the signal handlers were installed.
    """
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per invocation
    reported: tuple[type[BaseException], ...] = (ConnectorError, ValueError, OSError, *errors)
    try:
        stats = anyio.run(main, backend="asyncio")
    except KeyboardInterrupt:
        return 130
    except reported as exc:
        _log.error("%s: %s", type(exc).__name__, exc)
        return 1
    settled = ", ".join(f"{kind.value} {count}" for kind, count in stats.settled.items())
    _log.info("stopped: received %d (%s), unsettled %d", stats.received, settled, stats.unsettled)
    return 0
