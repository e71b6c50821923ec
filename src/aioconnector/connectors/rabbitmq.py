"""RabbitMQ to OpenFaaS: a quorum queue bound to a topic exchange; the routing key is the topic.

Declares (idempotently) the topic exchange --exchange and a durable *quorum* queue --queue bound
to it with each of --bindings (e.g. 'orders.#,payments.*'), a dead-letter exchange
'<exchange>.dlx' and a dead-letter queue '<queue>.dead' bound to it with '#'. Each message
goes to the OpenFaaS functions whose `topic` annotation names its routing key, with its
message_id property as X-Message-Id, its content type as Content-Type and the broker's
redelivery count as X-Delivery-Count.

Delivery guarantees: at least once. Acks are manual and sent only after every matched
function answered 2xx; at most max_concurrency messages (the channel's prefetch) are unacked
at once. Each message is settled by aioconnector's outcome policy (OutcomePolicy), its
delivery count being the quorum queue's x-delivery-count + 1:
  ACK          basic.ack.
  RETRY        basic.reject(requeue=True): the broker redelivers it at once and the quorum
               queue counts the delivery (x-delivery-count). The policy's delay does not
               apply: backoff happens within the controller's RetryPolicy, before the reject.
  DEAD_LETTER  on the (--max-redeliveries + 1)-th delivery of a failing message, or at once
               for one no function subscribes to or that cannot be invoked (--unroutable):
               published, with a publisher confirm, to the dead-letter exchange
               '<exchange>.dlx' under its routing key, with its properties, its headers and
               the reason in dead_* headers (dead_cause, dead_reason, dead_function,
               dead_status, dead_error, dead_attempts, dead_deliveries, dead_topic,
               dead_message_id), then acked. Should that publish fail, basic.reject(
               requeue=False) lets the queue dead-letter it itself (x-death, no dead_* headers).
  DROP         (--unroutable drop) basic.ack, logged.
The queue's own x-delivery-limit (--max-redeliveries) stays as the safety net: a message that
crashes the connector every time is dead-lettered by the broker (reason 'delivery_limit', in
x-first-death-reason). Its dead-lettering is at-least-once (x-dead-letter-strategy), which needs
x-overflow=reject-publish. A queue that already exists with other arguments makes the
declaration fail (PRECONDITION_FAILED): delete it or give another --queue. A message whose
functions run long keeps its lease: RabbitMQ does not redeliver an unacked message while its
channel is open; only the server's consumer_timeout (default 30 minutes) closes a channel that
held a delivery unacked longer, and its messages are then redelivered.

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

if TYPE_CHECKING:
    import signal
    from collections.abc import Sequence

    from aio_pika.abc import (
        AbstractChannel,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
    )
    from anyio.abc import TaskStatus

    from .._controller import AsyncController
    from .._outcome import OutcomeReason, Settlement
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
    unroutable: str = option(
        "dead-letter", "unmatched/invalid messages: dead-letter, drop or retry", choices=UNROUTABLE
    )
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
        # A dead letter no queue takes raises (PublishError) rather than vanishing.
        channel = await connection.channel(on_return_raises=True)
        await channel.set_qos(prefetch_count=prefetch)
        queue, dead = await _declare(channel, options)
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
                settle=_Settle(dead, _policy(options)),
                stop=stop,
                stop_signals=stop_signals,
                messaging_system="rabbitmq",
            )
            stop.set()
    return stats


async def _declare(
    channel: AbstractChannel, options: Options
) -> tuple[AbstractQueue, AbstractExchange]:
    """Declare the exchange, the queue, its bindings and its dead-letter pair; return the queue
    and the dead-letter exchange."""
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
    return queue, dead


def _policy(options: Options) -> OutcomePolicy:
    """Dead-letter on the last delivery the queue allows; redeliveries are immediate."""
    return OutcomePolicy(
        max_deliveries=options.max_redeliveries + 1,
        retry_delay=0,
        unroutable=unroutable(options.unroutable),
    )


def deliveries(message: AbstractIncomingMessage) -> int:
    """How many times the quorum queue delivered it, this time included."""
    count = (message.headers or {}).get("x-delivery-count")  # absent on the first delivery
    return count + 1 if isinstance(count, int) and not isinstance(count, bool) else 1


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


@attrs.frozen
class _Settle:
    """``settle`` for run_source: ack, requeue, dead-letter (publish, then ack) or drop."""

    dead: AbstractExchange
    policy: OutcomePolicy

    async def __call__(
        self,
        message: AbstractIncomingMessage,
        verdict: Settlement,
        results: Sequence[InvocationResult],
    ) -> None:
        count = deliveries(message)
        outcome = outcome_of(verdict, results, policy=self.policy, deliveries=count)
        if outcome.kind is OutcomeKind.ACK:
            await message.ack()
            return
        log_outcome(log, outcome, f"{message.message_id!r} ({message.routing_key!r})")
        if outcome.kind is OutcomeKind.RETRY:
            await message.reject(requeue=True)
        elif outcome.kind is OutcomeKind.DROP:
            await message.ack()
        elif outcome.reason is not None:
            await self._dead_letter(message, outcome.reason)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: OutcomeReason) -> None:
        """Publish it to the dead-letter exchange (confirmed), then ack it."""
        from aio_pika import DeliveryMode, Message
        from aio_pika.exceptions import AMQPError

        headers = {**(message.headers or {}), **reason.fields()}
        headers.pop("x-delivery-count", None)  # the quorum queue's, for this queue
        # Not user_id (the broker refuses one that is not this connection's user) nor
        # expiration (a dead letter is kept).
        dead = Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        try:
            await self.dead.publish(dead, message.routing_key or "")
        except AMQPError as exc:  # unroutable or refused: the queue's own dead-lettering
            log.warning("could not publish the dead letter, rejected instead: %s", exc)
            await message.reject(requeue=False)
            return
        await message.ack()


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
