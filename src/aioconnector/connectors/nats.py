"""NATS JetStream to OpenFaaS: a durable pull consumer whose subjects are the topics.

Each message invokes every function whose ``topic`` annotation names its subject (with
--strip-prefix removed: ``events.orders`` -> ``orders``), with the message as the body and
``X-Message-Id`` set to its ``Nats-Msg-Id`` header, or else its stream sequence number.

Delivery is at least once, in no particular order (up to max_concurrency messages at once).
Each message is settled by aioconnector's outcome policy (OutcomePolicy), with JetStream's
delivery count:

- every matched function answered 2xx: ack;
- an invocation failed: nak with a delay (--nak-delay, doubled at each delivery, at most 60 s),
  so JetStream redelivers it; on the consumer's max_deliver-th delivery, dead-lettered;
- no function subscribes, or the message cannot be invoked: dead-lettered at once
  (--unroutable drop: terminated without a dead letter; --unroutable retry, or the older
  --nak-unroutable: nak'ed like a failure);
- dead-lettered: published, with JetStream's ack, to --dead-letter-subject (a stream capturing
  it is created, ``<stream>_DEAD``, when none does) with the original headers and the reason in
  ``dead_*`` headers (dead_cause, dead_reason, dead_function, dead_status, dead_error,
  dead_attempts, dead_deliveries, dead_topic, dead_message_id, dead_from = stream/sequence,
  dead_subject), then terminated (term); without --dead-letter-subject, only terminated and
  logged (JetStream sends a MSG_TERMINATED advisory);
- a connector that dies leaves its messages unacked: JetStream redelivers them after ack_wait.

Every message fetched and not yet settled is told to JetStream as in progress (+WPI) every
third of the consumer's ack_wait, so a message whose functions run longer than ack_wait (or
which waits in a fetched batch for a free worker) is not redelivered meanwhile.

With --async-invocations, each message is invoked through /async-function/ (the gateway's
queue-worker runs the functions) and settled by the same rules once the callbacks of all its
functions arrived, at the built-in receiver (callback_listen, and callback_public_url for how the
gateway reaches it): for functions that run for minutes. It stays in progress meanwhile and
counts in max_concurrency until it is settled. A callback that does not come within
callback_timeout is a failure (nak).

--cloudevents (default keep): a CloudEvent (``ce-*`` headers, or a structured payload) goes to
functions in HTTP binary mode, or structured as it came; binary converts structured ones, wrap
also wraps plain messages (source aioconnector/nats/<stream>, type --cloudevents-type). See
docs/connectors.md, CloudEvents.

The stream and the durable consumer are created when missing (an existing one keeps its
settings). Several connectors with the same --durable share the work. SIGTERM or SIGINT: fetch
no more, finish the invocations in flight (up to drain_timeout), ack what finished, leave the
rest to redelivery, exit 0. Needs ``pip install 'aioconnector[nats]'``:

    gateway_url=http://127.0.0.1:8080 aioconnector connect nats \\
        --stream EVENTS --subjects 'events.>' --strip-prefix events.
"""

from __future__ import annotations

import asyncio  # nats-py is asyncio-only; its fetch may raise asyncio's TimeoutError
import logging
import sys
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import attrs

