"""aioconnector.connectors.mqtt against the real Mosquitto on 127.0.0.1:1883 and a FakeGateway.

The connector runs in-process (its ``run(controller, options)``, stopped with an event), or as
an ``aioconnector connect mqtt`` subprocess. Every test publishes under its own topic prefix
(a uuid).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from anyio.abc import TaskStatus

from aioconnector import (
    AsyncController,
    ControllerConfig,
    OutcomeKind,
    RetryPolicy,
    Settlement,
    SourceStats,
)
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

from ._process import (
    SlowFunction,
    connector_env,
    connector_process,
    message_ids,
    report_kill,
    wait_until,
)
from .conftest import require_module, require_service

require_module("aiomqtt")  # the tests publish with it: without it, every test here skips

import aiomqtt  # noqa: E402

from aioconnector.connectors import mqtt  # noqa: E402


@pytest.fixture
def port() -> int:
    require_module("aiomqtt")
    return require_service("mqtt")


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:12]}"


@attrs.define
class Run:
    stop: anyio.Event
    stats: SourceStats | None = None


@asynccontextmanager
async def running(
    gateway: FakeGateway,
    port: int,
    topics: str,
    *,
    client_id: str = "",
    protocol: str = "3.1.1",
    dead_letter_topic: str = "",
    **settings: Any,
) -> AsyncIterator[Run]:
    """Run the connector until the block ends; its stats are set once it has returned."""
    run = Run(anyio.Event())
    options = mqtt.Options(
        port=port,
        topics=tuple(topics.split(",")),
        client_id=client_id,
        protocol=protocol,
        dead_letter_topic=dead_letter_topic,
    )
    config = ControllerConfig.from_env(
        {"gateway_url": gateway.url, "startup_timeout": "5s"},
        retry=RetryPolicy.disabled(),
        **settings,
    )

    async def target(*, task_status: TaskStatus[None]) -> None:
        async with AsyncController(config) as controller:
            run.stats = await mqtt.run(controller, options, stop=run.stop, task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(target)
        try:
            yield run
        finally:
            run.stop.set()


PROTOCOLS = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}


async def publish(port: int, messages: list[tuple[str, str]], protocol: str = "3.1.1") -> None:
    """Publish (topic, payload) pairs with QoS 1: each one returns once the broker has it."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=PROTOCOLS[protocol]) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def end_session(port: int, client_id: str, protocol: str) -> None:
    """Connect under ``client_id`` with a clean session: the broker forgets its session."""
    if protocol == "5":  # clean start, and a session expiry interval of 0 (the default)
        clean: dict[str, Any] = {"protocol": PROTOCOLS[protocol], "clean_start": True}
    else:
        clean = {"clean_session": True}
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, **clean):
        pass


def ids(records: list[RecordedRequest]) -> list[str]:
    return [record.headers["x-message-id"] for record in records]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_end_to_end_qos1(gateway: FakeGateway, port: int, prefix: str, protocol: str) -> None:
    temp, humidity = f"{prefix}/kitchen/temp", f"{prefix}/kitchen/humidity"
    gateway.add_function("temp", topics=[temp])
    gateway.add_function("humidity", topics=[humidity])
    sent = [(temp if n % 2 else humidity, f"reading-{n}") for n in range(30)]
    async with running(gateway, port, f"{prefix}/#", protocol=protocol) as run:
        await publish(port, sent, protocol)
        await wait_until(lambda: len(gateway.invocations()) == 30)
    for function, topic in (("temp", temp), ("humidity", humidity)):
        records = gateway.invocations(function)
        expected = [payload for where, payload in sent if where == topic]
        assert sorted(r.body.decode() for r in records) == sorted(expected)
        assert {r.headers["x-topic"] for r in records} == {topic}
        assert sorted(ids(records)) == sorted(mqtt.message_id(topic, p.encode()) for p in expected)
    assert len(set(ids(gateway.invocations()))) == 30
    assert run.stats is not None
    assert run.stats.settled[Settlement.ACK] == 30


