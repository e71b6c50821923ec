"""aioconnector.connectors.nats against a real nats-server, with a FakeGateway on a real socket.

Each test uses its own stream (deleted afterwards, consumers with it). The in-process tests
await the connector's ``run(controller, options)``; the others run ``aioconnector connect nats``
as a subprocess, kill it or SIGTERM it.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pytest

from aioconnector import AsyncController, ControllerConfig, OutcomeKind, Settlement, SourceStats
from aioconnector.connectors import nats as connector
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

from ._process import (
    SlowFunction,
    broker_config,
    connector_env,
    connector_process,
    load_example,
    message_ids,
    report_kill,
    running_in_process,
    wait_until,
)
from .conftest import require_module, require_service

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

BROKER = "nats"


@pytest.fixture
def nats_url() -> str:
    """The local nats-server; skips when the server or nats-py is missing."""
    require_module("nats")
    return f"nats://127.0.0.1:{require_service('nats')}"


@attrs.define
class Broker:
    """A fresh stream ``TEST_<tag>`` on subjects ``test.<tag>.>``; the topic is what follows."""

    client: Client
    url: str
    tag: str
    durable: str = "connectors"

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream()

    @property
    def stream(self) -> str:
        return f"TEST_{self.tag}"

    @property
    def prefix(self) -> str:
        return f"test.{self.tag}."

    def options(self, **changes: Any) -> connector.Options:
        return connector.Options(
            url=self.url,
            stream=self.stream,
            subjects=(f"{self.prefix}>",),
            durable=self.durable,
            strip_prefix=self.prefix,
            **changes,
        )

    def args(self, *extra: str) -> list[str]:
        """The same as :meth:`options`, as command-line flags."""
        return [
            *("--url", self.url, "--stream", self.stream, "--subjects", f"{self.prefix}>"),
            *("--durable", self.durable, "--strip-prefix", self.prefix, *extra),
        ]

    async def publish(self, topic: str, body: bytes, *, msg_id: str | None = None) -> str:
        """Publish and return the message's id as the connector will send it."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.js.publish(self.prefix + topic, body, headers=headers)
        return msg_id or str(ack.seq)

    async def settled(self) -> bool:
        """Whether the consumer exists and has nothing undelivered nor unacknowledged."""
        from nats.js.errors import NotFoundError

        try:
            info = await self.js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            return False
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[Broker]:
    import nats

    client = await nats.connect(nats_url)
    broker = Broker(client, nats_url, uuid.uuid4().hex[:12])
    try:
        await broker.js.add_stream(name=broker.stream, subjects=[f"{broker.prefix}>"])
        yield broker
    finally:
        with anyio.CancelScope(shield=True):
            await broker.js.delete_stream(broker.stream)
            await client.close()


def config(url: str) -> ControllerConfig:
    return broker_config(url)


def running(
    config: ControllerConfig, options: connector.Options
) -> AbstractAsyncContextManager[list[SourceStats]]:
    return running_in_process(connector.run, config, options)


# -- in-process ------------------------------------------------------------------------------


