"""Running a message source through a controller: bounded in flight, settled per message.

A broker connector is a loop: fetch a message, invoke its topic's functions, then ack or nack
it at the source depending on the results. `run_source` is that loop, written once: a fixed
pool of workers (no task per message), a graceful stop that finishes what is in flight and
fetches nothing more, and one verdict per message.
"""

from __future__ import annotations

import logging
import signal
import sys
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import attrs

from ._errors import DiscoveryError, only_exception
from ._outcome import OutcomeKind, Settlement, Settling, settlement_of
from ._stats import Counts

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence

    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._controller import AsyncController
    from ._message import Body
    from ._results import InvocationResult

    # AsyncController.invoke, or invoke_async and the callbacks' results.
    _Invoke = Callable[..., Awaitable[Sequence[InvocationResult]]]

__all__ = ["Settlement", "SourceMessage", "SourceStats", "run_source", "settlement_of"]
# Settlement and settlement_of live with the outcome model (_outcome.py); imported from here too.

logger = logging.getLogger("aioconnector")
T = TypeVar("T")

# How long settle() (or release()) may take once its message's invocations are over.
_SETTLE_GRACE = 5.0
# An unmatched message refreshes a topic map older than this before it is settled UNMATCHED.
_MISS_REFRESH_AFTER = timedelta(seconds=5)


@attrs.frozen(kw_only=True)
class SourceMessage:
    """What a source's message means to the controller: topic, body, headers and its id."""

    topic: str
    body: Body
    headers: Mapping[str, str] | None = None
    message_id: str | None = None
    """Sent as ``X-Message-Id`` (unless ``headers`` has one), so functions can deduplicate."""
    trace_context: Mapping[str, str] | None = None
    """The W3C trace context the message carried (``traceparent``, ``tracestate``), from the
    broker's own headers; read only when the controller traces (``tracing=``), as is, when
    this is ``None``, a ``traceparent`` in ``headers`` or in a CloudEvent body."""


@attrs.frozen(kw_only=True)
class SourceStats:
    """How many messages `run_source` took from the source and how each was settled."""

    received: int
    settled: Mapping[Settlement, int]
    unsettled: int
    """Messages taken from the source but not settled when it stopped (left to redelivery)."""
    outcomes: Mapping[OutcomeKind, int] = attrs.field(factory=lambda: dict.fromkeys(OutcomeKind, 0))
    """How many settled messages got each outcome, as :func:`outcome_of` decided it within
    ``settle`` (a ``settle`` that does not call it counts in none)."""


@attrs.define
class _Counter(Generic[T]):
    received: int = 0
    settled: dict[Settlement, int] = attrs.Factory(lambda: dict.fromkeys(Settlement, 0))
    outcomes: dict[OutcomeKind, int] = attrs.Factory(lambda: dict.fromkeys(OutcomeKind, 0))
    # Taken from the source, not yet settled, by the number of their taking (not by id(): a
    # source may yield one object twice, e.g. the same string, while the first is in flight).
    pending: dict[int, T] = attrs.Factory(dict)
    totals: Counts = attrs.Factory(Counts)  # the controller's, for stats() and metrics


