"""CloudEvents through the packaged connectors, against the real local brokers and a FakeGateway.

Each broker gets four messages, on four topics with a function each: a CloudEvent in its binary
mode (the broker's own headers), one in structured mode, a plain message, and a structured one
that is not JSON. With ``--cloudevents keep`` (the default) the binary one reaches its function
in HTTP binary mode and the rest as they came; with ``wrap`` the structured one is converted to
binary mode, the plain one wrapped, and the broken one settled INVALID (not invoked).
"""

from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest

from aioconnector import AsyncController, Settlement, SourceStats
from aioconnector.testing import FakeGateway, RecordedRequest

from ._process import broker_config, wait_until
from .conftest import require_module, require_service

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import TaskStatus

STRUCTURED_JSON = "application/cloudevents+json"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SUBJECT = "Euro \u20ac \U0001f600"  # the HTTP binding's percent-encoding example
EVENT = {  # the binary-mode event's attributes, as strings (datacontenttype apart)
    "specversion": "1.0",
    "id": "evt-1",
    "source": "/orders",
    "type": "com.example.order.created",
    "subject": SUBJECT,
    "traceparent": TRACEPARENT,
}
DATA = b'{"order": 1}'
# What its function gets: every attribute a ce- header, percent-encoded; the data the body.
EVENT_OVER_HTTP = {
    **{f"ce-{name}": value for name, value in EVENT.items()},
    "ce-subject": "Euro%20%E2%82%AC%20%F0%9F%98%80",
    "content-type": "application/json",
}
STRUCTURED = json.dumps(
    {
        "specversion": "1.0",
        "id": "evt-2",
        "source": "/greetings",
        "type": "com.example.greeting",
        "datacontenttype": "text/plain; charset=utf-8",
        "data": "hello \u20ac",
    }
).encode()
STRUCTURED_OVER_HTTP = {
    "ce-specversion": "1.0",
    "ce-id": "evt-2",
    "ce-source": "/greetings",
    "ce-type": "com.example.greeting",
    "content-type": "text/plain; charset=utf-8",
}
BROKEN = b"{not json"
WRAPPED_TYPE = "com.example.wrapped"
FUNCTIONS = ("binary", "structured", "plain", "broken")


def add_functions(gateway: FakeGateway, topic: Callable[[str], str]) -> None:
    """A function per kind of message, subscribed to the broker's topic for it."""
    for name in FUNCTIONS:
        gateway.add_function(name, topics=[topic(name)])


@attrs.define
class Consuming:
    """A connector running in-process: its controller, and its stats once it returned."""

    controller: AsyncController
    stats: SourceStats | None = None

    def settled(self) -> int:
        """How many messages it has settled so far, whichever way."""
        return sum(self.controller.stats().settled.values())


