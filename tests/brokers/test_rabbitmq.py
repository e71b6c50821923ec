"""aioconnector.connectors.rabbitmq against the real RabbitMQ on 127.0.0.1:5672 and a FakeGateway.

The connector runs in-process (its ``run(controller, options)``, stopped with an event), or as
two ``aioconnector connect rabbitmq`` subprocesses configured by environment variables alone,
to show it scales out (and stops on SIGTERM). Every test
uses its own exchange and queues (uuid names) and deletes them afterwards.
"""

from __future__ import annotations

import uuid
from collections import Counter
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

require_module("aio_pika")  # the tests publish with it: without it, every test here skips

import aio_pika  # noqa: E402

from aioconnector.connectors import rabbitmq  # noqa: E402


@attrs.frozen
class Broker:
    url: str
    exchange: str
    queue: str

    @property
    def dead_queue(self) -> str:
        return f"{self.queue}.dead"


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    require_module("aio_pika")
    port = require_service("rabbitmq")
    name = f"test-{uuid.uuid4().hex[:12]}"
    found = Broker(url=f"amqp://guest:guest@127.0.0.1:{port}/", exchange=name, queue=name)
    yield found
    async with await aio_pika.connect(found.url) as connection:
        channel = await connection.channel()
        for queue in (found.queue, found.dead_queue):
            await channel.queue_delete(queue)
        for exchange in (found.exchange, f"{found.exchange}.dlx"):
            await channel.exchange_delete(exchange)


def config(gateway: FakeGateway, **overrides: Any) -> ControllerConfig:
    # The broker redelivers: the controller's own retries are off unless a test wants them.
    overrides.setdefault("retry", RetryPolicy.disabled())
    return ControllerConfig.from_env(
        {"gateway_url": gateway.url, "startup_timeout": "5s"}, **overrides
    )


@attrs.define
class Run:
    stop: anyio.Event
    stats: SourceStats | None = None


@asynccontextmanager
async def running(
    gateway: FakeGateway,
    broker: Broker,
    *,
    bindings: str = "#",
    max_redeliveries: int = 5,
    unroutable: str = "dead-letter",
    **settings: Any,
) -> AsyncIterator[Run]:
    """Run the connector until the block ends; its stats are set once it has returned."""
    run = Run(anyio.Event())
    options = rabbitmq.Options(
        url=broker.url,
        exchange=broker.exchange,
        queue=broker.queue,
        bindings=tuple(bindings.split(",")),
        max_redeliveries=max_redeliveries,
        unroutable=unroutable,
    )

    async def target(*, task_status: TaskStatus[None]) -> None:
        async with AsyncController(config(gateway, **settings)) as controller:
            run.stats = await rabbitmq.run(
                controller, options, stop=run.stop, task_status=task_status
            )

    async with anyio.create_task_group() as tg:
        await tg.start(target)
        try:
            yield run
        finally:
            run.stop.set()


async def publish(broker: Broker, messages: list[tuple[str, str]]) -> None:
    """Publish (routing key, body) pairs, the body doubling as message_id; all confirmed."""
    async with await aio_pika.connect(broker.url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(broker.exchange)
        # Concurrently: a quorum queue confirms each publish only once it is on disk.
        async with anyio.create_task_group() as tg:
            for key, body in messages:
                tg.start_soon(
                    exchange.publish, aio_pika.Message(body.encode(), message_id=body), key
                )


async def depth(broker: Broker, queue: str) -> int:
    """Ready messages in ``queue`` (unacked ones are not counted)."""
    async with await aio_pika.connect(broker.url) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count)


def ids(records: list[RecordedRequest]) -> list[str]:
    return [record.headers["x-message-id"] for record in records]


