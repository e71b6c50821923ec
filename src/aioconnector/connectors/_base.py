"""What every packaged connector shares: its description, the check for its extra, and logs.

Each connector module ends with a :class:`Connector` that names it, its options class, the
variables' prefix, the extra that installs its client, and its ``run``. The command line and
the deploy tests work from these alone; nothing here imports a broker client.
"""

from __future__ import annotations

import importlib
import signal
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

import attrs

from .._cloudevents import MODES, CloudEvents
from .._errors import MissingExtraError
from .._outcome import OutcomeKind
from ._settings import controller_config, health_port, log_level, option, options_from

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable, Mapping

    from .._config import ControllerConfig
    from .._outcome import Outcome
    from .._source import SourceStats

__all__ = [
    "READY_MARKER",
    "SHUTDOWN_SIGNALS",
    "TRACE_FIELDS",
    "UNROUTABLE",
    "Connector",
    "Settings",
    "announce_ready",
    "cloudevents_of",
    "cloudevents_option",
    "cloudevents_type_option",
    "log_outcome",
    "trace_context",
    "unroutable",
]

OptionsT = TypeVar("OptionsT", bound="attrs.AttrsInstance")

SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
"""What ``aioconnector connect`` stops on: fetch no more, finish what is in flight, exit 0."""

READY_MARKER: Final = "ready:"
"""Logged once a connector consumes (after its signal handlers are in); tests wait for it."""


@attrs.frozen(kw_only=True)
class Settings(Generic[OptionsT]):
    """What a connector process runs with, from its flags and environment."""

    config: ControllerConfig
    options: OptionsT
    log_level: str
    health_port: int | None = None
    """Where ``/healthz``, ``/readyz`` and ``/metrics`` are served; None: nowhere."""


@attrs.frozen(kw_only=True)
class Connector(Generic[OptionsT]):
    """A packaged connector, as the command line and the deploy files see it."""

    name: str
    """``aioconnector connect <name>`` and the extra ``aioconnector[<name>]``."""
    summary: str
    """One line for ``aioconnector connect --help``."""
    description: str
    """The module's docstring: ``aioconnector connect <name> --help`` shows it."""
    options: type[OptionsT]
    """Its options class; each field is a flag and the variable ``<env_prefix><field>``."""
    env_prefix: str
    client: str
    """The distribution of its broker client, e.g. ``nats-py``."""
    modules: tuple[str, ...]
    """What its client is imported as, checked by :meth:`require`."""
    run: Callable[..., Awaitable[SourceStats]]
    """``run(controller, options, *, stop=, stop_signals=, task_status=)``."""
    errors: Callable[[], tuple[type[BaseException], ...]]
    """The client's own exception classes (imports the client): reported as one line."""

    @property
    def install(self) -> str:
        """The command that installs what it needs."""
        return f"pip install 'aioconnector[{self.name}]'"

    def settings(
        self, flags: Mapping[str, object], environ: Mapping[str, str]
    ) -> Settings[OptionsT]:
        """Each setting from its flag (a parsed value, or None when not given), else from its
        variable in ``environ``, else its default. ``ValueError`` names what is wrong;
        ``FileNotFoundError`` a missing basic-auth secret."""
        return Settings(
            config=controller_config(flags, environ),
            options=options_from(self.options, self.env_prefix, flags, environ),
            log_level=log_level(flags, environ),
            health_port=health_port(flags, environ),
        )

    def require(self) -> None:
        """Import its broker client, or raise :class:`MissingExtraError` saying what to install."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MissingExtraError(
                    f"the {self.name} connector needs {self.client}, which is not installed: "
                    f"{self.install}"
                ) from exc


TRACE_FIELDS: Final = ("traceparent", "tracestate")
"""The W3C trace-context fields a message may carry in its broker's headers."""


def trace_context(fields: Mapping[Any, Any] | None) -> dict[str, str] | None:
    """The W3C trace context among a message's broker headers (names in any case, values
    str or bytes), or None: run_source's CONSUMER span is parented on it when tracing."""
    if not fields:
        return None
    found: dict[str, str] = {}
    for name, value in fields.items():
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        if isinstance(key, str) and key.lower() in TRACE_FIELDS:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if isinstance(text, str):
                found[key.lower()] = text
    return found or None


def cloudevents_option() -> str:
    """The ``cloudevents`` option every connector has: ``--cloudevents MODE``."""
    return option(
        "keep",
        "CloudEvents: off, keep (each in its mode), binary (all in binary mode), wrap (plain too)",
        choices=MODES,
    )


def cloudevents_type_option(broker: str) -> str:
    """The ``cloudevents_type`` option: ``--cloudevents-type TYPE``, for wrapped messages."""
    return option(
        f"aioconnector.{broker}.message",
        "type of the messages --cloudevents wrap wraps",
        blank=False,  # a required attribute
    )


class _HasCloudEvents(Protocol):
    @property
    def cloudevents(self) -> str: ...
    @property
    def cloudevents_type(self) -> str: ...


def cloudevents_of(options: _HasCloudEvents) -> CloudEvents:
    """How the connector forwards CloudEvents, from its options (``ValueError`` for an empty
    type)."""
    return CloudEvents(mode=options.cloudevents, type=options.cloudevents_type)


def announce_ready(logger: logging.Logger, what: str) -> None:
    """Log that the connector consumes ``what`` (the line tests and operators wait for)."""
    logger.info("%s consuming %s", READY_MARKER, what)


UNROUTABLE: Final = ("dead-letter", "drop", "retry")
"""The values of a connector's ``--unroutable``: what becomes of unmatched or invalid messages."""


def unroutable(choice: str) -> OutcomeKind:
    """``--unroutable``'s value (``dead-letter``, ``drop``, ``retry``) as an OutcomeKind."""
    return OutcomeKind(choice.replace("-", "_"))


def log_outcome(logger: logging.Logger, outcome: Outcome, what: str) -> None:
    """One line for a message not acknowledged (``what`` names it): INFO for a retry, WARNING
    for a dead letter or a drop; nothing for an ack."""
    reason = outcome.reason
    if reason is None:
        return
    delivery = "" if reason.deliveries is None else f" (delivery {reason.deliveries})"
    if outcome.kind is OutcomeKind.RETRY:
        logger.info("retrying %s%s in %gs: %s", what, delivery, outcome.delay, reason.summary)
    elif outcome.kind is OutcomeKind.DEAD_LETTER:
        logger.warning("dead-lettering %s%s: %s", what, delivery, reason.summary)
    else:
        logger.warning("dropping %s%s: %s", what, delivery, reason.summary)
