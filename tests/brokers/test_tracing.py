"""Each packaged connector continues the publisher's trace: a message published to the real
broker with a ``traceparent`` in the broker's own headers yields one trace, from a CONSUMER
``process {topic}`` span through the invocation's CLIENT span to the request at the gateway."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from aioconnector import AsyncController, ControllerConfig, RetryPolicy
from aioconnector.connectors import CONNECTORS
from aioconnector.testing import FakeGateway

from .conftest import require_module, require_service

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"

# A broker case: (connector options, publish one message, its topic: "orders" but where the
# broker's topic is the topic), set up and torn down around the test.
Case = Callable[[str], Any]
Setup = AsyncIterator[tuple[object, Callable[[], Awaitable[None]], str]]


@asynccontextmanager
async def nats_case(tag: str) -> Setup:
    require_module("nats")
    import nats

    from aioconnector.connectors import nats as connector

    url = f"nats://127.0.0.1:{require_service('nats')}"
    client = await nats.connect(url)
    js = client.jetstream()
    stream, prefix = f"TR_{tag}", f"tr.{tag}."
    await js.add_stream(name=stream, subjects=[f"{prefix}>"])
    options = connector.Options(
        url=url, stream=stream, subjects=(f"{prefix}>",), strip_prefix=prefix, durable="tr"
    )

    async def publish() -> None:
        await js.publish(prefix + "orders", b"{}", headers={"traceparent": TRACEPARENT})

    try:
        yield options, publish, "orders"
    finally:
        await js.delete_stream(stream)
        await client.close()


@asynccontextmanager
async def redis_case(tag: str) -> Setup:
    require_module("redis")
    from redis.asyncio import Redis

    from aioconnector.connectors import redis as connector

    url = f"redis://127.0.0.1:{require_service('redis')}/0"
    stream = f"tr-{tag}"
    options = connector.Options(url=url, streams=(stream,), group="tr")
    async with Redis.from_url(url) as client:

        async def publish() -> None:
            fields = {"topic": "orders", "body": "{}", "traceparent": TRACEPARENT}
            await client.xadd(stream, fields)  # type: ignore[arg-type]

        try:
            yield options, publish, "orders"
        finally:
            await client.delete(stream, f"{stream}:dead")


@asynccontextmanager
async def rabbitmq_case(tag: str) -> Setup:
    require_module("aio_pika")
    import aio_pika

    from aioconnector.connectors import rabbitmq as connector

    url = f"amqp://guest:guest@127.0.0.1:{require_service('rabbitmq')}/"
    name = f"tr-{tag}"
    options = connector.Options(url=url, exchange=name, queue=name, bindings=("#",))

    async def publish() -> None:
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(name)
            message = aio_pika.Message(b"{}", headers={"traceparent": TRACEPARENT})
            await exchange.publish(message, routing_key="orders")

    try:
        yield options, publish, "orders"
    finally:
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.exchange_delete(name)


@asynccontextmanager
async def mqtt_case(tag: str) -> Setup:
    require_module("aiomqtt")
    import aiomqtt

    from aioconnector.connectors import mqtt as connector

    port = require_service("mqtt")
    # MQTT 3.1.1 has no user properties: a structured CloudEvent payload carries the context
    # here. The MQTT topic is the topic: one of this test's own, so no other run sees it.
    topic = f"tr/{tag}/orders"
    options = connector.Options(port=port, topics=(topic,), client_id="")
    event = {"specversion": "1.0", "type": "t", "source": "s", "id": "1"}

    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            payload = json.dumps({**event, "traceparent": TRACEPARENT})
            await client.publish(topic, payload, qos=1)

    yield options, publish, topic


@asynccontextmanager
async def mqtt5_case(tag: str) -> Setup:
    require_module("aiomqtt")
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from aioconnector.connectors import mqtt as connector

    port = require_service("mqtt")
    # MQTT 5: the context is a user property, the payload no CloudEvent.
    topic = f"tr/{tag}/orders"
    options = connector.Options(port=port, topics=(topic,), client_id="", protocol="5")

    async def publish() -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [("traceparent", TRACEPARENT)]
        v5 = aiomqtt.ProtocolVersion.V5
        async with aiomqtt.Client("127.0.0.1", port, protocol=v5) as client:
            await client.publish(topic, b"{}", qos=1, properties=properties)

    yield options, publish, topic


@asynccontextmanager
async def postgres_case(tag: str) -> Setup:
    require_module("asyncpg")
    import asyncpg  # type: ignore[import-untyped]

    from aioconnector.connectors import postgres as connector

    dsn = f"postgresql://postgres@127.0.0.1:{require_service('postgres')}/test"
    channel = f"tr_{tag}"
    options = connector.Options(dsn=dsn, channels=(channel,))

    async def publish() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            envelope = {"topic": "orders", "body": {}, "traceparent": TRACEPARENT}
            await connection.execute("SELECT pg_notify($1, $2)", channel, json.dumps(envelope))
        finally:
            await connection.close()

    yield options, publish, "orders"


CASES = {
    "nats": nats_case,
    "redis": redis_case,
    "rabbitmq": rabbitmq_case,
    "mqtt": mqtt_case,
    "mqtt5": mqtt5_case,
    "postgres": postgres_case,
}
CONNECTOR_OF = {"mqtt5": "mqtt"}  # the cases that are not named after their connector
SYSTEM_OF = {"postgres": "postgresql", "mqtt5": "mqtt"}  # messaging.system, where not the name


@pytest.mark.parametrize("broker", sorted(CASES))
async def test_a_published_traceparent_yields_one_trace_to_the_gateway(broker: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gateway = FakeGateway()
    connector = CONNECTORS[CONNECTOR_OF.get(broker, broker)]
    case = CASES[broker](uuid.uuid4().hex[:10])
    async with gateway.serve() as url, case as (options, publish, topic):
        gateway.add_function("orders", topics=[topic])
        config = ControllerConfig(
            gateway_url=url, startup_timeout=5.0, retry=RetryPolicy.disabled()
        )
        stop = anyio.Event()

        async def consume(*, task_status: Any) -> None:
            async with AsyncController(config, tracing=provider) as controller:
                await connector.run(controller, options, stop=stop, task_status=task_status)

        async with anyio.create_task_group() as tg:
            await tg.start(consume)
            await publish()
            with anyio.fail_after(20):
                while not [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]:
                    await anyio.sleep(0.02)
            stop.set()
    (consumer,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    (request,) = gateway.invocations()
    assert consumer.name == f"process {topic}"
    assert consumer.parent is not None
    assert (f"{consumer.parent.trace_id:032x}", f"{consumer.parent.span_id:016x}") == (
        TRACE,
        PARENT,
    )
    attributes = dict(consumer.attributes or {})
    assert attributes["messaging.system"] == SYSTEM_OF.get(broker, broker)
    assert attributes["aioconnector.settlement"] == "ack"
    assert client.parent is not None
    assert consumer.context is not None
    assert client.parent.span_id == consumer.context.span_id
    assert client.context is not None
    _, trace_id, span_id, _ = request.headers["traceparent"].split("-")
    assert (trace_id, span_id) == (TRACE, f"{client.context.span_id:016x}")