async def test_every_message_invokes_its_functions_and_is_acked(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    gateway.add_function("payments", topics=["payments"])
    expected = {}
    for n in range(50):
        topic = ("orders", "payments")[n % 2]
        body = json.dumps({"n": n}).encode()
        msg_id = f"custom-{n}" if n % 10 == 0 else None  # a publisher's Nats-Msg-Id wins
        expected[await broker.publish(topic, body, msg_id=msg_id)] = (f"{topic}.openfaas-fn", body)
    await broker.publish("nobody", b"no function subscribes")

    async with gateway.serve() as url, running(config(url), broker.options()) as stats:
        await wait_until(lambda: len(gateway.invocations()) >= 50, within=15)
        await wait_until(broker.settled, within=10)

    invocations = gateway.invocations()
    assert len(invocations) == 50
    seen = {r.headers["x-message-id"]: (r.function, r.body) for r in invocations}
    assert seen == expected
    assert all(r.headers["x-topic"] == (r.function or "").split(".")[0] for r in invocations)
    assert stats[0].received == 51
    assert stats[0].settled[Settlement.ACK] == 50
    assert stats[0].settled[Settlement.UNMATCHED] == 1  # terminated: not pending any more
    assert stats[0].unsettled == 0


async def test_a_failed_message_is_redelivered_until_it_succeeds(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    gateway.set_fault("orders", status=500, times=2)
    msg_id = await broker.publish("orders", b"try again")

    async with (
        gateway.serve() as url,
        running(config(url), broker.options(nak_delay=0.05)) as stats,
    ):
        await wait_until(lambda: len(gateway.invocations()) >= 3, within=10)
        await wait_until(broker.settled, within=10)

    assert message_ids(gateway) == {msg_id: 3}
    assert stats[0].settled[Settlement.RETRY] == 2
    assert stats[0].settled[Settlement.ACK] == 1


async def test_a_poison_message_is_terminated_after_max_deliver(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("poison", topics=["poison"])
    gateway.set_fault("poison", status=500)  # always
    gateway.add_function("orders", topics=["orders"])
    advisories = await broker.client.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{broker.stream}.{broker.durable}"
    )
    poison = await broker.publish("poison", b"boom")
    good = await broker.publish("orders", b"fine")
    options = broker.options(max_deliver=3, nak_delay=0.05)

    async with gateway.serve() as url, running(config(url), options) as stats:
        terminated: Msg = await advisories.next_msg(timeout=15)
        await wait_until(broker.settled, within=10)
    await advisories.unsubscribe()

    assert json.loads(terminated.data)["stream_seq"] == int(poison)
    assert message_ids(gateway) == {poison: 3, good: 1}
    assert stats[0].settled[Settlement.RETRY] == 3  # the third one was terminated
    assert stats[0].settled[Settlement.ACK] == 1


async def test_the_embedding_example_consumes_into_its_own_controller(broker: Broker) -> None:
    """examples/embed_nats.py: the packaged connector on a controller the program owns."""
    example = load_example("embed_nats")
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    gateway.add_function("audit", topics=["orders"])
    ids = {await broker.publish("orders", b"%d" % n) for n in range(5)}
    stop = anyio.Event()
    outcome: list[tuple[SourceStats, Counter[str]]] = []

    async def consume(url: str) -> None:
        outcome.append(await example.run(config(url), broker.options(), stop=stop))

    async with gateway.serve() as url, anyio.create_task_group() as tg:
        tg.start_soon(consume, url)
        await wait_until(lambda: len(gateway.invocations()) >= 10, within=15)
        await wait_until(broker.settled, within=10)
        stop.set()

    [(stats, counts)] = outcome
    assert set(message_ids(gateway)) == ids
    assert stats.settled[Settlement.ACK] == 5
    assert counts == Counter({"orders.openfaas-fn": 5, "audit.openfaas-fn": 5})


# -- subprocesses ----------------------------------------------------------------------------


async def test_no_message_is_lost_when_a_connector_is_killed(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = FakeGateway()
    function = SlowFunction(latency=(0.02, 0.05))
    gateway.add_function("orders", topics=["orders"], handler=function)
    ids = {await broker.publish("orders", b"%d" % n) for n in range(200)}
    args = broker.args("--ack-wait", "2", "--batch", "8")

    async with gateway.serve() as url:
        env = connector_env(url, "first", max_concurrency="8")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "1.log") as first:
            await wait_until(lambda: len(gateway.invocations()) >= 60, within=15)
            first.kill()
            assert await first.wait(timeout=5) < 0
        in_flight_at_kill = function.in_flight()
        env = connector_env(url, "second", max_concurrency="8")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "2.log") as second:
            await wait_until(lambda: set(message_ids(gateway)) >= ids, within=20)
            await wait_until(broker.settled, within=10)
            second.terminate()
            assert await second.wait(timeout=5) == 0, second.output()

    report = report_kill("NATS JetStream", ids, gateway, capsys)
    assert not report.lost, sorted(report.lost)  # every one at least once
    assert set(message_ids(gateway)) == ids  # and nothing else
    assert 0 < report.by_first < report.published  # killed mid-stream
    assert in_flight_at_kill <= set(message_ids(gateway, "second"))  # redelivered


# Without asyncio's debug mode, whose bookkeeping would make the gateway here the bottleneck.
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_two_connectors_share_a_durable_consumer(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"], handler=SlowFunction(latency=(0.005, 0.005)))
    args = broker.args("--batch", "16")
    count = 600

    async with gateway.serve() as url:
        env_left = connector_env(url, "left", max_concurrency="16")
        env_right = connector_env(url, "right", max_concurrency="16")
        async with (
            connector_process(BROKER, args, env=env_left, log=tmp_path / "l.log") as left,
            connector_process(BROKER, args, env=env_right, log=tmp_path / "r.log") as right,
        ):
            await left.wait_ready()
            await right.wait_ready()
            for n in range(count):  # core publishes, flushed at once: JetStream stores them
                await broker.client.publish(
                    f"{broker.prefix}orders", b"%d" % n, headers={"Nats-Msg-Id": f"m{n}"}
                )
            await broker.client.flush()
            await wait_until(lambda: len(message_ids(gateway)) >= count, within=20)
            await wait_until(broker.settled, within=10)
            left.terminate()
            right.terminate()
            assert await left.wait(timeout=5) == 0, left.output()
            assert await right.wait(timeout=5) == 0, right.output()

    invocations = gateway.invocations()
    assert message_ids(gateway) == {f"m{n}": 1 for n in range(count)}  # each exactly once
    shares = Counter(r.headers["x-connector"] for r in invocations)
    assert shares["left"] > 0
    assert shares["right"] > 0
    seconds = invocations[-1].time - invocations[0].time
    with capsys.disabled():  # shown with -q too
        print(  # noqa: T201
            f"\nNATS JetStream, two connectors: {count} messages in {seconds:.2f} s"
            f" = {count / seconds:.0f} msg/s (left {shares['left']}, right {shares['right']})"
        )


@pytest.mark.parametrize("drain", [pytest.param("10", id="drain"), pytest.param("0.1", id="cut")])
async def test_sigterm_acks_only_what_finished(broker: Broker, tmp_path: Path, drain: str) -> None:
    from nats.js.api import ConsumerConfig

    # The test creates the consumer (the connector uses it as it is) to get a metric per ack.
    await broker.js.add_consumer(
        broker.stream,
        ConsumerConfig(
            durable_name=broker.durable,
            ack_wait=2,
            max_deliver=10,
            filter_subject=f"{broker.prefix}>",
            sample_freq="100%",
        ),
    )
    acks: dict[str, float] = {}  # stream sequence -> when the broker took its first ack

    async def on_ack(msg: Msg) -> None:
        metric = json.loads(msg.data)
        acks.setdefault(str(metric["stream_seq"]), _wall_clock(metric["timestamp"]))

    metrics = await broker.client.subscribe(
        f"$JS.EVENT.METRIC.CONSUMER.ACK.{broker.stream}.{broker.durable}", cb=on_ack
    )
    gateway = FakeGateway()
    # Calls are held until the connector has taken in the SIGTERM (drained) or has exited (cut):
    # none finishes, and frees a worker, before it knows it must stop.
    gate = anyio.Event()
    function = SlowFunction(latency=(0.05, 0.05), gate=gate)
    gateway.add_function("orders", topics=["orders"], handler=function)
    ids = {await broker.publish("orders", b"%d" % n) for n in range(40)}

    async with gateway.serve() as url:
        env = connector_env(url, "first", max_concurrency="8", drain_timeout=drain)
        async with connector_process(
            BROKER, broker.args(), env=env, log=tmp_path / "1.log"
        ) as first:
            await wait_until(lambda: len(function.in_flight()) == 8, within=15)  # all busy
            in_flight = function.in_flight()
            first.terminate()
            if drain == "10":
                await wait_until(lambda: "received SIGTERM" in first.output())
                gate.set()
            assert await first.wait(timeout=5) == 0, first.output()
            exited_at = time.time()
        finished_by_first = set(function.finished("first"))  # by the time it exited
        gate.set()  # when cut short, only now
        env = connector_env(url, "second", max_concurrency="8")
        async with connector_process(
            BROKER, broker.args(), env=env, log=tmp_path / "2.log"
        ) as second:
            await wait_until(lambda: set(message_ids(gateway)) >= ids, within=20)
            await wait_until(broker.settled, within=10)
            second.terminate()
            assert await second.wait(timeout=5) == 0, second.output()
        await broker.client.flush()
    await metrics.unsubscribe()

    assert set(message_ids(gateway)) == ids  # none lost
    assert set(acks) == ids
    finished = function.finished()
    for seq, acked_at in acks.items():  # the broker took no ack before its invocation finished
        assert finished[seq] < acked_at, seq
    acked_by_first = {seq for seq, acked_at in acks.items() if acked_at < exited_at}
    # The eight it was working on and no other: nothing more was fetched after SIGTERM.
    assert {c.message_id for c in function.calls if c.connector == "first"} == in_flight
    if drain == "10":  # all that was in flight finished, was acked, and is not redelivered
        assert in_flight <= acked_by_first
        assert acked_by_first == finished_by_first
        assert all(message_ids(gateway)[seq] == 1 for seq in in_flight)
    else:  # cut by drain_timeout: what was left unacked is redelivered to the second
        left = in_flight - acked_by_first
        assert left
        assert left <= set(message_ids(gateway, "second"))


def _wall_clock(timestamp: str) -> float:
    """Seconds since the epoch from an RFC 3339 UTC timestamp with nanoseconds (nats-server's)."""
    whole, _, fraction = timestamp.rstrip("Z").partition(".")
    start = datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp()
    return start + float(f"0.{fraction or 0}")


# -- --async-invocations: acked once the function's callback came ------------------------------


def async_config(url: str) -> ControllerConfig:
    return attrs.evolve(config(url), callback_listen="127.0.0.1:0", drain_timeout=0)


async def test_async_a_long_function_outlives_ack_wait_and_is_acked_once_finished(
    broker: Broker,
) -> None:
    gateway = FakeGateway()
    gate = anyio.Event()  # the function runs until the test lets it finish
    function = SlowFunction(latency=(0.0, 0.0), gate=gate)
    gateway.add_function("reports", topics=["reports"], handler=function)
    msg_id = await broker.publish("reports", b"a long report")
    # ack_wait 1 s (the consumer is new): the function runs for several of them.
    options = broker.options(async_invocations=True, ack_wait=1.0)

    async with gateway.serve() as url, running(async_config(url), options) as stats:
        await wait_until(lambda: len(function.calls) == 1, within=15)
        await anyio.sleep(3)  # three ack waits: unmarked, JetStream would have redelivered
        info = await broker.js.consumer_info(broker.stream, broker.durable)
        assert (info.num_ack_pending, info.num_redelivered) == (1, 0)
        assert len(function.calls) == 1
        assert (gateway.invocations()[0].is_async, stats) == (True, [])  # not settled yet
        gate.set()
        await wait_until(broker.settled, within=10)

    assert message_ids(gateway) == {msg_id: 1}  # invoked once: never redelivered
    assert stats[0].settled[Settlement.ACK] == 1
    assert stats[0].unsettled == 0


async def test_async_a_failure_in_the_callback_is_nakked_and_redelivered(broker: Broker) -> None:
    answers = iter([FakeResponse(status=500, body=b"not yet")])

    def handler(_: RecordedRequest) -> FakeResponse:
        return next(answers, FakeResponse(body=b"done"))

    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"], handler=handler)
    msg_id = await broker.publish("orders", b"try again")
    options = broker.options(async_invocations=True, nak_delay=0.05)

    async with gateway.serve() as url, running(async_config(url), options) as stats:
        await wait_until(lambda: len(gateway.invocations()) >= 2, within=10)
        await wait_until(broker.settled, within=10)

    assert message_ids(gateway) == {msg_id: 2}
    assert all(call.is_async for call in gateway.invocations())
    assert stats[0].settled[Settlement.RETRY] == 1
    assert stats[0].settled[Settlement.ACK] == 1


async def test_async_invocations_need_a_receiver(broker: Broker) -> None:
    gateway = FakeGateway()
    async with gateway.serve() as url, AsyncController(config(url)) as controller:
        with pytest.raises(ValueError, match="async_invocations needs a callback receiver"):
            await connector.run(controller, broker.options(async_invocations=True))
    with pytest.raises(ValueError, match="nats_async_invocations"):
        connector.CONNECTOR.settings({}, {"nats_async_invocations": "sometimes"})


async def test_async_connect_subprocess_acks_after_the_callbacks(
    broker: Broker, tmp_path: Path
) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    gateway.add_function("audit", topics=["orders"])
    ids = {await broker.publish("orders", b"%d" % n) for n in range(10)}
    args = broker.args("--async-invocations", "--callback-listen", "127.0.0.1:0")

    async with gateway.serve() as url:
        env = connector_env(url, "async")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "1.log") as process:
            await wait_until(lambda: len(gateway.invocations()) >= 20, within=15)
            await wait_until(broker.settled, within=10)
            process.terminate()
            assert await process.wait(timeout=10) == 0, process.output()
        # Without a receiver: one line, exit 1.
        args = broker.args("--async-invocations")
        async with connector_process(BROKER, args, env=env, log=tmp_path / "2.log") as failing:
            assert await failing.wait(timeout=15) == 1
            assert "async_invocations needs a callback receiver" in failing.output()
            assert "Traceback" not in failing.output()

    assert set(message_ids(gateway)) == ids
    assert all(call.is_async for call in gateway.invocations())
    assert len(gateway.invocations()) == 20
    assert "stopped: received 10 (ack 10, retry 0," in process.output()
    assert "; outcomes: ack 10, retry 0, dead_letter 0, drop 0" in process.output()


# -- dead letters and leases -------------------------------------------------------------------


async def test_dead_letters_carry_their_reason_in_headers(broker: Broker) -> None:
    """A failing message after max_deliver, an unmatched one and an invalid one (a non-ASCII
    topic) are published to the dead-letter subject with their reason, then terminated."""
    from nats.js.errors import NotFoundError

    gateway = FakeGateway()
    gateway.add_function("poison", topics=["poison"])
    gateway.set_fault("poison", status=500)  # always
    poison = await broker.publish("poison", b"boom", msg_id="poison-1")
    unmatched = await broker.publish("nobody", b"no function subscribes")
    invalid = await broker.publish("caf\u00e9", b"a topic that cannot be a header")
    dead_subject, dead_stream = f"dead.{broker.tag}", f"{broker.stream}_DEAD"
    options = broker.options(max_deliver=3, nak_delay=0.05, dead_letter_subject=dead_subject)

    async def all_dead() -> bool:
        try:
            return (await broker.js.stream_info(dead_stream)).state.messages >= 3
        except NotFoundError:  # not created yet
            return False

    try:
        async with gateway.serve() as url, running(config(url), options) as stats:
            await wait_until(lambda: len(gateway.invocations()) >= 3, within=15)
            await wait_until(all_dead, within=10)
            await wait_until(broker.settled, within=10)
        letters = [await broker.js.get_msg(dead_stream, seq) for seq in (1, 2, 3)]
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(NotFoundError):
                await broker.js.delete_stream(dead_stream)

    assert message_ids(gateway) == {poison: 3}
    headers = {h["dead_message_id"]: h for h in (letter.headers or {} for letter in letters)}
    assert set(headers) == {poison, unmatched, invalid}
    assert {letter.data for letter in letters} == {
        b"boom",
        b"no function subscribes",
        b"a topic that cannot be a header",
    }
    assert {letter.subject for letter in letters} == {dead_subject}
    assert {k: v for k, v in headers[poison].items() if k.startswith("dead_")} == {
        "dead_cause": "failed",
        "dead_reason": "poison.openfaas-fn: HTTP 500",
        "dead_topic": "poison",
        "dead_message_id": poison,
        "dead_deliveries": "3",
        "dead_function": "poison.openfaas-fn",
        "dead_status": "500",
        "dead_error": "UpstreamStatusError",
        "dead_attempts": "1",
        "dead_failed": "1",
        "dead_from": f"{broker.stream}/1",
        "dead_subject": f"{broker.prefix}poison",
    }
    assert headers[unmatched]["dead_cause"] == "unmatched"
    assert headers[unmatched]["dead_deliveries"] == "1"  # at once
    assert headers[invalid]["dead_cause"] == "invalid"
    assert headers[invalid]["dead_error"] == "ValueError"
    assert headers[invalid]["dead_reason"] == (
        "invalid message: topic must be ASCII (it is sent as the X-Topic header): 'caf\\xe9'"
    )
    assert stats[0].settled[Settlement.RETRY] == 3
    assert stats[0].outcomes[OutcomeKind.RETRY] == 2
    assert stats[0].outcomes[OutcomeKind.DEAD_LETTER] == 3


async def test_a_dead_letter_subject_the_connector_consumes_is_refused(broker: Broker) -> None:
    gateway = FakeGateway()
    options = broker.options(dead_letter_subject=f"{broker.prefix}dead")
    async with gateway.serve() as url, AsyncController(config(url)) as controller:
        with pytest.raises(ValueError, match="would come back to it"):
            await connector.run(controller, options)


async def test_unroutable_drop_terminates_without_a_dead_letter(broker: Broker) -> None:
    gateway = FakeGateway()
    gateway.add_function("orders", topics=["orders"])
    advisories = await broker.client.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{broker.stream}.{broker.durable}"
    )
    unmatched = await broker.publish("nobody", b"dropped")
    options = broker.options(unroutable="drop", dead_letter_subject=f"dead.{broker.tag}")
    try:
        async with gateway.serve() as url, running(config(url), options) as stats:
            terminated: Msg = await advisories.next_msg(timeout=15)
            await wait_until(broker.settled, within=10)
        await advisories.unsubscribe()
        dead = await broker.js.stream_info(f"{broker.stream}_DEAD")  # created, left empty
    finally:
        with anyio.CancelScope(shield=True):
            await broker.js.delete_stream(f"{broker.stream}_DEAD")
    assert json.loads(terminated.data)["stream_seq"] == int(unmatched)
    assert dead.state.messages == 0
    assert stats[0].outcomes[OutcomeKind.DROP] == 1