async def test_unmatched_topics_invoke_nothing(
    gateway: FakeGateway, port: int, prefix: str
) -> None:
    gateway.add_function("temp", topics=[f"{prefix}/kitchen/temp"])
    async with running(gateway, port, f"{prefix}/#") as run:
        await publish(port, [(f"{prefix}/attic/temp", "a"), (f"{prefix}/kitchen", "b")])
        await publish(port, [(f"{prefix}/kitchen/temp", "last")])  # in order: after those
        await wait_until(lambda: len(gateway.invocations()) == 1)
    assert [r.body for r in gateway.invocations("temp")] == [b"last"]
    assert run.stats is not None
    assert run.stats.settled[Settlement.UNMATCHED] == 2
    assert run.stats.received == 3


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_persistent_session_redelivers_what_was_not_settled(
    gateway: FakeGateway, port: int, prefix: str, protocol: str
) -> None:
    """With 5, the session outlives the connection by its session expiry interval."""
    topic, client_id = f"{prefix}/orders", f"aioconnector-{uuid.uuid4().hex[:12]}"

    # The function answers only once released, after the first run: none of its invocations
    # can finish (and be acked) before the stop, however slow the machine.
    release = anyio.Event()

    async def held(request: RecordedRequest) -> FakeResponse:
        await release.wait()
        return FakeResponse(body=request.body)

    gateway.add_function("orders", topics=[topic], handler=held)
    sent = [(topic, f"order-{n}") for n in range(12)]
    try:
        # Stopped with 4 invocations in flight, cut short: nothing was settled, nor acked.
        async with running(
            gateway,
            port,
            topic,
            client_id=client_id,
            protocol=protocol,
            max_concurrency=4,
            drain_timeout=0.05,
        ) as first:
            await publish(port, sent, protocol)
            await wait_until(lambda: len(gateway.invocations()) >= 4)
        release.set()
        cut_short = set(ids(gateway.invocations()))
        gateway.add_function("orders", topics=[topic])  # fast from now on
        gateway.requests.clear()
        # Published while no connector runs: the broker keeps it for the session.
        await publish(port, [(topic, "while-down")], protocol)
        async with running(gateway, port, topic, client_id=client_id, protocol=protocol):
            await wait_until(lambda: len(gateway.invocations()) == len(sent) + 1)
        second = set(ids(gateway.invocations()))
    finally:
        await end_session(port, client_id, protocol)
    assert first.stats is not None
    assert first.stats.settled[Settlement.ACK] == 0
    assert first.stats.unsettled >= 4
    assert cut_short <= second  # invoked, not acked, so redelivered
    assert second == {mqtt.message_id(t, p.encode()) for t, p in [*sent, (topic, "while-down")]}


async def test_connect_command_consumes_and_stops_on_sigterm(
    gateway: FakeGateway, port: int, prefix: str, tmp_path: Path
) -> None:
    """``aioconnector connect mqtt`` configured as in a Deployment: the OpenFaaS variable
    ``topics``, the broker's own ``mqtt_port``, and a flag that wins over its variable."""
    topic = f"{prefix}/orders"
    gateway.add_function("orders", topics=[topic])
    env = connector_env(
        gateway.url,
        "cli",
        mqtt_port=str(port),
        topics=f"{prefix}/ignored/#",  # the flag below wins
        mqtt_client_id=f"aioconnector-{uuid.uuid4().hex[:12]}",
    )
    args = ["--topics", f"{prefix}/#", "--no-auth-invocations"]
    sent = [(topic, f"order-{n}") for n in range(10)]
    try:
        async with connector_process("mqtt", args, env=env, log=tmp_path / "mqtt.log") as process:
            await process.wait_ready()
            await publish(port, sent)
            await wait_until(lambda: len(gateway.invocations()) == len(sent))
            process.terminate()
            assert await process.wait(timeout=15) == 0, process.output()
    finally:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=env["mqtt_client_id"], clean_session=True
        ):
            pass  # ends the broker's session for that id
    assert sorted(r.body.decode() for r in gateway.invocations("orders")) == sorted(
        payload for _, payload in sent
    )
    assert {r.headers["x-connector"] for r in gateway.invocations()} == {"cli"}
    assert "stopped: received 10 (ack 10," in process.output()