@asynccontextmanager
async def consuming(
    run: Callable[..., Awaitable[SourceStats]], gateway: FakeGateway, options: object
) -> AsyncIterator[Consuming]:
    """The connector's ``run`` during the block, ready (consuming) before the block runs;
    stopped after it, with what it took settled or left to the broker."""
    stop = anyio.Event()
    controller = AsyncController(broker_config(gateway.url))
    consumer = Consuming(controller)

    async def target(*, task_status: TaskStatus[None]) -> None:
        async with controller:
            consumer.stats = await run(controller, options, stop=stop, task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(target)
        try:
            yield consumer
        finally:
            stop.set()


def only(gateway: FakeGateway, function: str) -> RecordedRequest:
    [request] = gateway.invocations(function)
    return request


def ce(request: RecordedRequest) -> dict[str, str]:
    """What a function got of CloudEvents: its ce-* headers and Content-Type."""
    return {
        name: value
        for name, value in request.headers.items()
        if name.startswith("ce-") or name == "content-type"
    }


def assert_kept(gateway: FakeGateway) -> None:
    """``--cloudevents keep``: binary mode as HTTP binary mode, the rest as they came."""
    binary = only(gateway, "binary")
    assert (binary.body, ce(binary)) == (DATA, EVENT_OVER_HTTP)
    structured = only(gateway, "structured")
    assert (structured.body, ce(structured)) == (STRUCTURED, {"content-type": STRUCTURED_JSON})
    plain = only(gateway, "plain")
    assert (plain.body, ce(plain)) == (b"plain", {})
    broken = only(gateway, "broken")  # passed through: keep does not parse it
    assert (broken.body, ce(broken)) == (BROKEN, {"content-type": STRUCTURED_JSON})


def assert_wrapped(
    gateway: FakeGateway, stats: SourceStats | None, *, source: str, subject: str, timed: bool
) -> None:
    """``--cloudevents wrap``: everything in HTTP binary mode; the broken one INVALID."""
    binary = only(gateway, "binary")
    assert (binary.body, ce(binary)) == (DATA, EVENT_OVER_HTTP)
    structured = only(gateway, "structured")
    assert (structured.body, ce(structured)) == ("hello \u20ac".encode(), STRUCTURED_OVER_HTTP)
    plain = only(gateway, "plain")
    wrapped = ce(plain)
    time = wrapped.pop("ce-time", None)
    assert (plain.body, wrapped) == (
        b"plain",
        {
            "ce-specversion": "1.0",
            "ce-id": plain.headers["x-message-id"],
            "ce-source": source,
            "ce-type": WRAPPED_TYPE,
            "ce-subject": subject,
        },
    )
    assert (time is not None) is timed
    if time is not None:  # the broker's timestamp, RFC 3339 in UTC
        when = datetime.fromisoformat(time.replace("Z", "+00:00"))
        assert abs(datetime.now(timezone.utc) - when) < timedelta(hours=1)
    assert gateway.invocations("broken") == []
    assert stats is not None
    assert stats.settled[Settlement.INVALID] == 1
    assert stats.settled[Settlement.ACK] == 3


# -- NATS JetStream: ce-* headers; structured mode undeclared, as the NATS binding has it ------


@pytest.fixture
async def nats_stream() -> AsyncIterator[tuple[Any, str]]:
    """A fresh stream ``CE_<tag>`` on ``ce.<tag>.>``, and a client to publish with."""
    require_module("nats")
    import nats

    client = await nats.connect(f"nats://127.0.0.1:{require_service('nats')}")
    tag = uuid.uuid4().hex[:12]
    js = client.jetstream()
    try:
        await js.add_stream(name=f"CE_{tag}", subjects=[f"ce.{tag}.>"])
        yield client, tag
    finally:
        with anyio.CancelScope(shield=True):
            await js.delete_stream(f"CE_{tag}")
            await client.close()


async def publish_nats(client: Any, prefix: str) -> None:
    js = client.jetstream()
    headers = {f"ce-{name}": value for name, value in EVENT.items()}
    headers["ce-subject"] = "Euro%20%E2%82%AC%20%F0%9F%98%80"  # an HTTP-style sender's encoding
    await js.publish(
        f"{prefix}binary", DATA, headers={**headers, "Content-Type": "application/json"}
    )
    await js.publish(f"{prefix}structured", STRUCTURED)  # no headers: recognised
    await js.publish(f"{prefix}plain", b"plain", headers={"Nats-Msg-Id": "plain-1"})
    await js.publish(f"{prefix}broken", BROKEN, headers={"Content-Type": STRUCTURED_JSON})


@pytest.mark.parametrize("mode", ["keep", "wrap"])
async def test_nats(nats_stream: tuple[Any, str], gateway: FakeGateway, mode: str) -> None:
    from aioconnector.connectors import nats

    client, tag = nats_stream
    prefix = f"ce.{tag}."
    add_functions(gateway, lambda name: name)
    options = nats.Options(
        url=f"nats://127.0.0.1:{require_service('nats')}",
        stream=f"CE_{tag}",
        subjects=(f"{prefix}>",),
        strip_prefix=prefix,
        cloudevents=mode,
        cloudevents_type=WRAPPED_TYPE,
    )
    await publish_nats(client, prefix)
    async with consuming(nats.run, gateway, options) as run:
        await wait_until(lambda: run.settled() == len(FUNCTIONS))
    if mode == "keep":
        assert_kept(gateway)
    else:
        source = f"aioconnector/nats/CE_{tag}"
        assert_wrapped(gateway, run.stats, source=source, subject="plain", timed=True)
        assert only(gateway, "plain").headers["x-message-id"] == "plain-1"


# -- RabbitMQ: cloudEvents_ application headers, as the cloudevents SDK's AMQP binding sends ----


@pytest.fixture
async def amqp_url() -> AsyncIterator[tuple[str, str]]:
    """The local RabbitMQ's URL and a fresh exchange/queue name, deleted afterwards."""
    require_module("aio_pika")
    import aio_pika

    url = f"amqp://guest:guest@127.0.0.1:{require_service('rabbitmq')}/"
    name = f"ce-{uuid.uuid4().hex[:12]}"
    yield url, name
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        for queue in (name, f"{name}.dead"):
            await channel.queue_delete(queue)
        for exchange in (name, f"{name}.dlx"):
            await channel.exchange_delete(exchange)


async def publish_amqp(url: str, exchange_name: str, sdk_event: Any) -> None:
    import aio_pika
    from cloudevents.core.bindings import amqp

    sent = amqp.to_binary_event(sdk_event)  # cloudEvents_* properties, time as ms
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(exchange_name)
        messages = {
            "binary": aio_pika.Message(
                sent.application_data,
                headers=sent.application_properties,
                content_type=sent.properties["content-type"],
            ),
            "structured": aio_pika.Message(STRUCTURED, content_type=STRUCTURED_JSON),
            "plain": aio_pika.Message(
                b"plain", message_id="plain-1", timestamp=datetime.now(timezone.utc)
            ),
            "broken": aio_pika.Message(BROKEN, content_type=STRUCTURED_JSON),
        }
        for key, message in messages.items():
            await exchange.publish(message, key)


@pytest.mark.parametrize("mode", ["keep", "wrap"])
async def test_rabbitmq(amqp_url: tuple[str, str], gateway: FakeGateway, mode: str) -> None:
    """The binary-mode event is the cloudevents SDK's, read back by its HTTP binding."""
    pytest.importorskip("cloudevents", reason="the oracle: pip install cloudevents")
    from cloudevents.core.bindings import http
    from cloudevents.core.v1.event import CloudEvent

    from aioconnector.connectors import rabbitmq

    url, name = amqp_url
    add_functions(gateway, lambda function: function)
    attributes: dict[str, object] = {**EVENT, "datacontenttype": "application/json"}
    attributes["time"] = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)  # ms: AMQP's
    event = CloudEvent(attributes, json.loads(DATA))
    options = rabbitmq.Options(
        url=url, exchange=name, queue=name, cloudevents=mode, cloudevents_type=WRAPPED_TYPE
    )
    async with consuming(rabbitmq.run, gateway, options) as run:
        await publish_amqp(url, name, event)
        await wait_until(lambda: run.settled() == len(FUNCTIONS))
    binary = only(gateway, "binary")
    received = http.from_binary_event(http.HTTPMessage(dict(binary.headers), binary.body))
    assert received.get_attributes() == event.get_attributes()
    assert received.get_data() == event.get_data()
    assert ce(binary)["ce-time"] == "2024-01-02T03:04:05.678000Z"
    if mode == "keep":
        for function in ("structured", "plain", "broken"):
            assert len(gateway.invocations(function)) == 1
        assert ce(only(gateway, "structured")) == {"content-type": STRUCTURED_JSON}
        assert ce(only(gateway, "plain")) == {}
        return
    structured = only(gateway, "structured")
    assert (structured.body, ce(structured)) == ("hello \u20ac".encode(), STRUCTURED_OVER_HTTP)
    plain = only(gateway, "plain")
    assert plain.headers["ce-id"] == "plain-1"
    assert plain.headers["ce-source"] == f"aioconnector/rabbitmq/{name}"
    assert plain.headers["ce-subject"] == "plain"
    assert plain.headers["ce-type"] == WRAPPED_TYPE
    assert plain.headers["ce-time"].endswith("Z")  # the message's timestamp property
    assert gateway.invocations("broken") == []
    assert run.stats is not None
    assert run.stats.settled[Settlement.INVALID] == 1