async def test_end_to_end(gateway: FakeGateway, broker: Broker) -> None:
    gateway.add_function("orders", topics=["orders.created"])
    gateway.add_function("payments", topics=["payments.settled"])
    sent = [("orders.created" if n % 2 else "payments.settled", f"message-{n}") for n in range(30)]
    async with running(gateway, broker, bindings="orders.#,payments.*") as run:
        await publish(broker, sent)
        await wait_until(lambda: len(gateway.invocations()) == 30)
    for function, topic in (("orders", "orders.created"), ("payments", "payments.settled")):
        records = gateway.invocations(function)
        expected = [body for key, body in sent if key == topic]
        assert sorted(r.body.decode() for r in records) == sorted(expected)
        assert sorted(ids(records)) == sorted(expected)  # message_id -> X-Message-Id
        assert {r.headers["x-topic"] for r in records} == {topic}
        assert {r.headers.get("x-delivery-count") for r in records} == {None}
    assert run.stats is not None
    assert run.stats.settled[Settlement.ACK] == 30
    assert run.stats.unsettled == 0
    assert await depth(broker, broker.queue) == 0
    assert await depth(broker, broker.dead_queue) == 0


async def test_failure_is_redelivered_until_acked(gateway: FakeGateway, broker: Broker) -> None:
    gateway.add_function("orders", topics=["orders.created"])
    gateway.set_fault("orders", status=500, times=2)
    async with running(gateway, broker) as run:
        await publish(broker, [("orders.created", "flaky")])
        await wait_until(lambda: len(gateway.invocations()) == 3)
    records = gateway.invocations("orders")
    assert ids(records) == ["flaky"] * 3
    assert [r.headers.get("x-delivery-count") for r in records] == [None, "1", "2"]
    assert run.stats is not None
    assert run.stats.settled[Settlement.RETRY] == 2
    assert run.stats.settled[Settlement.ACK] == 1
    assert await depth(broker, broker.queue) == 0
    assert await depth(broker, broker.dead_queue) == 0


async def test_poison_message_is_dead_lettered_after_redeliveries(
    gateway: FakeGateway, broker: Broker
) -> None:
    """The connector dead-letters it itself on its last delivery, with the reason in headers
    (the queue's own delivery limit, one further, is never reached)."""
    gateway.add_function("orders", topics=["orders.created"])
    gateway.set_fault("orders", status=500)  # every time
    async with running(gateway, broker, max_redeliveries=2) as run:
        await publish(broker, [("orders.created", "poison")])
        with anyio.fail_after(10):
            while await depth(broker, broker.dead_queue) == 0:
                await anyio.sleep(0.05)
    assert ids(gateway.invocations("orders")) == ["poison"] * 3  # 1 delivery + 2 redeliveries
    assert run.stats is not None
    assert run.stats.settled[Settlement.RETRY] == 3
    assert run.stats.outcomes[OutcomeKind.RETRY] == 2
    assert run.stats.outcomes[OutcomeKind.DEAD_LETTER] == 1
    async with await aio_pika.connect(broker.url) as connection:
        channel = await connection.channel()
        dead = await (await channel.get_queue(broker.dead_queue)).get(timeout=5)
        await dead.ack()
    assert dead.body == b"poison"
    assert dead.routing_key == "orders.created"
    assert dead.message_id == "poison"
    assert {k: v for k, v in dead.headers.items() if k.startswith("dead_")} == {
        "dead_cause": "failed",
        "dead_reason": "orders.openfaas-fn: HTTP 500",
        "dead_topic": "orders.created",
        "dead_message_id": "poison",
        "dead_deliveries": "3",
        "dead_function": "orders.openfaas-fn",
        "dead_status": "500",
        "dead_error": "UpstreamStatusError",
        "dead_attempts": "1",
        "dead_failed": "1",
    }
    assert "x-first-death-reason" not in dead.headers  # not the broker's dead-lettering
    assert await depth(broker, broker.queue) == 0


