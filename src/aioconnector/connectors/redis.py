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
- after --max-deliveries deliveries (XPENDING's count), or at once when no function subscribes
  or the entry is invalid: copied to the dead-letter stream ``<stream>:dead`` (with
  ``dead_reason``, ``dead_from`` and ``dead_deliveries`` fields) and XACKed, in one MULTI;
- a connector that dies leaves its entries pending: the others claim them after --min-idle.

The group is created when missing, from the start of the stream. Several connectors in the same
--group (each with its own --consumer; the default, ``<hostname>-<pid>``, differs per pod)
share the work. SIGTERM or SIGINT: read no more, finish the invocations in flight (up to
drain_timeout), XACK what finished, leave the rest pending, exit 0. Keep --min-idle above the
longest invocation (upstream_timeout, retries included), or an entry still being worked on is
claimed again. Needs Redis >= 7 and ``pip install 'aioconnector[redis]'``:

    gateway_url=http://127.0.0.1:8080 aioconnector connect redis --streams orders,payments
"""

from __future__ import annotations

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
from .._source import Settlement, SourceMessage, run_source
from ._base import (
    Connector,
    announce_ready,
    cloudevents_of,
    cloudevents_option,
    cloudevents_type_option,
    describe,
    trace_context,
)
from ._settings import option

if TYPE_CHECKING:
    import signal
    from collections.abc import AsyncIterator, Mapping, Sequence

    from anyio.abc import TaskStatus
    from redis.asyncio import Redis
    from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

    from .._controller import AsyncController
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
    min_idle: int = option(60_000, "ms after which another consumer's pending entry is claimed")
    max_deliveries: int = option(5, "deliveries before a failing entry is dead-lettered")
    cloudevents: str = cloudevents_option()
    cloudevents_type: str = cloudevents_type_option("redis")


@attrs.frozen
class Entry:
    """A stream entry as read, with how many times it was delivered (this time included)."""

    stream: str
    id: str
    fields: Mapping[bytes, bytes]
    deliveries: int


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
        return await run_source(
            controller,
            _read(client, options),
            convert=partial(_convert, events),
            settle=partial(_settle, client, options),
            stop=stop,
            stop_signals=stop_signals,
            messaging_system="redis",  # no value in the semantic conventions: the broker's name
            task_status=task_status,
        )


async def _read(client: Redis, options: Options) -> AsyncIterator[Entry]:
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
                yield Entry(name.decode(), entry_id.decode(), fields, deliveries=1)


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
) -> None:
    """XACK a success; leave a failure pending until its last delivery; dead-letter the rest."""
    if verdict is Settlement.ACK:
        await client.xack(entry.stream, options.group, entry.id)
    elif verdict is Settlement.RETRY and entry.deliveries < options.max_deliveries:
        log.debug("%s/%s failed, left pending: %s", entry.stream, entry.id, results)
    else:
        await _dead_letter(client, options, entry, describe(verdict, results))


async def _dead_letter(client: Redis, options: Options, entry: Entry, reason: str) -> None:
    """Copy the entry to ``<stream>:dead`` and XACK it, atomically."""
    log.warning(
        "dead-lettering %s/%s after %d deliveries: %s",
        entry.stream,
        entry.id,
        entry.deliveries,
        reason,
    )
    dead: dict[FieldT, EncodableT] = dict(entry.fields.items())
    dead |= {
        b"dead_reason": reason,
        b"dead_from": f"{entry.stream}/{entry.id}",
        b"dead_deliveries": entry.deliveries,
    }
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
