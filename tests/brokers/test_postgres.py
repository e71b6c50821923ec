"""aioconnector.connectors.postgres against the real PostgreSQL on 127.0.0.1:5432 (database `test`).

The connector runs in-process (its ``run(controller, options)``, stopped with an event) or as an
``aioconnector connect postgres`` subprocess, and the tests
NOTIFY with ``SELECT pg_notify(channel, payload)`` on channels of their own (uuid names).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
from aioconnector.testing import FakeGateway

from ._process import (
    SlowFunction,
    connector_env,
    connector_process,
    message_ids,
    report_kill,
    wait_until,
)
from .conftest import require_module, require_service

require_module("asyncpg")  # the tests notify with it: without it, every test here skips

import asyncpg  # type: ignore[import-untyped]  # noqa: E402

from aioconnector.connectors import postgres  # noqa: E402


@pytest.fixture
def dsn() -> str:
    require_module("asyncpg")
    port = require_service("postgres")
    return f"postgresql://postgres@127.0.0.1:{port}/test"


@pytest.fixture
def channels() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:12]
    return f"orders_{suffix}", f"payments_{suffix}"


@attrs.define
class Run:
    stop: anyio.Event
    stats: SourceStats | None = None


@asynccontextmanager
async def running(
    gateway: FakeGateway, dsn: str, channels: tuple[str, ...], *, dead_letter_table: str = ""
) -> AsyncIterator[Run]:
    """Run the connector until the block ends; its stats are set once it has returned."""
    run = Run(anyio.Event())
    options = postgres.Options(dsn=dsn, channels=channels, dead_letter_table=dead_letter_table)
    config = ControllerConfig.from_env(
        {"gateway_url": gateway.url, "startup_timeout": "5s"}, retry=RetryPolicy.disabled()
    )

    async def target(*, task_status: TaskStatus[None]) -> None:
        async with AsyncController(config) as controller:
            run.stats = await postgres.run(
                controller, options, stop=run.stop, task_status=task_status
            )

    async with anyio.create_task_group() as tg:
        await tg.start(target)
        try:
            yield run
        finally:
            run.stop.set()


async def notify(dsn: str, notifications: list[tuple[str, str]]) -> None:
    """``pg_notify(channel, payload)`` for each pair, each in its own transaction."""
    connection = await asyncpg.connect(dsn)
    try:
        for channel, payload in notifications:
            await connection.execute("SELECT pg_notify($1, $2)", channel, payload)
    finally:
        await connection.close()


def envelope(topic: object, body: object, ident: object) -> str:
    return json.dumps({"topic": topic, "body": body, "id": ident})


async def test_end_to_end_json_envelopes(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str]
) -> None:
    gateway.add_function("orders", topics=["orders.created"])
    gateway.add_function("payments", topics=["payments.settled"])
    orders, payments = channels
    sent = [
        (orders, "orders.created", f"order-{n}", f"id-{n}")
        if n % 2
        else (payments, "payments.settled", f"payment-{n}", n)
        for n in range(30)
    ]
    async with running(gateway, dsn, channels) as run:
        await notify(dsn, [(ch, envelope(topic, body, ident)) for ch, topic, body, ident in sent])
        await wait_until(lambda: len(gateway.invocations()) == 30)
    for function, topic in (("orders", "orders.created"), ("payments", "payments.settled")):
        records = gateway.invocations(function)
        expected = [(body, str(ident)) for _, where, body, ident in sent if where == topic]
        assert sorted((r.body.decode(), r.headers["x-message-id"]) for r in records) == sorted(
            expected
        )
        assert {r.headers["x-topic"] for r in records} == {topic}
    assert run.stats is not None
    assert run.stats.settled[Settlement.ACK] == 30


async def test_plain_payloads_go_to_the_channels_topic(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str]
) -> None:
    orders, _ = channels
    gateway.add_function("orders", topics=[orders])
    gateway.add_function("audit", topics=["audit"])
    row = json.dumps({"id": 7, "total": 12.5})  # e.g. row_to_json(NEW): no "topic" key
    async with running(gateway, dsn, (orders,)) as run:
        await notify(
            dsn,
            [(orders, "plain text"), (orders, row), (orders, envelope("audit", {"n": 1}, None))],
        )
        await wait_until(lambda: len(gateway.invocations()) == 3)
    records = {r.body.decode(): r for r in gateway.invocations("orders")}
    assert sorted(records) == sorted(["plain text", row])
    assert {r.headers["x-topic"] for r in records.values()} == {orders}
    assert all("x-message-id" not in r.headers for r in records.values())  # no name for them
    assert records[row].headers["content-type"] == "application/json"
    (audit,) = gateway.invocations("audit")  # an envelope without an id, with a JSON body
    assert json.loads(audit.body) == {"n": 1}
    assert "x-message-id" not in audit.headers
    assert run.stats is not None
    assert run.stats.settled[Settlement.ACK] == 3


async def test_bad_json_is_invalid_and_the_connector_goes_on(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str]
) -> None:
    orders, _ = channels
    gateway.add_function("orders", topics=["orders.created"])
    bad = ["{not json", envelope(7, "x", None), envelope("orders.created", "x", [1])]
    async with running(gateway, dsn, (orders,)) as run:
        await notify(dsn, [(orders, payload) for payload in bad])
        await notify(dsn, [(orders, envelope("orders.created", "after", "a1"))])
        await wait_until(lambda: len(gateway.invocations()) == 1)
    (record,) = gateway.invocations()
    assert record.body == b"after"
    assert record.headers["x-message-id"] == "a1"
    assert run.stats is not None
    assert run.stats.settled[Settlement.INVALID] == 3
    assert run.stats.settled[Settlement.ACK] == 1


async def test_a_lost_connection_ends_the_run_with_an_error(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str]
) -> None:
    orders, _ = channels
    connection = await asyncpg.connect(dsn)
    try:
        with (
            anyio.fail_after(10),
            pytest.RaisesGroup(pytest.RaisesExc(ConnectionError, match="was lost")),
        ):
            async with running(gateway, dsn, (orders,)):
                # The connector's backend is the other one whose last query names the channel.
                terminated = await connection.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN %' || $1 || '%' AND pid <> pg_backend_pid()",
                    orders,
                )
                assert terminated == 1
                await anyio.sleep_forever()  # until the connector fails
    finally:
        await connection.close()


async def test_connect_command_listens_and_stops_on_sigterm(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str], tmp_path: Path
) -> None:
    """``aioconnector connect postgres`` configured by variables alone, as in a Deployment."""
    orders, payments = channels
    gateway.add_function("orders", topics=[orders])
    gateway.add_function("payments", topics=["payments.settled"])
    env = connector_env(
        gateway.url, "cli", postgres_dsn=dsn, postgres_channels=f"{orders},{payments}"
    )
    async with connector_process("postgres", [], env=env, log=tmp_path / "pg.log") as process:
        await process.wait_ready()
        await notify(dsn, [(orders, "plain"), (payments, envelope("payments.settled", "p", 7))])
        await wait_until(lambda: len(gateway.invocations()) == 2)
        process.terminate()
        assert await process.wait(timeout=15) == 0, process.output()
    assert [r.body for r in gateway.invocations("orders")] == [b"plain"]
    [payment] = gateway.invocations("payments")
    assert (payment.body, payment.headers["x-message-id"]) == (b"p", "7")
    assert "stopped: received 2 (ack 2," in process.output()


async def test_a_killed_connector_loses_what_it_held_and_invokes_nothing_twice(
    gateway: FakeGateway,
    dsn: str,
    channels: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At most once, as documented: NOTIFY has no acknowledgement, so what the killed one had
    received but not invoked, and what was notified while none listened, is lost."""
    orders, _ = channels
    gateway.add_function(
        "orders", topics=["orders.created"], handler=SlowFunction(latency=(0.02, 0.05))
    )
    sent = [(orders, envelope("orders.created", f"order-{n}", f"id-{n}")) for n in range(200)]
    before_kill, after_kill = sent[:150], sent[150:]
    env = connector_env(gateway.url, "first", max_concurrency="8", postgres_dsn=dsn)
    args = ["--channels", orders]

    # Leaving the block waits for the notifier too (past the kill, if notifying is slow).
    async with (
        anyio.create_task_group() as notifying,
        connector_process("postgres", args, env=env, log=tmp_path / "1.log") as first,
    ):
        await first.wait_ready()  # listening
        notifying.start_soon(notify, dsn, before_kill)  # invoked while being notified
        await wait_until(lambda: len(gateway.invocations()) >= 60, within=15)
        first.kill()
        assert await first.wait(timeout=5) < 0
    env = connector_env(gateway.url, "second", max_concurrency="8", postgres_dsn=dsn)
    async with connector_process("postgres", args, env=env, log=tmp_path / "2.log") as second:
        await second.wait_ready()
        await notify(dsn, after_kill)
        await wait_until(lambda: len(message_ids(gateway, "second")) >= len(after_kill))
        second.terminate()
        assert await second.wait(timeout=15) == 0, second.output()

    published = [f"id-{n}" for n in range(200)]
    report = report_kill("PostgreSQL LISTEN/NOTIFY", published, gateway, capsys)
    assert report.duplicates == 0  # at most once
    assert set(message_ids(gateway)) <= set(published)  # nothing else
    assert 0 < report.by_first < len(before_kill)  # killed mid-stream
    # The second gets every notification from its LISTEN on, none from before: what is lost is
    # what the first held or was notified while none listened.
    assert set(message_ids(gateway, "second")) == set(published[150:])
    assert report.lost == set(published[:150]) - set(message_ids(gateway, "first"))


