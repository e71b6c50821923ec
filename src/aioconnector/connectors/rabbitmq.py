"""RabbitMQ to OpenFaaS: a quorum queue bound to a topic exchange; the routing key is the topic.

Declares (idempotently) the topic exchange --exchange and a durable *quorum* queue --queue bound
to it with each of --bindings (e.g. 'orders.#,payments.*'), a dead-letter exchange
'<exchange>.dlx' and a dead-letter queue '<queue>.dead' bound to it with '#'. Each message
goes to the OpenFaaS functions whose `topic` annotation names its routing key, with its
message_id property as X-Message-Id, its content type as Content-Type and the broker's
redelivery count as X-Delivery-Count.

Delivery guarantees: at least once. Acks are manual and sent only after every matched
function answered 2xx; at most max_concurrency messages (the channel's prefetch) are unacked
at once. Then, by settlement:
  ACK        basic.ack.
  RETRY      basic.nack(requeue=True): the broker redelivers it. The quorum queue counts the
             deliveries (x-delivery-count) and after --max-redeliveries redeliveries it
             dead-letters the message itself (reason 'delivery_limit'), so a message that
             crashes the connector every time is dead-lettered too. Redelivery is immediate:
             backoff happens within the controller's RetryPolicy, before the nack.
  UNMATCHED  basic.reject(requeue=False): dead-lettered at once (no function has the topic);
  INVALID    the same (a routing key that cannot be a topic).
Dead-lettering is at-least-once (x-dead-letter-strategy), which needs x-overflow=reject-publish.
A queue that already exists with other arguments makes the declaration fail
(PRECONDITION_FAILED): delete it or give another --queue.

SIGTERM/SIGINT: stop consuming, let the messages in flight finish and ack them (within
drain_timeout), leave the rest unacked; closing the channel returns them to the queue (this
counts as a delivery). A lost connection ends the run with an error, the unacked messages are
redelivered: run it under a supervisor. Ordering: none across messages in flight (they run
concurrently), and redelivered messages come back out of order (max_concurrency=1: one at a
time). Without a message_id property the id is the delivery tag, unique only within one
channel: set message_id when publishing if functions deduplicate.

--cloudevents (default keep): a CloudEvent (``cloudEvents_*``/``cloudEvents:*`` application
headers, or content type application/cloudevents+json) goes to functions in HTTP binary mode,
or structured as it came; binary converts structured ones, wrap also wraps plain messages
(source aioconnector/rabbitmq/<exchange>, type --cloudevents-type). See docs/connectors.md,
CloudEvents.

Replicas with the same --queue are competing consumers: they share the work. Needs
``pip install 'aioconnector[rabbitmq]'``:

    gateway_url=http://127.0.0.1:8080 aioconnector connect rabbitmq \\
        --url amqp://guest:guest@127.0.0.1:5672/ --exchange events --queue openfaas \\
        --bindings 'orders.#,payments.*'
"""

from __future__ import annotations

import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING

import anyio
import attrs

from .._cloudevents import CloudEvents, CloudEventsMode, amqp_attributes, forward, wrap_source
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
    from collections.abc import Sequence

    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
    from anyio.abc import TaskStatus

    from .._controller import AsyncController
    from .._results import InvocationResult
    from .._source import SourceStats

__all__ = ["CONNECTOR", "Options", "run"]

log = logging.getLogger("aioconnector.connectors.rabbitmq")


@attrs.frozen(kw_only=True)
class Options:
    """What to consume; each field is also a flag (env ``rabbitmq_<field>``)."""

    url: str = option("amqp://guest:guest@127.0.0.1:5672/", "AMQP URL")
    exchange: str = option("openfaas", "topic exchange (declared)")
    queue: str = option("openfaas-connector", "quorum queue, shared by replicas (declared)")
    bindings: tuple[str, ...] = option(
        ("#",), "binding keys, comma-separated", also_env=("topics",)
    )
    max_redeliveries: int = option(5, "redeliveries of a failing message before dead-lettering")
    cloudevents: str = cloudevents_option()
    cloudevents_type: str = cloudevents_type_option("rabbitmq")