# -- MQTT 5: user properties named as the attributes, the Content Type property --------------


async def publish_mqtt(port: int, prefix: str) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def properties(content_type: str | None, user: dict[str, str]) -> Properties:
        made = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if content_type is not None:
            made.ContentType = content_type
        if user:
            made.UserProperty = list(user.items())
        return made

    sent = {  # MQTT user properties are UTF-8: no percent-encoding
        "binary": (DATA, properties("application/json", EVENT)),
        "structured": (STRUCTURED, properties(STRUCTURED_JSON, {})),
        "plain": (b"plain", properties(None, {"unrelated": "x"})),
        "broken": (BROKEN, properties(STRUCTURED_JSON, {})),
    }
    version = aiomqtt.ProtocolVersion.V5
    async with aiomqtt.Client("127.0.0.1", port, protocol=version) as client:
        for name, (payload, props) in sent.items():
            await client.publish(f"{prefix}/{name}", payload, qos=1, properties=props)


@pytest.mark.parametrize("mode", ["keep", "wrap"])
async def test_mqtt5(gateway: FakeGateway, mode: str) -> None:
    require_module("aiomqtt")
    port = require_service("mqtt")
    from aioconnector.connectors import mqtt

    prefix = f"ce/{uuid.uuid4().hex[:12]}"
    add_functions(gateway, lambda name: f"{prefix}/{name}")
    options = mqtt.Options(
        port=port,
        topics=(f"{prefix}/#",),
        protocol="5",
        cloudevents=mode,
        cloudevents_type=WRAPPED_TYPE,
    )
    async with consuming(mqtt.run, gateway, options) as run:
        await publish_mqtt(port, prefix)
        await wait_until(lambda: run.settled() == len(FUNCTIONS))
    if mode == "keep":
        assert_kept(gateway)
    else:
        assert_wrapped(
            gateway,
            run.stats,
            source=f"aioconnector/mqtt/127.0.0.1:{port}",
            subject=f"{prefix}/plain",
            timed=False,  # MQTT has no timestamp
        )