async def test_unmatched_and_invalid_are_dead_lettered_at_once(
    gateway: FakeGateway, broker: Broker
) -> None:
    gateway.add_function("orders", topics=["orders.created"])
    async with running(gateway, broker) as run:
        # No function has the first topic; the second cannot be a topic (control character).
        await publish(broker, [("nobody.listens", "unmatched"), ("bad\x01key", "invalid")])
        with anyio.fail_after(10):
            while await depth(broker, broker.dead_queue) < 2:
                await anyio.sleep(0.05)
    assert gateway.invocations() == []
    assert run.stats is not None
    assert run.stats.settled[Settlement.UNMATCHED] == 1
    assert run.stats.settled[Settlement.INVALID] == 1
    headers = {}
    async with await aio_pika.connect(broker.url) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(broker.dead_queue)
        for _ in range(2):
            dead = await queue.get(timeout=5)
            await dead.ack()
            headers[dead.body.decode()] = dead.headers
    assert headers["unmatched"]["dead_cause"] == "unmatched"
    assert headers["unmatched"]["dead_topic"] == "nobody.listens"
    assert headers["unmatched"]["dead_deliveries"] == "1"
    assert headers["invalid"]["dead_cause"] == "invalid"
    assert headers["invalid"]["dead_error"] == "ValueError"
    assert headers["invalid"]["dead_reason"] == (
        "invalid message: topic must not contain control characters (CR, LF, ...): 'bad\\x01key'"
    )


async def test_unroutable_drop_acks_without_a_dead_letter(
    gateway: FakeGateway, broker: Broker
) -> None:
    gateway.add_function("orders", topics=["orders.created"])
    async with running(gateway, broker, unroutable="drop") as run:
        await publish(broker, [("nobody.listens", "dropped"), ("orders.created", "after")])
        await wait_until(lambda: len(gateway.invocations()) == 1)
    assert run.stats is not None  # the stop settled what was in flight
    assert run.stats.outcomes[OutcomeKind.DROP] == 1
    assert await depth(broker, broker.queue) == 0
    assert await depth(broker, broker.dead_queue) == 0


@pytest.mark.parametrize(
    ("drain_timeout", "finish"),
    [pytest.param(10.0, True, id="drained"), pytest.param(0.05, False, id="cut-short")],
)
async def test_graceful_stop_loses_nothing(
    gateway: FakeGateway, broker: Broker, drain_timeout: float, finish: bool
) -> None:
    # The function answers only once released, after the stop: no invocation can finish before
    # it, however slow the machine (a timed one did, and was rightly acked, under load).
    release = anyio.Event()
    finished: set[str] = set()

    async def held(request: RecordedRequest) -> FakeResponse:
        await release.wait()
        finished.add(request.headers["x-message-id"])
        return FakeResponse(body=request.body)

    gateway.add_function("orders", topics=["orders.created"], handler=held)
    sent = [("orders.created", f"m{n}") for n in range(20)]
    async with running(gateway, broker, max_concurrency=4, drain_timeout=drain_timeout) as first:
        await publish(broker, sent)
        await wait_until(lambda: len(gateway.invocations()) >= 4)
        in_flight_at_stop = set(ids(gateway.invocations()))
        first.stop.set()
        if finish:
            release.set()  # within the drain: they finish and are acked
    finished_in_first_run = set(finished)
    release.set()  # cut short: only now, after the connector gave them up
    assert first.stats is not None
    first_run = set(ids(gateway.invocations()))
    acked = first.stats.settled[Settlement.ACK]
    with anyio.fail_after(10):  # every message not acked is back in the queue
        while await depth(broker, broker.queue) != len(sent) - acked:
            await anyio.sleep(0.05)
    gateway.add_function("orders", topics=["orders.created"])  # answers at once from now on
    gateway.requests.clear()
    async with running(gateway, broker):
        await wait_until(lambda: len(gateway.invocations()) == len(sent) - acked)
    second_run = set(ids(gateway.invocations()))
    assert len(second_run) == len(sent) - acked
    assert await depth(broker, broker.queue) == 0
    assert first_run | second_run == {body for _, body in sent}  # none lost
    acked_first = {body for _, body in sent} - second_run  # never seen again
    assert acked_first <= finished_in_first_run  # acked only after its invocation finished
    if finish:
        assert in_flight_at_stop <= acked_first  # in flight at the stop: finished and acked
        assert first.stats.unsettled == first.stats.received - len(acked_first)
    else:
        assert acked_first == set()
        assert first.stats.unsettled >= 4