async def run_source(
    controller: AsyncController,
    source: AsyncIterable[T],
    *,
    convert: Callable[[T], SourceMessage],
    settle: Callable[[T, Settlement, Sequence[InvocationResult]], Awaitable[None]],
    max_in_flight: int | None = None,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
    drain_timeout: float | None = None,
    release: Callable[[T], Awaitable[None]] | None = None,
    invoke_async: bool = False,
    messaging_system: str = "aioconnector",
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> SourceStats:
    """Feed every message of ``source`` to ``controller`` and settle it from its results.

    At most ``max_in_flight`` messages (default: the controller's ``max_concurrency``) are
    between fetch and settle at once; the source is not iterated further until one is settled.
    ``settle(message, settlement, results)`` is awaited once per message, after all its
    invocations finished. It ends when the source is exhausted, ``stop`` is set, or one of
    ``stop_signals`` arrives: then it fetches nothing more, lets messages in flight finish and
    settle for up to ``drain_timeout`` (default: the controller's), and returns. Messages still
    unsettled then are counted in ``SourceStats.unsettled``; each is passed to ``release`` (when
    given, e.g. to nak it at once) or else left to the broker to redeliver. A signal also sets
    ``stop``. Once invocations finished, ``settle`` is shielded from the stop for a few seconds,
    so an ack is not cut in half. Exceptions from ``convert`` (and from ``invoke`` for bad
    input) that are ``ValueError``/``TypeError`` settle the message as INVALID; any other
    exception, and any from ``settle``, ends the run and propagates. With ``tg.start(...)`` it
    reports ready once it listens for ``stop_signals`` and its workers wait for messages.

    Within ``settle``, :func:`outcome_of` turns the settlement into an :class:`Outcome` (ack,
    retry with a delay, dead-letter with a reason, drop) by an :class:`OutcomePolicy`, from the
    broker's delivery count; its reason then carries the message's topic, its id and, for
    INVALID, the error caught above. The packaged connectors all settle that way.

    ``invoke_async=True`` invokes with :meth:`AsyncController.invoke_async` (for functions that
    run for minutes): a message is settled once the callbacks of all its functions arrived,
    from their results, by the same rules (a callback that does not come within
    ``callback_timeout`` is a failure: RETRY). It stays in flight meanwhile, so
    ``max_in_flight`` bounds the messages whose functions are queued or running. It needs the
    controller's callback receiver (``callback_listen`` or ``callback_public_url``).

    Each message taken and settled is also counted in the controller's ``stats()`` (and its
    metrics). When the controller traces, each message gets a CONSUMER span ``process
    {topic}`` with ``messaging.system`` = ``messaging_system`` (the broker's name), parented
    on the trace context the message carried (`SourceMessage.trace_context`).
    """
    workers = max_in_flight if max_in_flight is not None else controller.config.max_concurrency
    if workers < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {workers}")
    invoke = controller.invoke
    if invoke_async:
        _check_receiver(controller)
        invoke = partial(_invoke_and_wait, controller)
    grace = controller.config.drain_timeout if drain_timeout is None else drain_timeout
    stop = stop or anyio.Event()
    counter: _Counter[T] = _Counter(totals=controller._counts)

    busy_workers = workers
    workers_done = anyio.Event()

    async def work(receive: MemoryObjectReceiveStream[tuple[int, T]]) -> None:
        nonlocal busy_workers
        async with receive:
            async for ticket, item in receive:
                await _handle(
                    controller,
                    item,
                    convert,
                    settle,
                    counter,
                    ticket=ticket,
                    invoke=invoke,
                    messaging_system=messaging_system,
                )
        busy_workers -= 1
        if not busy_workers:
            workers_done.set()

    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            if stop_signals:
                await group.start(_set_on_signals, stop, stop_signals)
            send, receive = anyio.create_memory_object_stream[tuple[int, T]](0)
            with receive:
                for _ in range(workers):
                    group.start_soon(work, receive.clone())
            task_status.started()
            with send, anyio.CancelScope() as fetching:
                group.start_soon(_cancel_when_set, stop, fetching)
                await _feed(source, send, counter)
            # The closed stream lets idle workers leave; busy ones finish their message,
            # within the drain deadline when we were told to stop (also after the source ended:
            # a message awaiting its callbacks may take minutes).
            with anyio.CancelScope() as draining:
                group.start_soon(_drain_deadline_when_set, stop, draining, grace)
                await workers_done.wait()
            group.cancel_scope.cancel()  # the watchers, and workers past the deadline
    except BaseExceptionGroup as exc:
        error = only_exception(exc)
        if error is None:
            raise
    if error is not None:
        raise error  # outside `except`: its own __cause__ and __context__ stay
    unsettled = len(counter.pending)
    counter.totals.source_in_flight -= unsettled  # left to the broker: no longer ours
    if unsettled:
        logger.warning("%d message(s) left unsettled at stop", unsettled)
        if release is not None:
            await _release_all(release, list(counter.pending.values()))
    return SourceStats(
        received=counter.received,
        settled=counter.settled,
        unsettled=unsettled,
        outcomes=counter.outcomes,
    )


async def _feed(
    source: AsyncIterable[T], send: MemoryObjectSendStream[tuple[int, T]], counter: _Counter[T]
) -> None:
    iterator = aiter(source)
    try:
        async for item in iterator:
            counter.received += 1
            ticket = counter.received
            counter.pending[ticket] = item
            counter.totals.source_in_flight += 1
            await send.send((ticket, item))  # waits for a free worker: the in-flight bound
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:  # an async generator: finalize it now, in this task
            with anyio.CancelScope(shield=True):
                await aclose()


async def _handle(
    controller: AsyncController,
    item: T,
    convert: Callable[[T], SourceMessage],
    settle: Callable[[T, Settlement, Sequence[InvocationResult]], Awaitable[None]],
    counter: _Counter[T],
    *,
    ticket: int,
    invoke: _Invoke,
    messaging_system: str,
) -> None:
    results: Sequence[InvocationResult] = ()
    verdict = Settlement.INVALID
    consuming = None  # tracing: the message's span, current until it is settled
    message: SourceMessage | None = None
    invalid: BaseException | None = None  # why it is INVALID, for outcome_of's reason
    try:
        try:
            message = convert(item)
            if controller._tracer is not None:
                consuming = controller._tracer.consume(message, messaging_system)
            headers = dict(message.headers or {})
            if message.message_id is not None and not any(
                name.lower() == "x-message-id" for name in headers
            ):
                headers["X-Message-Id"] = message.message_id
            results = await invoke(message.topic, message.body, headers=headers, context=item)
            if not results and await _refreshed_for(controller, message.topic):
                results = await invoke(message.topic, message.body, headers=headers, context=item)
            verdict = settlement_of(results)
        except (ValueError, TypeError) as exc:
            logger.warning("invalid message from the source: %s", exc)
            verdict = Settlement.INVALID
            invalid = exc
        # The invocations are over: do not let a stop cut the ack (or nak) in half.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _SETTLE_GRACE
            with Settling(
                error=invalid,
                topic=None if message is None else message.topic,
                message_id=None if message is None else message.message_id,
            ) as settled:
                await settle(item, verdict, results)
            counter.settled[verdict] += 1
            if settled.outcome is not None:
                counter.outcomes[settled.outcome.kind] += 1
            del counter.pending[ticket]
            totals = counter.totals
            totals.source_in_flight -= 1
            totals.settled[verdict.value] = totals.settled.get(verdict.value, 0) + 1
    finally:
        if consuming is not None:
            consuming.end(verdict, results)


def _check_receiver(controller: AsyncController) -> None:
    config = controller.config
    if config.callback_listen is None and config.callback_public_url is None:
        raise ValueError(
            "run_source(invoke_async=True) needs the controller's callback receiver: set "
            "callback_listen (built-in server) or callback_public_url (where callback_app is "
            "mounted)"
        )


async def _invoke_and_wait(
    controller: AsyncController,
    topic: str,
    body: Body,
    *,
    headers: Mapping[str, str] | None = None,
    context: object = None,
) -> tuple[InvocationResult, ...]:
    """``invoke_async``, then the results of all its callbacks (each ends by its callback,
    a refusal, ``callback_timeout`` or shutdown)."""
    pending = await controller.invoke_async(topic, body, headers=headers, context=context)
    return tuple([await invocation.result() for invocation in pending])


async def _refreshed_for(controller: AsyncController, topic: str) -> bool:
    """Before settling a message as UNMATCHED, make sure the map is not merely stale (a
    function deployed since the last refresh). At most one refresh per few seconds."""
    last = controller.stats().last_refresh
    if last is not None and datetime.now(timezone.utc) - last < _MISS_REFRESH_AFTER:
        return False
    try:
        await controller.refresh()
    except DiscoveryError:
        return False  # counted in stats and logged; the message stays UNMATCHED
    return bool(controller.functions_for(topic))


async def _drain_deadline_when_set(
    event: anyio.Event, scope: anyio.CancelScope, grace: float
) -> None:
    await event.wait()
    scope.deadline = min(scope.deadline, anyio.current_time() + grace)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _release_all(release: Callable[[T], Awaitable[None]], items: list[T]) -> None:
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + _SETTLE_GRACE
        for item in items:
            await release(item)


async def _set_on_signals(
    event: anyio.Event,
    signals: Sequence[signal.Signals],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for signum in received:
            logger.info("received %s: finishing messages in flight", signal.Signals(signum).name)
            event.set()
            return
