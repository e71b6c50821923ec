"""aioconnector.connectors.redis against a real Redis, with a FakeGateway on a real socket.

Each test uses its own keys ``test:<tag>:*`` (deleted afterwards). The in-process tests await
the connector's ``run(controller, options)``; the others run ``aioconnector connect redis`` as
a subprocess, kill it or SIGTERM it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

import anyio
import attrs
import pytest

from aioconnector import ControllerConfig, OutcomeKind, Settlement, SourceStats
from aioconnector.connectors import redis as connector
from aioconnector.testing import FakeGateway

from ._process import (
    SlowFunction,
    broker_config,
    connector_env,
    connector_process,
    message_ids,
    report_kill,
    running_in_process,
    wait_until,
)
from .conftest import require_module, require_service

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from redis.asyncio import Redis

BROKER = "redis"


@pytest.fixture
def redis_url() -> str:
    """The local Redis; skips when the server or redis-py is missing."""
    require_module("redis")
    return f"redis://127.0.0.1:{require_service('redis')}/0"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq)


@attrs.define
class Broker:
    """Streams ``test:<tag>:<name>`` read by the consumer group ``connectors``."""

    client: Redis
    url: str
    tag: str
    group: str = "connectors"
    added: dict[str, list[str]] = attrs.Factory(dict)  # stream -> entry ids, in order

    def stream(self, name: str = "events") -> str:
        return f"test:{self.tag}:{name}"

    def options(self, *names: str, **changes: Any) -> connector.Options:

        changes.setdefault("consumer", "in-process")
        streams = tuple(self.stream(name) for name in names or ("events",))
        return connector.Options(url=self.url, streams=streams, group=self.group, **changes)

    def args(self, *extra: str) -> list[str]:
        """``--streams <events> --group connectors`` and ``extra``, as command-line flags."""
        return ["--url", self.url, "--streams", self.stream(), "--group", self.group, *extra]

    async def add(
        self, body: bytes | None, *, topic: str | None = None, name: str = "events"
    ) -> str:
        """Append an entry; return its message id as the connector will send it."""
        fields = {"body": body, "topic": topic}
        stream = self.stream(name)
        entry_id = _text(
            await self.client.xadd(stream, {k: v for k, v in fields.items() if v is not None})
        )
        self.added.setdefault(stream, []).append(entry_id)
        return f"{stream}/{entry_id}"

    async def settled(self) -> bool:
        """Whether every stream's group has read everything and has nothing pending."""
        for stream in self.added:
            groups = [
                g
                for g in await self.client.xinfo_groups(stream)
                if g["name"] == self.group.encode()
            ]
            if not groups or groups[0]["pending"] or groups[0]["lag"] != 0:
                return False
        return True

    async def pending(self, name: str = "events") -> set[str]:
        """The message ids pending (delivered, not acknowledged) in the group."""
        stream = self.stream(name)
        entries = await self.client.xpending_range(stream, self.group, "-", "+", 10_000)
        return {f"{stream}/{_text(e['message_id'])}" for e in entries}

    async def delivered(self, name: str = "events") -> set[str]:
        """The message ids the group has handed out so far."""
        stream = self.stream(name)
        groups = await self.client.xinfo_groups(stream)
        group = next(g for g in groups if g["name"] == self.group.encode())
        last = _entry_key(_text(group["last-delivered-id"]))
        return {f"{stream}/{i}" for i in self.added.get(stream, []) if _entry_key(i) <= last}

    async def dead_letters(self, name: str = "events") -> list[dict[bytes, bytes]]:
        """The fields of the entries in ``<stream>:dead``."""
        entries = await self.client.xrange(f"{self.stream(name)}:dead")
        return [fields for _, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", entries)]


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[Broker]:
    from redis.asyncio import Redis

    async with Redis.from_url(redis_url) as client:
        broker = Broker(client, redis_url, uuid.uuid4().hex[:12])
        try:
            yield broker
        finally:
            with anyio.CancelScope(shield=True):
                keys = [key async for key in client.scan_iter(match=f"test:{broker.tag}:*")]
                if keys:
                    await client.delete(*keys)


def config(url: str) -> ControllerConfig:
    return broker_config(url)


def running(
    config: ControllerConfig, options: connector.Options
) -> AbstractAsyncContextManager[list[SourceStats]]:
    return running_in_process(connector.run, config, options)


# -- in-process ------------------------------------------------------------------------------


async def test_every_entry_invokes_its_functions_and_is_acked(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    gateway.add_function("payments", topics=["payments"])
    gateway.add_function("audit", topics=[broker.stream("audit")])  # a stream's name as topic
    expected = {}
    for n in range(40):
        topic = ("orders", "payments")[n % 2]
        body = b"%s %d" % (topic.encode(), n)
        expected[await broker.add(body, topic=topic)] = (f"{topic}.openfaas-fn", topic, body)
    for n in range(10):  # no topic field: the stream's name is the topic
        body = b"audit %d" % n
        message_id = await broker.add(body, name="audit")
        expected[message_id] = ("audit.openfaas-fn", broker.stream("audit"), body)
    unmatched = await broker.add(b"nobody listens", topic="nobody")
    invalid = await broker.add(None, topic="orders")  # no body field
    options = broker.options("events", "audit")

    async with gateway.serve() as url, running(config(url), options) as stats:
        await wait_until(lambda: len(gateway.invocations()) >= 50, within=15)
        await wait_until(broker.settled, within=10)

    invocations = gateway.invocations()
    assert len(invocations) == 50
    seen = {
        r.headers["x-message-id"]: (r.function, r.headers["x-topic"], r.body) for r in invocations
    }
    assert seen == expected
    dead = {d[b"dead_from"].decode(): d for d in await broker.dead_letters()}
    assert set(dead) == {unmatched, invalid}
    assert dead[unmatched][b"body"] == b"nobody listens"
    assert dead[unmatched][b"dead_reason"] == b"no function subscribes to its topic"
    assert dead[unmatched][b"dead_cause"] == b"unmatched"
    assert dead[unmatched][b"dead_topic"] == b"nobody"
    assert dead[unmatched][b"dead_deliveries"] == b"1"
    # An invalid entry's dead letter carries the error run_source caught.
    entry_id = invalid.rpartition("/")[2]
    assert dead[invalid][b"dead_cause"] == b"invalid"
    assert dead[invalid][b"dead_error"] == b"ValueError"
    assert dead[invalid][b"dead_reason"] == (
        f"invalid message: entry {broker.stream()}/{entry_id} has no 'body' field".encode()
    )
    assert stats[0].settled[Settlement.ACK] == 50
    assert stats[0].settled[Settlement.UNMATCHED] == 1
    assert stats[0].settled[Settlement.INVALID] == 1
    assert stats[0].unsettled == 0


async def test_a_failed_entry_is_claimed_again_until_it_succeeds(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    gateway.set_fault("orders", status=500, times=2)
    message_id = await broker.add(b"try again", topic="orders")
    options = broker.options(min_idle=200)

    async with gateway.serve() as url, running(config(url), options) as stats:
        await wait_until(lambda: len(gateway.invocations()) >= 3, within=10)
        await wait_until(broker.settled, within=10)

    assert message_ids(gateway) == {message_id: 3}
    assert stats[0].settled[Settlement.RETRY] == 2
    assert stats[0].settled[Settlement.ACK] == 1
    assert await broker.dead_letters() == []


async def test_an_invocation_slower_than_min_idle_keeps_its_entry(broker: Broker) -> None:
    # The claim is renewed while the function runs: the entry is neither claimed again here
    # (a second invocation) nor counted as delivered again.
    gateway = FakeGateway()
    function = SlowFunction(latency=(1.5, 1.5))
    gateway.add_function("orders", topics=["orders"], handler=function)
    message_id = await broker.add(b"slow", topic="orders")
    options = broker.options(min_idle=300)

    async with gateway.serve() as url, running(config(url), options) as stats:
        await wait_until(lambda: bool(function.finished()), within=10)
        await wait_until(broker.settled, within=10)
        await anyio.sleep(0.5)  # past min_idle again: nothing is left to claim

    assert [call.message_id for call in function.calls] == [message_id]
    assert stats[0].settled[Settlement.ACK] == 1
    assert stats[0].received == 1


async def test_entries_past_max_deliveries_go_to_the_dead_letter_stream(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("poison", topics=["poison"])
    gateway.set_fault("poison", status=500)  # always
    gateway.add_function("orders", topics=["orders"])
    # An entry that, say, crashed three connectors: delivered three times, never settled.
    stream = broker.stream()
    await broker.client.xgroup_create(stream, broker.group, id="0", mkstream=True)
    crashed = await broker.add(b"crashes everyone", topic="orders")
    await broker.client.xreadgroup(broker.group, "ghost", {stream: ">"}, count=1)
    entry_id = crashed.rpartition("/")[2]
    for _ in range(2):
        await broker.client.xclaim(stream, broker.group, "ghost", 0, [entry_id])
    poison = await broker.add(b"boom", topic="poison")
    good = await broker.add(b"fine", topic="orders")
    # min_idle above the longest invocation and settle on a loaded machine: a pending entry
    # still being worked on is otherwise claimed again (see the example's docstring).
    options = broker.options(min_idle=600, max_deliveries=3)

    async with gateway.serve() as url, running(config(url), options) as stats:
        await wait_until(lambda: len(gateway.invocations()) >= 4, within=15)
        await wait_until(broker.settled, within=10)

    assert message_ids(gateway) == {poison: 3, good: 1}  # the crashed entry was not invoked
    dead = {d[b"dead_from"].decode(): d for d in await broker.dead_letters()}
    assert set(dead) == {crashed, poison}
    assert dead[poison][b"body"] == b"boom"
    assert dead[poison][b"topic"] == b"poison"
    reason = {k: v for k, v in dead[poison].items() if k.startswith(b"dead_")}
    assert reason == {
        b"dead_cause": b"failed",
        b"dead_reason": b"poison.openfaas-fn: HTTP 500",
        b"dead_topic": b"poison",
        b"dead_message_id": poison.encode(),
        b"dead_deliveries": b"3",
        b"dead_function": b"poison.openfaas-fn",
        b"dead_status": b"500",
        b"dead_error": b"UpstreamStatusError",
        b"dead_attempts": b"1",
        b"dead_failed": b"1",
        b"dead_from": poison.encode(),
    }
    assert dead[crashed][b"dead_deliveries"] == b"4"
    assert dead[crashed][b"dead_cause"] == b"abandoned"
    assert dead[crashed][b"dead_reason"] == b"no connector finished it"
    assert stats[0].settled[Settlement.RETRY] == 3
    assert stats[0].settled[Settlement.ACK] == 1
    assert stats[0].outcomes[OutcomeKind.RETRY] == 2
    assert stats[0].outcomes[OutcomeKind.DEAD_LETTER] == 1  # the crashed one is not settled


async def test_unroutable_drop_acks_without_a_dead_letter(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    await broker.add(b"nobody listens", topic="nobody")
    await broker.add(None, topic="orders")  # invalid: no body field
    options = broker.options(unroutable="drop")

    async with gateway.serve() as url, running(config(url), options) as stats:
        await wait_until(broker.settled, within=10)

    assert await broker.dead_letters() == []
    assert stats[0].outcomes[OutcomeKind.DROP] == 2
    assert gateway.invocations() == []


# -- subprocesses ----------------------------------------------------------------------------


async def test_no_entry_is_lost_when_a_connector_is_killed(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = FakeGateway()
    function = SlowFunction(latency=(0.02, 0.05))
    gateway.add_function("orders", topics=["orders"], handler=function)
    ids = {await broker.add(b"%d" % n, topic="orders") for n in range(200)}
    args = broker.args("--min-idle", "1000", "--batch", "8")

    async with gateway.serve() as url:
        env = connector_env(url, "first", max_concurrency="8", redis_consumer="first")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "1.log") as first:
            await wait_until(lambda: len(gateway.invocations()) >= 60, within=15)
            first.kill()
            assert await first.wait(timeout=5) < 0
        in_flight_at_kill = function.in_flight()
        env = connector_env(url, "second", max_concurrency="8", redis_consumer="second")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "2.log") as second:
            await wait_until(lambda: set(message_ids(gateway)) >= ids, within=20)
            await wait_until(broker.settled, within=10)
            second.terminate()
            assert await second.wait(timeout=5) == 0, second.output()

    report = report_kill("Redis Streams", ids, gateway, capsys)
    assert not report.lost, sorted(report.lost)  # every one at least once
    assert set(message_ids(gateway)) == ids  # and nothing else
    assert 0 < report.by_first < report.published  # killed mid-stream
    assert in_flight_at_kill <= set(message_ids(gateway, "second"))  # claimed again


# Without asyncio's debug mode, whose bookkeeping would make the gateway here the bottleneck.
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_two_connectors_share_a_consumer_group(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"], handler=SlowFunction(latency=(0.005, 0.005)))
    args = broker.args("--batch", "16")
    count = 600

    async with gateway.serve() as url:
        env_left = connector_env(url, "left", max_concurrency="16", redis_consumer="left")
        env_right = connector_env(url, "right", max_concurrency="16", redis_consumer="right")
        async with (
            connector_process(BROKER, args, env=env_left, log=tmp_path / "l.log") as left,
            connector_process(BROKER, args, env=env_right, log=tmp_path / "r.log") as right,
        ):
            await left.wait_ready()
            await right.wait_ready()
            stream = broker.stream()
            async with broker.client.pipeline(transaction=False) as pipe:
                for n in range(count):
                    pipe.xadd(stream, {"topic": "orders", "body": b"%d" % n})
                added = [entry_id.decode() for entry_id in await pipe.execute()]
            broker.added[stream] = added
            await wait_until(lambda: len(message_ids(gateway)) >= count, within=20)
            await wait_until(broker.settled, within=10)
            left.terminate()
            right.terminate()
            assert await left.wait(timeout=5) == 0, left.output()
            assert await right.wait(timeout=5) == 0, right.output()

    invocations = gateway.invocations()
    assert message_ids(gateway) == {f"{stream}/{i}": 1 for i in added}  # each exactly once
    shares = Counter(r.headers["x-connector"] for r in invocations)
    assert shares["left"] > 0
    assert shares["right"] > 0
    seconds = invocations[-1].time - invocations[0].time
    with capsys.disabled():  # shown with -q too
        print(  # noqa: T201
            f"\nRedis Streams, two connectors: {count} entries in {seconds:.2f} s"
            f" = {count / seconds:.0f} msg/s (left {shares['left']}, right {shares['right']})"
        )


@pytest.mark.parametrize("drain", [pytest.param("10", id="drain"), pytest.param("0.1", id="cut")])
async def test_sigterm_acks_only_what_finished(broker: Broker, tmp_path: Path, drain: str) -> None:
    gateway = FakeGateway()
    # Calls are held until the connector has taken in the SIGTERM (drained) or has exited (cut):
    # none finishes, and frees a worker, before it knows it must stop.
    gate = anyio.Event()
    function = SlowFunction(latency=(0.05, 0.05), gate=gate)
    gateway.add_function("orders", topics=["orders"], handler=function)
    ids = {await broker.add(b"%d" % n, topic="orders") for n in range(40)}
    early_acks: list[str] = []

    async def watch_acks() -> None:
        """Whatever the group no longer holds as pending must have finished its invocation."""
        while True:
            delivered = await broker.delivered()
            pending = await broker.pending()
            finished = function.finished()  # read after the broker: an ack before is early
            early_acks.extend(delivered - pending - set(finished))
            await anyio.sleep(0.01)

    async with gateway.serve() as url, anyio.create_task_group() as watcher:
        await broker.client.xgroup_create(broker.stream(), broker.group, id="0")
        watcher.start_soon(watch_acks)
        env = connector_env(url, "first", max_concurrency="8", drain_timeout=drain)
        args = broker.args("--consumer", "first")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "1.log") as first:
            await wait_until(lambda: len(function.in_flight()) == 8, within=15)  # all busy
            in_flight = function.in_flight()
            first.terminate()
            if drain == "10":
                await wait_until(lambda: "received SIGTERM" in first.output())
                gate.set()
            assert await first.wait(timeout=5) == 0, first.output()
        finished_by_first = set(function.finished("first"))
        acked_by_first = await broker.delivered() - await broker.pending()
        gate.set()  # when cut short, only now
        env = connector_env(url, "second", max_concurrency="8")
        args = broker.args("--consumer", "second", "--min-idle", "500")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "2.log") as second:
            await wait_until(lambda: set(message_ids(gateway)) >= ids, within=20)
            await wait_until(broker.settled, within=10)
            second.terminate()
            assert await second.wait(timeout=5) == 0, second.output()
        watcher.cancel_scope.cancel()

    assert set(message_ids(gateway)) == ids  # none lost
    assert not early_acks  # nothing acknowledged before its invocation finished
    # The eight it was working on and no other: nothing more was read after SIGTERM.
    assert {c.message_id for c in function.calls if c.connector == "first"} == in_flight
    if drain == "10":  # all that was in flight finished, was acked, and is not claimed again
        assert in_flight <= acked_by_first
        assert acked_by_first == finished_by_first
        assert all(message_ids(gateway)[m] == 1 for m in in_flight)
    else:  # cut by drain_timeout: what was left unacked is claimed by the second
        left = in_flight - acked_by_first
        assert left
        assert left <= set(message_ids(gateway, "second"))


async def test_the_connect_command_serves_health_and_metrics(
    broker: Broker, tmp_path: Path
) -> None:
    import socket

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as probe:  # a free port for --health-port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    base = f"http://127.0.0.1:{port}"
    async with gateway.serve() as url, httpx.AsyncClient() as http:
        env = connector_env(url, "health", health_port=str(port))
        async with connector_process(BROKER, broker.args(), env=env, log=tmp_path / "c.log") as c:
            await c.wait_ready()
            assert (await http.get(f"{base}/healthz")).status_code == 200
            ready = await http.get(f"{base}/readyz")
            assert (ready.status_code, ready.text) == (200, "ready\n"), c.output()
            ids = {await broker.add(b"%d" % n, topic="orders") for n in range(3)}
            await wait_until(lambda: set(message_ids(gateway)) == ids, within=15)
            await wait_until(broker.settled, within=10)
            text = (await http.get(f"{base}/metrics")).text
            c.terminate()
            assert await c.wait(timeout=10) == 0, c.output()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("code", "200"), ("function_name", "orders.openfaas-fn"))
    assert samples[("aioconnector_invocations_total", labels)] == 3
    assert samples[("aioconnector_source_messages_settled_total", (("settlement", "ack"),))] == 3
    assert samples[("aioconnector_topic_map_functions", ())] == 1