# -- Redis Streams: ce_* fields and a content-type field (the Kafka binding's names) ---------


@pytest.fixture
async def redis_stream() -> AsyncIterator[tuple[Any, str]]:
    """A Redis client and a fresh stream name, deleted afterwards."""
    require_module("redis")
    from redis.asyncio import Redis

    url = f"redis://127.0.0.1:{require_service('redis')}/0"
    async with Redis.from_url(url) as client:
        stream = f"test:ce:{uuid.uuid4().hex[:12]}"
        try:
            yield client, stream
        finally:
            with anyio.CancelScope(shield=True):
                await client.delete(stream, f"{stream}:dead")


@pytest.mark.parametrize("mode", ["keep", "wrap"])
async def test_redis(redis_stream: tuple[Any, str], gateway: FakeGateway, mode: str) -> None:
    from aioconnector.connectors import redis

    client, stream = redis_stream
    add_functions(gateway, lambda name: name)
    binary = {f"ce_{name}": value for name, value in EVENT.items()}  # UTF-8, not %-encoded
    entries: list[dict[str, Any]] = [
        {"topic": "binary", "body": DATA, "content-type": "application/json", **binary},
        {"topic": "structured", "body": STRUCTURED},  # no content-type field: recognised
        {"topic": "plain", "body": b"plain"},
        {"topic": "broken", "body": BROKEN, "content-type": STRUCTURED_JSON},
    ]
    for fields in entries:
        await client.xadd(stream, fields)
    options = redis.Options(
        url=f"redis://127.0.0.1:{require_service('redis')}/0",
        streams=(stream,),
        group="ce",
        cloudevents=mode,
        cloudevents_type=WRAPPED_TYPE,
    )
    async with consuming(redis.run, gateway, options) as run:
        await wait_until(lambda: run.settled() == len(FUNCTIONS))
    if mode == "keep":
        assert_kept(gateway)
    else:
        source = f"aioconnector/redis/{stream}"
        assert_wrapped(gateway, run.stats, source=source, subject="plain", timed=True)


# -- PostgreSQL NOTIFY: no headers, so structured mode only (the payload or the envelope's body)


@pytest.mark.parametrize("mode", ["keep", "wrap"])
async def test_postgres(gateway: FakeGateway, mode: str) -> None:
    require_module("asyncpg")
    import asyncpg  # type: ignore[import-untyped]

    from aioconnector.connectors import postgres

    dsn = f"postgresql://postgres@127.0.0.1:{require_service('postgres')}/test"
    channel = f"ce_{uuid.uuid4().hex[:12]}"
    gateway.add_function("raw", topics=[channel])  # a payload without "topic": the channel's
    gateway.add_function("enveloped", topics=["enveloped"])
    gateway.add_function("plain", topics=["plain"])
    notifications = [
        STRUCTURED.decode(),
        json.dumps({"topic": "enveloped", "body": json.loads(STRUCTURED), "id": "n-1"}),
        json.dumps({"topic": "plain", "body": "plain", "id": "n-2"}),
    ]
    options = postgres.Options(
        dsn=dsn, channels=(channel,), cloudevents=mode, cloudevents_type=WRAPPED_TYPE
    )
    async with consuming(postgres.run, gateway, options) as run:
        connection = await asyncpg.connect(dsn)
        try:
            for payload in notifications:
                await connection.execute("SELECT pg_notify($1, $2)", channel, payload)
        finally:
            await connection.close()
        await wait_until(lambda: run.settled() == len(notifications))
    raw, enveloped, plain = (only(gateway, f) for f in ("raw", "enveloped", "plain"))
    if mode == "keep":
        assert (raw.body, ce(raw)) == (STRUCTURED, {"content-type": STRUCTURED_JSON})
        assert json.loads(enveloped.body) == json.loads(STRUCTURED)
        assert ce(enveloped) == {"content-type": STRUCTURED_JSON}  # not the envelope's JSON
        assert (plain.body, ce(plain)) == (b"plain", {})
        return
    for converted in (raw, enveloped):
        assert (converted.body, ce(converted)) == ("hello \u20ac".encode(), STRUCTURED_OVER_HTTP)
    assert (plain.body, ce(plain)) == (
        b"plain",
        {
            "ce-specversion": "1.0",
            "ce-id": "n-2",
            "ce-source": f"aioconnector/postgres/{channel}",
            "ce-type": WRAPPED_TYPE,
            "ce-subject": "plain",
        },
    )