async def test_a_function_slower_than_ack_wait_is_invoked_once(broker: Broker) -> None:
    """ack_wait 1 s, a function that takes 3 s and free workers fetching: unmarked, the message
    would be redelivered (and invoked again) every second; marked in progress, it is not."""
    gateway = FakeGateway()
    gateway.add_function("reports", topics=["reports"])
    gateway.set_fault("reports", latency=3.0)
    msg_id = await broker.publish("reports", b"a long report")
    options = broker.options(ack_wait=1.0)

    async with gateway.serve() as url:
        async with running(config(url), options) as stats:
            await wait_until(lambda: len(gateway.invocations()) >= 1, within=15)
            await wait_until(broker.settled, within=10)
        info = await broker.js.consumer_info(broker.stream, broker.durable)

    assert message_ids(gateway) == {msg_id: 1}
    assert info.num_redelivered == 0
    assert stats[0].settled[Settlement.ACK] == 1


async def test_a_message_waiting_in_a_fetched_batch_keeps_its_lease(broker: Broker) -> None:
    """One worker, a batch of two, calls of 2.5 s and ack_wait 1 s: the second message waits
    in the batch longer than ack_wait before its call starts; it is not redelivered either."""
    gateway = FakeGateway()
    gateway.add_function("reports", topics=["reports"])
    gateway.set_fault("reports", latency=2.5)
    ids = {await broker.publish("reports", b"%d" % n) for n in range(2)}
    options = broker.options(ack_wait=1.0, batch=2)

    async with gateway.serve() as url:
        async with running(attrs.evolve(config(url), max_concurrency=1), options) as stats:
            await wait_until(lambda: len(gateway.invocations()) >= 2, within=15)
            await wait_until(broker.settled, within=10)
        info = await broker.js.consumer_info(broker.stream, broker.durable)

    assert message_ids(gateway) == dict.fromkeys(ids, 1)
    assert info.num_redelivered == 0
    assert stats[0].settled[Settlement.ACK] == 2
