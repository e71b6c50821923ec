"""PostgreSQL to OpenFaaS (asyncpg): LISTEN on channels; each NOTIFY invokes functions.

A notification's payload says what to invoke:

- a JSON object with a "topic" key, e.g. {"topic": "orders.created", "body": {...}, "id": 42}:
  the functions on that topic get "body" (a string as it is, anything else as JSON) with
  X-Message-Id set to "id" when there is one;
- any other payload: the channel is the topic and the payload the body, as it is (so
  `pg_notify('orders', row_to_json(NEW)::text)` works), without X-Message-Id.

--cloudevents (default keep): a structured CloudEvent (the payload, or the envelope's "body";
NOTIFY has no headers for binary mode) goes on as it came with Content-Type
application/cloudevents+json; binary converts it to HTTP binary mode, wrap also wraps plain
notifications (source aioconnector/postgres/<channel>, type --cloudevents-type). See
docs/connectors.md, CloudEvents.

A payload that starts with "{" but is not JSON, or an envelope whose "topic" is not a string,
is settled INVALID: dead-lettered (see below), and the connector goes on.

Delivery guarantees: at most once. LISTEN/NOTIFY has no acknowledgement, no redelivery and no
delivery count, so in aioconnector's outcome model (OutcomePolicy) every delivery is the last:
a notification whose invocation failed (after the controller's own retries, see RetryPolicy),
one no function subscribes to and an invalid one are dead-lettered at once (--unroutable drop:
unmatched and invalid ones are only logged). With --dead-letter-table, a dead letter is a row
of that table (created if missing: id, dead_at, channel, payload, cause, reason, and fields, a
jsonb object of the reason's dead_* fields: dead_cause, dead_reason, dead_function,
dead_status, dead_error, dead_attempts, dead_topic, dead_message_id), inserted on the
listening connection; without it, it is logged and lost. A notification sent while the
connector is down, or while its connection is being re-made, is lost, and so is one that
arrives while all max_concurrency invocation slots and the --buffer are full (dropped and
logged: NOTIFY cannot be slowed down). PostgreSQL also folds identical payloads sent on one
channel in one transaction into one notification, and limits payloads to 8000 bytes. For at
least once, use an outbox table: write each event to it in the transaction that makes it
happen, NOTIFY only as a wake-up call, and have the consumer take rows with SELECT ... FOR
UPDATE SKIP LOCKED, invoke, and DELETE them once every function answered 2xx (the row id is
then a real X-Message-Id).

Ordering: notifications arrive in commit order, but up to max_concurrency are invoked at once.
A lost connection ends the run with an error (exit status 1). SIGTERM/SIGINT: stop taking
notifications, finish those in flight (within drain_timeout). Every listener gets every
notification: run one replica. Needs ``pip install 'aioconnector[postgres]'``:

    gateway_url=http://127.0.0.1:8080 aioconnector connect postgres \\
        --dsn postgresql://postgres@127.0.0.1:5432/test --channels orders,payments
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from .._cloudevents import CloudEvents, CloudEventsMode, forward, wrap_source
from .._outcome import OutcomeKind, OutcomePolicy, outcome_of
from .._source import SourceMessage, run_source
from ._base import (
    Connector,
    announce_ready,
    cloudevents_of,
    cloudevents_option,
    cloudevents_type_option,
    log_outcome,
    trace_context,
    unroutable,
)
from ._settings import option

if TYPE_CHECKING:
    import signal
    from collections.abc import Sequence

    from anyio.abc import TaskStatus

    from .._controller import AsyncController
    from .._outcome import OutcomeReason, Settlement
    from .._results import InvocationResult
    from .._source import SourceStats

__all__ = ["CONNECTOR", "Notification", "Options", "run"]

log = logging.getLogger("aioconnector.connectors.postgres")
_JSON = {"Content-Type": "application/json"}
_FINAL = ("dead-letter", "drop")  # no redelivery: --unroutable cannot be retry
# A table name, schema-qualified or not; quoted as given (so case-sensitive).
_TABLE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")


@attrs.frozen(kw_only=True)
class Options:
    """What to listen to; each field is also a flag (env ``postgres_<field>``)."""

    dsn: str = option("", "libpq connection URL; empty: the PG* variables (PGHOST...)")
    channels: tuple[str, ...] = option(
        ("openfaas",), "channels to LISTEN on, comma-separated", also_env=("topics",)
    )
    buffer: int = option(1000, "notifications held while every invocation slot is busy")
    dead_letter_table: str = option(
        "", "table for dead letters ([schema.]name, created if missing); empty: log only"
    )
    unroutable: str = option(
        "dead-letter", "unmatched/invalid notifications: dead-letter or drop", choices=_FINAL
    )
    cloudevents: str = cloudevents_option()
    cloudevents_type: str = cloudevents_type_option("postgres")


@attrs.frozen
class Notification:
    """A notification as received: its channel and payload."""

    channel: str
    payload: str


async def run(
    controller: AsyncController,
    options: Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> SourceStats:
    """Listen and invoke until ``stop`` is set or one of ``stop_signals`` arrives.

    With ``tg.start(run, ...)``, ready once listening. A lost connection ends it with
    ``ConnectionError`` once the notifications received are settled.
    """
    CONNECTOR.require()
    import asyncpg  # type: ignore[import-untyped]  # no type hints (asyncpg-stubs has them)

    table = _quoted_table(options.dead_letter_table)
    events = cloudevents_of(options)

    send, receive = anyio.create_memory_object_stream[Notification](options.buffer)
    lost: list[str] = []

    def on_notify(_connection: Any, _pid: int, channel: str, payload: str) -> None:
        if send.statistics().current_buffer_used >= options.buffer:
            log.error("buffer full: dropped a notification on %s", channel)
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            send.send_nowait(Notification(channel, payload))  # unless stopping

    def on_termination(_connection: Any) -> None:
        lost.append("the connection to PostgreSQL was lost")
        send.close()  # ends the source: run_source finishes what is in flight

    async with send, receive:
        connection = await asyncpg.connect(options.dsn or None)
        try:
            if table is not None:
                await connection.execute(_CREATE.format(table=table))
            connection.add_termination_listener(on_termination)
            for channel in options.channels:
                await connection.add_listener(channel, on_notify)
            announce_ready(log, f"channels {', '.join(options.channels)}")
            task_status.started()
            stats = await run_source(
                controller,
                receive,
                convert=partial(_convert, events),
                settle=_Settle(connection, table, _policy(options)),
                stop=stop,
                stop_signals=stop_signals,
                messaging_system="postgresql",  # the convention has none: the db.system name
            )
        finally:
            connection.remove_termination_listener(on_termination)
            with anyio.CancelScope(shield=True):
                await connection.close()
    if lost:
        raise ConnectionError(lost[0])
    return stats


def _convert(events: CloudEvents, notification: Notification) -> SourceMessage:
    """The notification's message; a structured CloudEvent (as the payload or the envelope's
    body: there are no headers for binary mode) is forwarded as ``events`` says."""
    message = _message(notification)
    if events.mode is CloudEventsMode.OFF:
        return message
    # No content type is declared (application/json is ours): a CloudEvent is recognised.
    return forward(message, events, source=wrap_source("postgres", notification.channel))


def _message(notification: Notification) -> SourceMessage:
    """An envelope {"topic", "body", "id"} or a plain payload for the channel's topic."""
    payload = notification.payload
    if not payload.lstrip().startswith("{"):
        return SourceMessage(topic=notification.channel, body=payload)
    document = json.loads(payload)  # a ValueError: settled INVALID
    if not isinstance(document, dict) or "topic" not in document:
        return SourceMessage(topic=notification.channel, body=payload, headers=_JSON)
    topic, body, ident = document["topic"], document.get("body", ""), document.get("id")
    if not isinstance(topic, str):
        raise TypeError(f"the envelope's topic must be a string, got {topic!r}")
    if isinstance(ident, bool) or not isinstance(ident, (str, int, type(None))):
        raise TypeError(f"the envelope's id must be a string or an integer, got {ident!r}")
    return SourceMessage(
        topic=topic,
        body=body if isinstance(body, str) else json.dumps(body),
        headers=None if isinstance(body, str) else _JSON,
        message_id=None if ident is None else str(ident),
        trace_context=trace_context(document),  # the envelope's "traceparent", "tracestate"
    )


