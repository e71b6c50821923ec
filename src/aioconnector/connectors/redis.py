"""Redis Streams to OpenFaaS: a consumer group whose entries invoke the functions of their topic.

An entry's ``topic`` field is its topic (without one, the stream's name is), its ``body`` field
the body; ``X-Message-Id`` is ``<stream>/<entry id>``. An entry without ``body`` is invalid.
--cloudevents (default keep): a CloudEvent (``ce_<attribute>`` fields and a ``content-type``
field, or a structured ``body``) goes to functions in HTTP binary mode, or structured as it
came; binary converts structured ones, wrap also wraps plain entries (source
aioconnector/redis/<stream>, type --cloudevents-type). See docs/connectors.md, CloudEvents.

Delivery is at least once, in no particular order (up to max_concurrency entries at once):

- every matched function answered 2xx: XACK;
- an invocation failed: the entry stays pending, and is claimed again (XAUTOCLAIM, by this or
  any connector of the group) once idle for --min-idle ms;
- on its --max-deliveries-th delivery (XPENDING's count), or at once when no function
  subscribes or the entry is invalid (--unroutable drop: XACKed and logged; retry: left
  pending like a failure): copied to the dead-letter stream ``<stream>:dead`` with the reason
  in ``dead_*`` fields (dead_cause, dead_reason, dead_function, dead_status, dead_error,
  dead_attempts, dead_deliveries, dead_topic, dead_message_id, and dead_from =
  ``<stream>/<entry id>``) and XACKed, in one MULTI; an entry delivered more often than that
  without being settled (it crashed its connectors) likewise, with dead_cause ``abandoned``;
- a connector that dies leaves its entries pending: the others claim them after --min-idle.

While an entry's invocations run, the connector renews its claim every third of --min-idle
(XCLAIM JUSTID, which resets the idle time without counting a delivery), so an invocation
slower than --min-idle does not get the entry claimed again, by another connector or by this
one: its lease lives as long as the process does.

The group is created when missing, from the start of the stream. Several connectors in the same
--group (each with its own --consumer; the default, ``<hostname>-<pid>``, differs per pod)
share the work. SIGTERM or SIGINT: read no more, finish the invocations in flight (up to
drain_timeout), XACK what finished, leave the rest pending, exit 0. --min-idle is then how
long a dead connector's entries wait: keep it well above a pause of the process (a claim is
renewed every third of it). Needs Redis >= 7 and ``pip install 'aioconnector[redis]'``:

    gateway_url=http://127.0.0.1:8080 aioconnector connect redis --streams orders,payments
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, cast

import anyio
import anyio.lowlevel
import attrs

from .._cloudevents import (
    CloudEvents,
    CloudEventsMode,
    forward,
    prefixed_attributes,
    wrap_source,
)
from .._outcome import OutcomeKind, OutcomePolicy, OutcomeReason, outcome_of
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

if TYPE_CHECKING:
    import signal
    from collections.abc import AsyncIterator, Mapping, Sequence

    from anyio.abc import TaskStatus
    from redis.asyncio import Redis
    from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

    from .._controller import AsyncController
    from .._outcome import Settlement
    from .._results import InvocationResult
    from .._source import SourceStats

    Entries = list[tuple[bytes, dict[bytes, bytes]]]  # XREADGROUP/XAUTOCLAIM's (RESP2)

__all__ = ["CONNECTOR", "Entry", "Options", "run"]

log = logging.getLogger("aioconnector.connectors.redis")
_CONTENT_TYPE = b"content-type"  # the field that says what ``body`` is (the Kafka binding's)


@attrs.frozen(kw_only=True)
class Options:
    """What to consume and how to settle it; each field is also a flag (env ``redis_<field>``)."""

    url: str = option("redis://127.0.0.1:6379/0", "Redis URL")
    streams: tuple[str, ...] = option(
        ("events",), "streams to consume, comma-separated", also_env=("topics",)
    )
    group: str = option("aioconnector", "consumer group, shared by replicas (created)")
    consumer: str = option("", "this consumer's name in the group (empty: <hostname>-<pid>)")
    batch: int = option(16, "entries per read")
    min_idle: int = option(
        60_000, "ms after which a dead consumer's pending entry is claimed (live ones renew)"
    )
    max_deliveries: int = option(5, "deliveries before a failing entry is dead-lettered")
    unroutable: str = option(
        "dead-letter", "unmatched/invalid entries: dead-letter, drop or retry", choices=UNROUTABLE
    )
    cloudevents: str = cloudevents_option()
    cloudevents_type: str = cloudevents_type_option("redis")


@attrs.frozen
class Entry:
    """A stream entry as read, with how many times it was delivered (this time included)."""

    stream: str
    id: str
    fields: Mapping[bytes, bytes]
    deliveries: int


@attrs.define
class _Held:
    """The entries this connector took and has not settled yet, by stream: its leases."""

    ids: dict[str, set[str]] = attrs.Factory(dict)

    def take(self, entry: Entry) -> bool:
        """Hold ``entry``; False when it is held already (claimed again while in flight)."""
        held = self.ids.setdefault(entry.stream, set())
        if entry.id in held:
            return False
        held.add(entry.id)
        return True

    def release(self, entry: Entry) -> None:
        self.ids.get(entry.stream, set()).discard(entry.id)


async def run(
    controller: AsyncController,
    options: Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> SourceStats:
    """Consume into ``controller`` until ``stop`` is set or one of ``stop_signals`` arrives.

    With ``tg.start(run, ...)``, ready once the group exists and the workers wait.
    """
    CONNECTOR.require()
    import redis.asyncio
    import redis.exceptions

    events = cloudevents_of(options)
    if not options.consumer:
        options = attrs.evolve(options, consumer=f"{socket.gethostname()}-{os.getpid()}")
    async with redis.asyncio.Redis.from_url(options.url) as client:
        for stream in options.streams:
            try:
                await client.xgroup_create(stream, options.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # BUSYGROUP: it exists already
                    raise
        held = _Held()
        async with anyio.create_task_group() as leases:
            leases.start_soon(_renew_leases, client, options, held)
            stats = await run_source(
                controller,
                _read(client, options, held),
                convert=partial(_convert, events),
                settle=partial(_settle, client, options, held=held),
                stop=stop,
                stop_signals=stop_signals,
                messaging_system="redis",  # no value in the semantic conventions: the broker's
                task_status=task_status,
            )
            leases.cancel_scope.cancel()
        return stats


async def _renew_leases(client: Redis, options: Options, held: _Held) -> None:
    """Every third of min_idle, reset the idle time of the entries in flight here."""
    while True:
        await anyio.sleep(options.min_idle / 3000)
        renewals: list[tuple[str, list[StreamIdT]]] = [
            (stream, list(ids)) for stream, ids in held.ids.items() if ids
        ]
        for stream, ids in renewals:
            # JUSTID: the delivery count stays as it is. An id settled meanwhile is no longer
            # pending (XCLAIM ignores it) or was left pending on purpose (claimable a bit later).
            await client.xclaim(stream, options.group, options.consumer, 0, ids, justid=True)


async def _read(client: Redis, options: Options, held: _Held) -> AsyncIterator[Entry]:
    """New entries for this consumer, and every ``min_idle / 2`` the idle ones it claims."""
    await anyio.lowlevel.checkpoint()  # run_source's signal handlers go in before "ready"
    announce_ready(log, f"{','.join(options.streams)} as {options.consumer} in {options.group}")
    reclaim_at = anyio.current_time()  # at once: the entries a dead predecessor left
    while True:
        if anyio.current_time() >= reclaim_at:
            reclaim_at = anyio.current_time() + options.min_idle / 2000
            for stream in options.streams:
                cursor = "0-0"
                while True:
                    cursor, claimed = await _reclaim(client, options, stream, cursor)
                    for entry in claimed:
                        if held.take(entry):  # not when its invocations still run here
                            yield entry
                    if cursor == "0-0":
                        break
        block = max(1, round((reclaim_at - anyio.current_time()) * 1000))
        streams: dict[KeyT, StreamIdT] = dict.fromkeys(options.streams, ">")
        reply = await client.xreadgroup(
            options.group, options.consumer, streams, count=options.batch, block=block
        )
        for name, entries in cast("list[tuple[bytes, Entries]]", reply or []):
            for entry_id, fields in entries:
                entry = Entry(name.decode(), entry_id.decode(), fields, deliveries=1)
                held.take(entry)
                yield entry


async def _reclaim(
    client: Redis, options: Options, stream: str, cursor: str
) -> tuple[str, list[Entry]]:
    """One XAUTOCLAIM page of idle entries; those past max_deliveries go to the dead letters."""
    reply = await client.xautoclaim(
        stream, options.group, options.consumer, options.min_idle, cursor, count=options.batch
    )
    next_cursor, claimed = cast("tuple[bytes, Entries]", reply[:2])
    async with client.pipeline(transaction=False) as pipe:
        for entry_id, _ in claimed:
            pipe.xpending_range(stream, options.group, min=entry_id, max=entry_id, count=1)
        pending = await pipe.execute()
    entries = []
    for (entry_id, fields), info in zip(claimed, pending, strict=True):
        entry = Entry(stream, entry_id.decode(), fields, info[0]["times_delivered"] if info else 1)
        if entry.deliveries <= options.max_deliveries:
            entries.append(entry)
        else:  # e.g. it crashed every connector that took it
            await _dead_letter(client, options, entry, "no connector finished it")
    return next_cursor.decode(), entries


def _convert(events: CloudEvents, entry: Entry) -> SourceMessage:
    """``topic`` (or the stream's name) is the topic, ``body`` the body; a CloudEvent
    (``ce_*`` fields, or structured) is forwarded as ``events`` says."""
    body = entry.fields.get(b"body")
    if body is None:
        raise ValueError(f"entry {entry.stream}/{entry.id} has no 'body' field")
    topic = entry.fields.get(b"topic")
    message = SourceMessage(
        topic=entry.stream if topic is None else topic.decode(),
        body=body,
        message_id=f"{entry.stream}/{entry.id}",
        trace_context=trace_context(entry.fields),  # fields "traceparent", "tracestate"
    )
    if events.mode is CloudEventsMode.OFF:
        return message
    content_type = entry.fields.get(_CONTENT_TYPE)
    return forward(
        message,
        events,
        source=wrap_source("redis", entry.stream),
        attributes=prefixed_attributes(entry.fields, b"ce_"),
        content_type=None if content_type is None else content_type.decode(),
        time=_added_at(entry.id) if events.wraps else None,
    )


def _added_at(entry_id: str) -> datetime:
    """When the entry was added: its id is ``<milliseconds since the epoch>-<sequence>``."""
    return datetime.fromtimestamp(int(entry_id.partition("-")[0]) / 1000, timezone.utc)


async def _settle(
    client: Redis,
    options: Options,
    entry: Entry,
    verdict: Settlement,
    results: Sequence[InvocationResult],
    *,
    held: _Held,
) -> None:
    """XACK a success; leave a failure pending (claimed again after --min-idle: the outcome's
    delay does not apply); dead-letter or drop the rest."""
    held.release(entry)  # settled or left to be claimed again once idle: no longer renewed
    policy = _policy(options)
    outcome = outcome_of(verdict, results, policy=policy, deliveries=entry.deliveries)
    if outcome.kind is OutcomeKind.ACK:
        await client.xack(entry.stream, options.group, entry.id)
        return
    what = f"{entry.stream}/{entry.id}"
    if outcome.kind is OutcomeKind.RETRY:
        log.debug("%s failed, left pending: %s", what, outcome.reason)
    elif outcome.kind is OutcomeKind.DROP:
        log_outcome(log, outcome, what)
        await client.xack(entry.stream, options.group, entry.id)
    elif outcome.reason is not None:
        await _dead_letter(client, options, entry, outcome.reason)


@functools.lru_cache(maxsize=16)
def _policy(options: Options) -> OutcomePolicy:
    """--max-deliveries and --unroutable; redelivery is XAUTOCLAIM's, after --min-idle."""
    return OutcomePolicy(
        max_deliveries=options.max_deliveries,
        retry_delay=options.min_idle / 1000,
        backoff=1,
        max_retry_delay=options.min_idle / 1000,
        unroutable=unroutable(options.unroutable),
    )


async def _dead_letter(
    client: Redis, options: Options, entry: Entry, reason: OutcomeReason | str
) -> None:
    """Copy the entry to ``<stream>:dead`` with the reason's ``dead_*`` fields and XACK it,
    atomically. A str reason is why an entry was ``abandoned`` (delivered too many times
    without being settled)."""
    if isinstance(reason, str):
        reason = OutcomeReason(cause="abandoned", detail=reason, deliveries=entry.deliveries)
    log.warning(
        "dead-lettering %s/%s (delivery %d): %s",
        entry.stream,
        entry.id,
        entry.deliveries,
        reason.summary,
    )
    dead: dict[FieldT, EncodableT] = dict(entry.fields.items())
    for name, value in reason.fields().items():  # as bytes: they replace an entry's own
        dead[name.encode()] = value
    dead[b"dead_from"] = f"{entry.stream}/{entry.id}"
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(f"{entry.stream}:dead", dead)
        pipe.xack(entry.stream, options.group, entry.id)
        await pipe.execute()


def _errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.RedisError,)


CONNECTOR: Connector[Options] = Connector(
    name="redis",
    summary="Redis Streams: a consumer group; the entry's topic field (or stream) is the topic",
    description=__doc__ or "",
    options=Options,
    env_prefix="redis_",
    client="redis",
    modules=("redis.asyncio",),
    run=run,
    errors=_errors,
)
"""The Redis Streams connector, for ``aioconnector connect redis``."""