async def test_no_message_is_lost_when_a_connector_is_killed(
    gateway: FakeGateway, port: int, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --client-id (a persistent session, acks after settling): at least once. Without
    it, messages are acked on receipt and what the killed one held is lost: not tested."""
    topic, client_id = f"{prefix}/orders", f"aioconnector-{uuid.uuid4().hex[:12]}"
    function = SlowFunction(latency=(0.02, 0.05))
    gateway.add_function("orders", topics=[topic], handler=function)
    sent = [(topic, f"order-{n}") for n in range(200)]
    published = {mqtt.message_id(t, p.encode()) for t, p in sent}
    args = ["--topics", topic, "--client-id", client_id]

    try:
        env = connector_env(gateway.url, "first", max_concurrency="8", mqtt_port=str(port))
        # Leaving the block waits for the publisher too (past the kill, if publishing is slow).
        async with (
            anyio.create_task_group() as publishing,
            connector_process("mqtt", args, env=env, log=tmp_path / "1.log") as first,
        ):
            await first.wait_ready()  # subscribed: the session keeps what is published from now
            publishing.start_soon(publish, port, sent)  # consumed while being published
            await wait_until(lambda: len(gateway.invocations()) >= 60, within=15)
            first.kill()
            assert await first.wait(timeout=5) < 0
        in_flight_at_kill = function.in_flight()
        env = connector_env(gateway.url, "second", max_concurrency="8", mqtt_port=str(port))
        async with connector_process("mqtt", args, env=env, log=tmp_path / "2.log") as second:
            await wait_until(lambda: len(message_ids(gateway)) >= len(sent), within=20)
            second.terminate()  # drains: what it invoked is acked
            assert await second.wait(timeout=15) == 0, second.output()
    finally:
        await end_session(port, client_id, "3.1.1")

    report = report_kill("MQTT (--client-id)", published, gateway, capsys)
    assert not report.lost, sorted(report.lost)  # every one at least once
    assert set(message_ids(gateway)) == published  # and nothing else
    assert 0 < report.by_first < report.published  # killed mid-stream
    assert in_flight_at_kill <= set(message_ids(gateway, "second"))  # resent to the session


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_dead_letters_go_to_the_dead_letter_topic(
    gateway: FakeGateway, port: int, prefix: str, protocol: str
) -> None:
    """No redelivery in MQTT: a failure, an unmatched and an invalid message (a non-ASCII
    topic) are dead-lettered at once; under MQTT 5 with their reason as user properties."""
    failing, nobody, invalid = f"{prefix}/orders", f"{prefix}/nobody", f"{prefix}/caf\u00e9"
    gateway.add_function("orders", topics=[failing])
    gateway.set_fault("orders", status=500)
    dead_topic = f"{prefix}-dead"
    letters: list[aiomqtt.Message] = []

    async def collect(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            letters.append(message)  # noqa: PERF401  (as each comes: the test polls it)

    async with (
        aiomqtt.Client("127.0.0.1", port, protocol=PROTOCOLS[protocol]) as watcher,
        anyio.create_task_group() as tg,
    ):
        await watcher.subscribe(dead_topic, qos=1)
        tg.start_soon(collect, watcher)
        async with running(
            gateway, port, f"{prefix}/#", protocol=protocol, dead_letter_topic=dead_topic
        ) as run:
            await publish(port, [(failing, "boom"), (nobody, "nobody"), (invalid, "bad")], protocol)
            await wait_until(lambda: len(letters) == 3)
        tg.cancel_scope.cancel()

    assert sorted(letter.payload for letter in letters) == [b"bad", b"boom", b"nobody"]
    assert {letter.topic.value for letter in letters} == {dead_topic}
    assert len(gateway.invocations()) == 1  # once: never redelivered
    assert run.stats is not None
    assert run.stats.outcomes[OutcomeKind.DEAD_LETTER] == 3
    if protocol == "3.1.1":  # no headers to carry the reason
        assert all(letter.properties is None for letter in letters)
        return
    reasons = {
        letter.payload: dict(letter.properties.UserProperty)  # type: ignore[union-attr]
        for letter in letters
    }
    assert reasons[b"boom"] == {
        "dead_cause": "failed",
        "dead_reason": "orders.openfaas-fn: HTTP 500",
        "dead_topic": failing,
        "dead_message_id": mqtt.message_id(failing, b"boom"),
        "dead_function": "orders.openfaas-fn",
        "dead_status": "500",
        "dead_error": "UpstreamStatusError",
        "dead_attempts": "1",
        "dead_failed": "1",
    }
    assert reasons[b"nobody"]["dead_cause"] == "unmatched"
    assert reasons[b"bad"]["dead_cause"] == "invalid"
    assert reasons[b"bad"]["dead_reason"].startswith("invalid message: topic must be ASCII")


async def test_a_dead_letter_topic_the_connector_consumes_is_refused(
    gateway: FakeGateway, port: int, prefix: str
) -> None:
    options = mqtt.Options(port=port, topics=(f"{prefix}/#",), dead_letter_topic=f"{prefix}/dead")
    config = ControllerConfig.from_env({"gateway_url": gateway.url, "startup_timeout": "5s"})
    async with AsyncController(config) as controller:
        with pytest.raises(ValueError, match="would come back to this connector"):
            await mqtt.run(controller, options)