async def test_dead_letters_are_rows_of_the_dead_letter_table(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str]
) -> None:
    """No redelivery in LISTEN/NOTIFY: a failure, an unmatched and an invalid notification
    become rows of --dead-letter-table (created) at once, with their reason."""
    orders, _ = channels
    table = f"dead_{orders}"
    gateway.add_function("orders", topics=["orders.created"])
    gateway.set_fault("orders", status=500)
    sent = [
        (orders, envelope("orders.created", "boom", "o1")),
        (orders, envelope("nobody", "x", "n1")),
        (orders, "{not json"),
    ]
    try:
        async with running(gateway, dsn, (orders,), dead_letter_table=table) as run:
            await notify(dsn, sent)
            await wait_until(lambda: run_rows(dsn, table, 3), within=10)
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(f'SELECT * FROM "{table}" ORDER BY id')  # noqa: S608
        finally:
            await connection.close()
    finally:
        await drop_table(dsn, table)

    assert sorted((row["channel"], row["payload"]) for row in rows) == sorted(sent)
    by_cause = {row["cause"]: row for row in rows}  # settled concurrently: in any order
    assert by_cause["failed"]["payload"] == sent[0][1]
    assert by_cause["failed"]["reason"] == "orders.openfaas-fn: HTTP 500"
    failed, unmatched, invalid = (
        json.loads(by_cause[cause]["fields"]) for cause in ("failed", "unmatched", "invalid")
    )
    assert failed == {
        "dead_cause": "failed",
        "dead_reason": "orders.openfaas-fn: HTTP 500",
        "dead_topic": "orders.created",
        "dead_message_id": "o1",
        "dead_function": "orders.openfaas-fn",
        "dead_status": "500",
        "dead_error": "UpstreamStatusError",
        "dead_attempts": "1",
        "dead_failed": "1",
    }
    assert (unmatched["dead_cause"], unmatched["dead_topic"]) == ("unmatched", "nobody")
    assert invalid["dead_error"] == "JSONDecodeError"
    assert invalid["dead_reason"].startswith("invalid message: Expecting property name")
    assert run.stats is not None
    assert run.stats.outcomes[OutcomeKind.DEAD_LETTER] == 3


async def run_rows(dsn: str, table: str, count: int) -> bool:
    """Whether ``table`` exists and holds ``count`` rows or more."""
    connection = await asyncpg.connect(dsn)
    try:
        found = await connection.fetchval("SELECT to_regclass($1)", f'"{table}"')
        if found is None:
            return False
        return bool(await connection.fetchval(f'SELECT count(*) FROM "{table}"') >= count)  # noqa: S608
    finally:
        await connection.close()


async def drop_table(dsn: str, table: str) -> None:
    with anyio.CancelScope(shield=True):
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f'DROP TABLE IF EXISTS "{table}"')
        finally:
            await connection.close()


async def test_a_bad_dead_letter_table_name_is_refused(
    gateway: FakeGateway, dsn: str, channels: tuple[str, str]
) -> None:
    options = postgres.Options(dsn=dsn, channels=channels, dead_letter_table='x"; DROP TABLE y')
    config = ControllerConfig.from_env({"gateway_url": gateway.url, "startup_timeout": "5s"})
    async with AsyncController(config) as controller:
        with pytest.raises(ValueError, match=r"dead_letter_table must be \[schema.\]name"):
            await postgres.run(controller, options)
