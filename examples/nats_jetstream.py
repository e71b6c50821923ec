"""NATS JetStream to OpenFaaS: a durable pull consumer whose subjects are the topics.

Each message invokes every function whose ``topic`` annotation names its subject (with
--strip-prefix removed: ``events.orders`` -> ``orders``), with the message as the body and
``X-Message-Id`` set to its ``Nats-Msg-Id`` header, or else its stream sequence number.

Delivery is at least once, in no particular order (up to max_concurrency messages at once):

- every matched function answered 2xx: ack;
- an invocation failed: nak with a delay (--nak-delay, doubled at each delivery), so JetStream
  redelivers it, until the consumer's max_deliver: then term (and log);
- no function subscribes, or the message cannot be invoked: term and log at once
  (--nak-unroutable: nak those too, until max_deliver);
- a connector that dies leaves its messages unacked: JetStream redelivers them after ack_wait.

The stream and the durable consumer are created when missing (an existing one keeps its
settings). Several connectors with the same --durable share the work. SIGTERM or SIGINT: fetch
no more, finish the invocations in flight (up to drain_timeout), ack what finished, leave the
rest to redelivery, exit 0. The gateway settings come from the OpenFaaS environment variables
(gateway_url, upstream_timeout, max_concurrency, drain_timeout, retry_attempts, basic_auth...):

    gateway_url=http://127.0.0.1:8080 python examples/nats_jetstream.py \\
        --stream EVENTS --subjects 'events.>' --strip-prefix events.

Keep ack_wait above the longest invocation (upstream_timeout, retries included).
"""

from __future__ import annotations

import logging
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

import _connector_cli as cli
import anyio
import anyio.lowlevel
import attrs
import nats
import nats.errors
from _connector_cli import option
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from aioconnector import AsyncController, ControllerConfig, Settlement, SourceMessage, run_source

if TYPE_CHECKING:
    import signal
    from collections.abc import AsyncIterator, Sequence

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from aioconnector import InvocationResult, SourceStats

log = logging.getLogger("nats_jetstream")
FETCH_TIMEOUT = 1.0  # seconds a fetch waits for messages; also how soon a stop is noticed
MAX_NAK_DELAY = 60.0


@attrs.frozen(kw_only=True)
class Options:
    """What to consume and how to settle it; each field is also a flag (env ``nats_<field>``)."""

    url: str = option("nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
    stream: str = option("EVENTS", "JetStream stream (created if missing)")
    subjects: tuple[str, ...] = option(("events.>",), "subjects to consume, comma-separated")
    durable: str = option("aioconnector", "durable consumer name (created if missing)")
    batch: int = option(16, "messages per fetch")
    strip_prefix: str = option("", "removed from a subject to give its topic, e.g. 'events.'")
    ack_wait: float = option(30.0, "seconds before an unacked message is redelivered")
    max_deliver: int = option(5, "deliveries before a failing message is terminated")
    nak_delay: float = option(1.0, "redelivery delay after a failure, doubled each time")
    nak_unroutable: bool = option(default=False, help="nak unmatched/invalid messages, not term")


async def run(
    config: ControllerConfig,
    options: Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
) -> SourceStats:
    """Consume until ``stop`` is set or one of ``stop_signals`` arrives; return the counts."""
    async with AsyncController(config) as controller:
        client = await nats.connect(
            options.url.split(","), name=config.connector_name, error_cb=log_nats_error
        )
        try:
            subscription, max_deliver = await subscribe(client.jetstream(), options)
            return await run_source(
                controller,
                fetch(subscription, options),
                convert=partial(convert, options.strip_prefix),
                settle=partial(settle, options, max_deliver),
                stop=stop,
                stop_signals=stop_signals,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()  # also sends the acks still buffered


async def log_nats_error(exc: Exception) -> None:
    """nats-py reports connection trouble here (and retries): one line, not a traceback."""
    log.warning("NATS: %s: %s", type(exc).__name__, exc)


async def subscribe(
    js: JetStreamContext, options: Options
) -> tuple[JetStreamContext.PullSubscription, int]:
    """Bind to the durable consumer, creating it (and the stream) if missing; its max_deliver."""
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
    return subscription, info.config.max_deliver or -1


async def fetch(
    subscription: JetStreamContext.PullSubscription, options: Options
) -> AsyncIterator[Msg]:
    """The consumer's messages, fetched ``options.batch`` at a time."""
    await anyio.lowlevel.checkpoint()  # run_source's signal handlers go in before "ready"
    cli.announce_ready(log, f"stream {options.stream} as durable consumer {options.durable}")
    while True:
        try:
            batch = deque(await subscription.fetch(options.batch, timeout=FETCH_TIMEOUT))
        except nats.errors.TimeoutError:
            continue  # nothing new
        try:
            while batch:
                yield batch.popleft()
        finally:
            for msg in batch:  # stopped mid-batch: hand them back now, not after ack_wait
                await msg.nak()


def message_id(msg: Msg) -> str:
    """The publisher's ``Nats-Msg-Id``, or else the stream sequence number."""
    return (msg.headers or {}).get("Nats-Msg-Id") or str(msg.metadata.sequence.stream)


def convert(strip_prefix: str, msg: Msg) -> SourceMessage:
    """The subject (without ``strip_prefix``) is the topic, the payload the body."""
    topic = msg.subject.removeprefix(strip_prefix) if strip_prefix else msg.subject
    return SourceMessage(topic=topic, body=msg.data, message_id=message_id(msg))


async def settle(
    options: Options,
    max_deliver: int,
    msg: Msg,
    verdict: Settlement,
    results: Sequence[InvocationResult],
) -> None:
    """Ack a success; nak a failure until the last delivery; terminate the rest."""
    if verdict is Settlement.ACK:
        await msg.ack()
        return
    delivered = msg.metadata.num_delivered
    last = 0 < max_deliver <= delivered
    if not last and (verdict is Settlement.RETRY or options.nak_unroutable):
        await msg.nak(delay=min(options.nak_delay * 2 ** (delivered - 1), MAX_NAK_DELAY))
        return
    log.warning(
        "terminating message %s on %s after %d deliveries: %s",
        message_id(msg),
        msg.subject,
        delivered,
        cli.describe(verdict, results),
    )
    await msg.term()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module's docstring."""
    args = cli.options_parser(Options, __doc__, env_prefix="nats_").parse_args(argv)
    options = cli.parse_options(Options, args)

    async def start() -> SourceStats:
        config = ControllerConfig.from_env()
        return await run(config, options, stop_signals=cli.SHUTDOWN_SIGNALS)

    return cli.run_connector(start, log_level=args.log_level, errors=(nats.errors.Error,))


if __name__ == "__main__":
    raise SystemExit(main())