from .._cloudevents import (
    CloudEvents,
    CloudEventsMode,
    find_header,
    forward,
    http_attributes,
    wrap_source,
)
from .._errors import only_exception
from .._outcome import OutcomeKind, OutcomePolicy, outcome_of
from .._source import SourceMessage, run_source
from ._base import (
    UNROUTABLE,
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

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    import signal
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from anyio.abc import TaskStatus
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from .._controller import AsyncController
    from .._outcome import OutcomeReason, Settlement
    from .._results import InvocationResult
    from .._source import SourceStats

__all__ = ["CONNECTOR", "Options", "run"]

log = logging.getLogger("aioconnector.connectors.nats")
_FETCH_TIMEOUT = 1.0  # seconds a fetch waits for messages; also how soon a stop is noticed
_MAX_NAK_DELAY = 60.0
_MIN_PROGRESS = 0.1  # seconds between in-progress marks, whatever the ack_wait


@attrs.frozen(kw_only=True)
class Options:
    """What to consume and how to settle it; each field is also a flag (env ``nats_<field>``)."""

    url: str = option("nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
    stream: str = option("EVENTS", "JetStream stream (created if missing)")
    subjects: tuple[str, ...] = option(
        ("events.>",), "subjects to consume, comma-separated", also_env=("topics",)
    )
    durable: str = option("aioconnector", "durable consumer, shared by replicas (created)")
    batch: int = option(16, "messages per fetch")
    strip_prefix: str = option("", "removed from a subject to give its topic, e.g. 'events.'")
    ack_wait: float = option(30.0, "before an unacked message is redelivered (new consumer)")
    max_deliver: int = option(
        5, "deliveries before a failing message is dead-lettered (new consumer)"
    )
    nak_delay: float = option(1.0, "redelivery delay after a failure, doubled each time")
    unroutable: str = option(
        "dead-letter", "unmatched/invalid messages: dead-letter, drop or retry", choices=UNROUTABLE
    )
    nak_unroutable: bool = option(default=False, help="the same as --unroutable retry (older)")
    dead_letter_subject: str = option(
        "", "publish dead letters here, reason in dead_* headers (empty: term only)"
    )
    async_invocations: bool = option(
        default=False, help="invoke via /async-function/, ack once the callbacks came"
    )
    cloudevents: str = cloudevents_option()
    cloudevents_type: str = cloudevents_type_option("nats")


async def run(
    controller: AsyncController,
    options: Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> SourceStats:
    """Consume into ``controller`` until ``stop`` is set or one of ``stop_signals`` arrives.

    With ``tg.start(run, ...)``, ready once the consumer is bound and the workers wait. With
    ``options.async_invocations``, the controller needs its callback receiver
    (``callback_listen`` or ``callback_public_url``): ``ValueError`` otherwise.
    """
    CONNECTOR.require()
    events = cloudevents_of(options)
    config = controller.config
    receiver = config.callback_listen or config.callback_public_url
    if options.async_invocations and receiver is None:
        raise ValueError(
            "async_invocations needs a callback receiver: set callback_listen (HOST:PORT), and "
            "callback_public_url if the gateway reaches it by another address"
        )
    import nats

    client = await nats.connect(
        options.url.split(","), name=controller.config.connector_name, error_cb=_log_nats_error
    )
    try:
        js = client.jetstream()
        subscription, max_deliver, ack_wait = await _subscribe(js, options)
        if options.dead_letter_subject:
            await _dead_letter_stream(js, options)
        leases = _Leases(interval=max(ack_wait / 3, _MIN_PROGRESS))
        return await _run(
            controller,
            _fetch(subscription, options, leases),
            leases,
            convert=partial(
                _convert, options.strip_prefix, events, wrap_source("nats", options.stream)
            ),
            settle=_Settle(js, options, _policy(options, max_deliver), leases),
            stop=stop,
            stop_signals=stop_signals,
            invoke_async=options.async_invocations,
            task_status=task_status,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()  # also sends the acks still buffered


def _policy(options: Options, max_deliver: int) -> OutcomePolicy:
    """The outcome policy: the consumer's max_deliver (-1: none), --nak-delay doubling."""
    kind = OutcomeKind.RETRY if options.nak_unroutable else unroutable(options.unroutable)
    return OutcomePolicy(
        max_deliveries=max_deliver if max_deliver > 0 else None,
        retry_delay=options.nak_delay,
        max_retry_delay=_MAX_NAK_DELAY,
        unroutable=kind,
    )


async def _run(
    controller: AsyncController,
    source: AsyncIterator[Msg],
    leases: _Leases,
    *,
    convert: Callable[[Msg], SourceMessage],
    settle: Callable[[Msg, Settlement, Sequence[InvocationResult]], Awaitable[None]],
    stop: anyio.Event | None,
    stop_signals: Sequence[signal.Signals],
    invoke_async: bool,
    task_status: TaskStatus[None],
) -> SourceStats:
    """``run_source``, with the messages in flight kept alive beside it."""
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(leases.keep_alive)
            stats = await run_source(
                controller,
                source,
                convert=convert,
                settle=settle,
                stop=stop,
                stop_signals=stop_signals,
                messaging_system="nats",  # no value in the semantic conventions: the broker's name
                invoke_async=invoke_async,
                task_status=task_status,
            )
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as exc:
        error = only_exception(exc)
        if error is None:
            raise
    if error is not None:
        raise error  # as itself, as run_source raises it
    return stats


async def _log_nats_error(exc: Exception) -> None:
    """nats-py reports connection trouble here (and retries): one line, not a traceback."""
    log.warning("NATS: %s: %s", type(exc).__name__, exc)


async def _subscribe(
    js: JetStreamContext, options: Options
) -> tuple[JetStreamContext.PullSubscription, int, float]:
    """Bind to the durable consumer, creating it (and the stream) if missing; its max_deliver
    and ack_wait."""
    from nats.js.api import AckPolicy, ConsumerConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(options.stream)
    except NotFoundError:
        await js.add_stream(name=options.stream, subjects=list(options.subjects))
    try:
        info = await js.consumer_info(options.stream, options.durable)
    except NotFoundError:
        config = ConsumerConfig(
            durable_name=options.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=options.ack_wait,
            max_deliver=options.max_deliver,
            # One subject filters the stream; several read all of it (filter_subjects would
            # need nats-server 2.10).
            filter_subject=options.subjects[0] if len(options.subjects) == 1 else None,
        )
        info = await js.add_consumer(options.stream, config)
    subscription = await js.pull_subscribe_bind(durable=options.durable, stream=options.stream)
    return subscription, info.config.max_deliver or -1, info.config.ack_wait or options.ack_wait


async def _dead_letter_stream(js: JetStreamContext, options: Options) -> None:
    """Make sure a stream other than the consumed one captures --dead-letter-subject: create
    ``<stream>_DEAD`` when none does."""
    from nats.js.errors import NotFoundError

    subject = options.dead_letter_subject
    try:
        found = await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        await js.add_stream(name=f"{options.stream}_DEAD", subjects=[subject])
        return
    if found == options.stream:
        raise ValueError(
            f"dead_letter_subject {subject!r} is in stream {found}, which this connector "
            "consumes: its dead letters would come back to it; choose a subject outside it"
        )


class _Leases:
    """The messages fetched and not yet settled, told to JetStream as in progress (``+WPI``)
    every ``interval``: one whose invocations (or callbacks) outlast ack_wait, or that waits
    in a fetched batch for a free worker, is not redelivered meanwhile."""

    def __init__(self, *, interval: float) -> None:
        self._interval = interval
        self._messages: dict[int, Msg] = {}  # by id(): each Msg is a distinct, living object

    def hold(self, msg: Msg) -> None:
        self._messages[id(msg)] = msg

    def release(self, msg: Msg) -> None:
        self._messages.pop(id(msg), None)

    async def keep_alive(self) -> None:
        import nats.errors

        while True:
            await anyio.sleep(self._interval)
            for msg in list(self._messages.values()):
                try:
                    await msg.in_progress()
                except nats.errors.Error as exc:  # reconnecting: the next round tries again
                    log.warning("could not mark a message in progress: %s", exc)


async def _fetch(
    subscription: JetStreamContext.PullSubscription, options: Options, leases: _Leases
) -> AsyncIterator[Msg]:
    """The consumer's messages, fetched ``options.batch`` at a time, each held in ``leases``
    until it is settled."""
    import nats.errors

    await anyio.lowlevel.checkpoint()  # run_source's signal handlers go in before "ready"
    announce_ready(log, f"stream {options.stream} as durable consumer {options.durable}")
    while True:
        try:
            batch = deque(await subscription.fetch(options.batch, timeout=_FETCH_TIMEOUT))
        # nats-py raises its own TimeoutError, or asyncio's when the deadline ran out between
        # its two pull requests (a busy loop): both mean nothing new.
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        for msg in batch:
            leases.hold(msg)
        try:
            while batch:
                yield batch.popleft()
        finally:
            for msg in batch:  # stopped mid-batch: hand them back now, not after ack_wait
                leases.release(msg)
                await msg.nak()


def message_id(msg: Msg) -> str:
    """The publisher's ``Nats-Msg-Id``, or else the stream sequence number."""
    return (msg.headers or {}).get("Nats-Msg-Id") or str(msg.metadata.sequence.stream)


def _convert(strip_prefix: str, events: CloudEvents, source: str, msg: Msg) -> SourceMessage:
    """The subject (without ``strip_prefix``) is the topic, the payload the body; a
    CloudEvent (``ce-*`` headers, or structured) is forwarded as ``events`` says."""
    topic = msg.subject.removeprefix(strip_prefix) if strip_prefix else msg.subject
    message = SourceMessage(
        topic=topic,
        body=msg.data,
        message_id=message_id(msg),
        trace_context=trace_context(msg.headers),
    )
    if events.mode is CloudEventsMode.OFF:
        return message
    return forward(
        message,
        events,
        source=source,
        attributes=http_attributes(msg.headers),
        content_type=find_header(msg.headers, "content-type"),
        time=msg.metadata.timestamp if events.wraps else None,
    )


@attrs.frozen
class _Settle:
    """``settle`` for run_source: ack, nak with the outcome's delay, or terminate (after
    publishing the dead letter)."""

    js: JetStreamContext
    options: Options
    policy: OutcomePolicy
    leases: _Leases

    async def __call__(
        self, msg: Msg, verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        self.leases.release(msg)
        deliveries = msg.metadata.num_delivered
        outcome = outcome_of(verdict, results, policy=self.policy, deliveries=deliveries)
        if outcome.kind is OutcomeKind.ACK:
            await msg.ack()
            return
        what = f"message {message_id(msg)} on {msg.subject}"
        log_outcome(log, outcome, what)
        if outcome.kind is OutcomeKind.RETRY:
            await msg.nak(delay=outcome.delay)
            return
        subject = self.options.dead_letter_subject
        if outcome.kind is OutcomeKind.DEAD_LETTER and outcome.reason and subject:
            import nats.errors

            try:
                await self.js.publish(subject, msg.data, headers=_dead_headers(msg, outcome.reason))
            except nats.errors.Error as exc:  # e.g. its stream was deleted: keep the message
                log.warning("could not publish the dead letter of %s, nak'ed: %s", what, exc)
                await msg.nak(delay=self.policy.delay(deliveries))
                return
        await msg.term()


def _dead_headers(msg: Msg, reason: OutcomeReason) -> dict[str, str]:
    """The original headers (but JetStream's own), the reason's, and where it came from."""
    metadata = msg.metadata
    origin = f"{metadata.stream}/{metadata.sequence.stream}"
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
    headers |= reason.fields()
    headers |= {
        "dead_from": origin,
        "dead_subject": msg.subject,
        "Nats-Msg-Id": origin,  # published twice (a retried term), stored once
    }
    return headers


def _errors() -> tuple[type[BaseException], ...]:
    import nats.errors

    return (nats.errors.Error,)


CONNECTOR: Connector[Options] = Connector(
    name="nats",
    summary="NATS JetStream: a durable pull consumer; the subject is the topic",
    description=__doc__ or "",
    options=Options,
    env_prefix="nats_",
    client="nats-py",
    modules=("nats",),
    run=run,
    errors=_errors,
)
"""The NATS JetStream connector, for ``aioconnector connect nats``."""