_CREATE: Final = """CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    dead_at timestamptz NOT NULL DEFAULT now(),
    channel text NOT NULL,
    payload text NOT NULL,
    cause text NOT NULL,
    reason text NOT NULL,
    fields jsonb NOT NULL
)"""
_INSERT: Final = (
    "INSERT INTO {table} (channel, payload, cause, reason, fields) VALUES ($1, $2, $3, $4, $5)"
)


def _quoted_table(name: str) -> str | None:
    """``--dead-letter-table`` as a quoted identifier, None when empty; ``ValueError`` for a
    name that is not ``[schema.]table`` of letters, digits and underscores."""
    if not name:
        return None
    if not _TABLE.fullmatch(name):
        raise ValueError(
            f"dead_letter_table must be [schema.]name of letters, digits and underscores, "
            f"got {name!r}"
        )
    return ".".join(f'"{part}"' for part in name.split("."))


def _policy(options: Options) -> OutcomePolicy:
    """No redelivery: every failure is final, on the first and only delivery."""
    return OutcomePolicy(max_deliveries=1, unroutable=unroutable(options.unroutable))


class _Settle:
    """``settle`` for run_source: nothing to acknowledge; a dead letter goes to the table (if
    there is one), the rest is logged, since it is lost."""

    def __init__(self, connection: Any, table: str | None, policy: OutcomePolicy) -> None:
        self._connection = connection
        self._insert = None if table is None else _INSERT.format(table=table)
        self._policy = policy
        self._lock = anyio.Lock()  # one query at a time on the connection

    async def __call__(
        self, notification: Notification, verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        outcome = outcome_of(verdict, results, policy=self._policy)
        if outcome.kind is OutcomeKind.ACK or outcome.reason is None:
            return
        what = f"a notification on {notification.channel}"
        if outcome.kind is OutcomeKind.DEAD_LETTER and self._insert is not None:
            log_outcome(log, outcome, what)
            await self._dead_letter(notification, outcome.reason)
        elif outcome.kind is OutcomeKind.DEAD_LETTER:
            log.error("lost %s: %s", what, outcome.reason.summary)
        else:
            log_outcome(log, outcome, what)

    async def _dead_letter(self, notification: Notification, reason: OutcomeReason) -> None:
        import asyncpg

        try:
            async with self._lock:
                await self._connection.execute(
                    self._insert,
                    notification.channel,
                    notification.payload,
                    reason.cause,
                    reason.summary,
                    json.dumps(reason.fields()),
                )
        except asyncpg.PostgresError as exc:  # e.g. the table was dropped: say what is lost
            log.error(  # noqa: TRY400  (one line: the error says it all)
                "lost a notification on %s (%s), not dead-lettered: %s",
                notification.channel,
                reason.summary,
                exc,
            )


def _errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError)


CONNECTOR: Connector[Options] = Connector(
    name="postgres",
    summary="PostgreSQL LISTEN/NOTIFY: the payload's topic (or the channel) is the topic",
    description=__doc__ or "",
    options=Options,
    env_prefix="postgres_",
    client="asyncpg",
    modules=("asyncpg",),
    run=run,
    errors=_errors,
)
"""The PostgreSQL LISTEN/NOTIFY connector, for ``aioconnector connect postgres``."""