async def test_no_message_is_lost_when_a_connector_is_killed(
    gateway: FakeGateway, broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    function = SlowFunction(latency=(0.02, 0.05))
    gateway.add_function("orders", topics=["orders.created"], handler=function)
    sent = [("orders.created", f"m{n}") for n in range(200)]
    queue = {
        "rabbitmq_url": broker.url,
        "rabbitmq_exchange": broker.exchange,
        "rabbitmq_queue": broker.queue,
    }

    env = connector_env(gateway.url, "first", max_concurrency="8", **queue)
    # Leaving the block waits for the publisher too (past the kill, if publishing is slow).
    async with (
        anyio.create_task_group() as publishing,
        connector_process("rabbitmq", [], env=env, log=tmp_path / "1.log") as first,
    ):
        await first.wait_ready()  # it declares the queue: published from now on, kept
        publishing.start_soon(publish, broker, sent)  # consumed while being published
        await wait_until(lambda: len(gateway.invocations()) >= 60, within=15)
        first.kill()
        assert await first.wait(timeout=5) < 0
    in_flight_at_kill = function.in_flight()
    env = connector_env(gateway.url, "second", max_concurrency="8", **queue)
    async with connector_process("rabbitmq", [], env=env, log=tmp_path / "2.log") as second:
        await wait_until(lambda: len(message_ids(gateway)) >= len(sent), within=20)
        second.terminate()  # drains: what it invoked is acked
        assert await second.wait(timeout=15) == 0, second.output()

    report = report_kill("RabbitMQ", [body for _, body in sent], gateway, capsys)
    assert not report.lost, sorted(report.lost)  # every one at least once
    assert set(message_ids(gateway)) == {body for _, body in sent}  # and nothing else
    assert 0 < report.by_first < report.published  # killed mid-stream
    assert in_flight_at_kill <= set(message_ids(gateway, "second"))  # requeued, redelivered
    assert await depth(broker, broker.queue) == 0  # none left behind


# Without asyncio's debug mode, whose bookkeeping would make the gateway here the bottleneck.
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_two_processes_share_the_queue(
    gateway: FakeGateway, broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.add_function("orders", topics=["orders.created"])
    count = 400
    sent = [("orders.created", f"m{n}") for n in range(count)]
    env = {
        "gateway_url": gateway.url,
        "max_concurrency": "8",
        "rabbitmq_url": broker.url,
        "rabbitmq_exchange": broker.exchange,
        "rabbitmq_queue": broker.queue,
    }
    async with (
        connector_process(
            "rabbitmq", [], env={**env, "connector_name": "one"}, log=tmp_path / "one.log"
        ) as one,
        connector_process(
            "rabbitmq", [], env={**env, "connector_name": "two"}, log=tmp_path / "two.log"
        ) as two,
    ):
        await one.wait_ready()
        await two.wait_ready()
        started = anyio.current_time()
        await publish(broker, sent)
        published = anyio.current_time() - started
        await wait_until(lambda: len(gateway.invocations()) >= count, within=30)
        elapsed = anyio.current_time() - started
        for process in (one, two):  # SIGTERM: a graceful stop, exit status 0
            process.terminate()
            assert await process.wait(timeout=15) == 0, process.output()
    records = gateway.invocations()
    consuming = records[-1].time - records[0].time
    with capsys.disabled():  # shown with -q too
        print(  # noqa: T201
            f"\n2 connector processes: {count} messages in {elapsed:.2f}s from the first publish "
            f"({count / elapsed:.0f} msg/s; publishing took {published:.2f}s), "
            f"{count / consuming:.0f} invocations/s from the first to the last"
        )
    assert sorted(ids(records)) == sorted(body for _, body in sent)  # each once: all acked
    shares = Counter(record.headers["x-connector"] for record in records)
    assert shares["one"] > 0
    assert shares["two"] > 0
    assert shares["one"] + shares["two"] == count
    assert await depth(broker, broker.queue) == 0