async def run(
    controller: AsyncController,
    options: Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> SourceStats:
    """Consume into ``controller`` until ``stop`` is set or one of ``stop_signals`` arrives.

    With ``tg.start(run, ...)``, ready once the queue is declared and consumed.
    """
    CONNECTOR.require()
    import aio_pika

    events = cloudevents_of(options)
    prefetch = controller.config.max_concurrency  # never more unacked than run_source holds
    stop = stop or anyio.Event()  # run_source sets it on a stop signal
    send, receive = anyio.create_memory_object_stream["AbstractIncomingMessage"](prefetch)

    async def deliver(message: AbstractIncomingMessage) -> None:
        # After the stop it stays unacked, and closing the channel returns it to the queue.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            send.send_nowait(message)

    async with await aio_pika.connect(options.url) as connection, send, receive:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await _declare(channel, options)
        tag = await queue.consume(deliver)

        async def stop_consuming() -> None:  # at the stop, not after the drain
            await stop.wait()
            send.close()
            await queue.cancel(tag)

        announce_ready(log, f"queue {options.queue} bound to {options.exchange}")
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_consuming)
            stats = await run_source(
                controller,
                receive,
                convert=partial(_convert, events, wrap_source("rabbitmq", options.exchange)),
                settle=_settle,
                stop=stop,
                stop_signals=stop_signals,
                messaging_system="rabbitmq",
            )
            stop.set()
    return stats


async def _declare(channel: AbstractChannel, options: Options) -> AbstractQueue:
    """Declare the exchange, the queue, its bindings and its dead-letter pair; return the queue."""
    source = await channel.declare_exchange(options.exchange, "topic", durable=True)
    dead = await channel.declare_exchange(f"{options.exchange}.dlx", "topic", durable=True)
    dead_queue = await channel.declare_queue(f"{options.queue}.dead", durable=True)
    await dead_queue.bind(dead, "#")
    queue = await channel.declare_queue(
        options.queue,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": options.max_redeliveries,  # then the broker dead-letters it
            "x-dead-letter-exchange": dead.name,
            "x-dead-letter-strategy": "at-least-once",  # which requires reject-publish
            "x-overflow": "reject-publish",
        },
    )
    for key in options.bindings:
        await queue.bind(source, key)
    return queue


def _convert(events: CloudEvents, source: str, message: AbstractIncomingMessage) -> SourceMessage:
    """The routing key is the topic; message_id (else the delivery tag) the message id; a
    CloudEvent (``cloudEvents_*`` headers, or structured) is forwarded as ``events`` says."""
    headers = {"Content-Type": message.content_type} if message.content_type else {}
    count = (message.headers or {}).get("x-delivery-count")  # absent on the first delivery
    if isinstance(count, int):
        headers["X-Delivery-Count"] = str(count)
    converted = SourceMessage(
        topic=message.routing_key or "",  # "" is not a topic: settled INVALID
        body=message.body,
        headers=headers,
        message_id=message.message_id or f"delivery-tag-{message.delivery_tag}",
        trace_context=trace_context(message.headers),
    )
    if events.mode is CloudEventsMode.OFF:
        return converted
    return forward(
        converted,
        events,
        source=source,
        attributes=amqp_attributes(message.headers),
        content_type=message.content_type,
        time=message.timestamp if events.wraps else None,
    )


async def _settle(
    message: AbstractIncomingMessage, verdict: Settlement, results: Sequence[InvocationResult]
) -> None:
    """Ack a success, requeue a failure, dead-letter the rest."""
    if verdict is Settlement.ACK:
        await message.ack()
        return
    why = describe(verdict, results)
    if verdict is Settlement.RETRY:
        log.warning("requeueing %s (%s): %s", message.message_id, message.routing_key, why)
        await message.nack(requeue=True)
    else:
        log.warning("dead-lettering %s (%s): %s", message.message_id, message.routing_key, why)
        await message.reject(requeue=False)


def _errors() -> tuple[type[BaseException], ...]:
    from aio_pika.exceptions import AMQPError

    return (AMQPError,)


CONNECTOR: Connector[Options] = Connector(
    name="rabbitmq",
    summary="RabbitMQ: a quorum queue bound to a topic exchange; the routing key is the topic",
    description=__doc__ or "",
    options=Options,
    env_prefix="rabbitmq_",
    client="aio-pika",
    modules=("aio_pika",),
    run=run,
    errors=_errors,
)
"""The RabbitMQ connector, for ``aioconnector connect rabbitmq``."""
