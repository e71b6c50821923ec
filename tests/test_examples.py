"""The programs in examples/, run against a FakeGateway on a real loopback socket.

Each example is imported from its file and its async entry point is called with a configuration
read, as the examples read theirs, by ``ControllerConfig.from_env`` (from a dict here). The
webhook examples are served for real on 127.0.0.1 and driven with httpx. What matters is what
the gateway's functions received.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

import aioconnector
from aioconnector import ControllerConfig, Settlement
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Every runnable example (embed_nats.py runs against a real NATS in tests/brokers/test_nats.py).
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def _load(name: str) -> ModuleType:
    """Import ``examples/{name}.py`` as the top-level module ``name``, as mypy sees it."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:  # mypy checks examples/ too: each file there is a top-level module
    import aiohttp_webhook
    import fastapi_webhook
    import jsonl_source
    import tester
    import trio_connector
else:
    aiohttp_webhook, fastapi_webhook, jsonl_source, tester, trio_connector = map(
        _load, ["aiohttp_webhook", "fastapi_webhook", "jsonl_source", "tester", "trio_connector"]
    )


def example_config(gateway_url: str) -> ControllerConfig:
    """The configuration an example would read from these environment variables."""
    return ControllerConfig.from_env({"gateway_url": gateway_url, "startup_timeout": "5s"})


@pytest.fixture
def asyncio_only(anyio_backend_name: str) -> None:
    if anyio_backend_name != "asyncio":
        pytest.skip("aiohttp runs on asyncio only")


@pytest.fixture
def trio_only(anyio_backend_name: str) -> None:
    if anyio_backend_name != "trio":
        pytest.skip("this example is trio-specific")


def message_ids(records: list[RecordedRequest]) -> list[str]:
    return [record.headers["x-message-id"] for record in records]


# -- --help ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_help_prints_usage(name: str) -> None:
    # The child imports the same aioconnector as this process, installed or from src/.
    package_root = str(Path(aioconnector.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    completed = subprocess.run(  # noqa: S603 (our own interpreter and file)
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"usage: {name}.py")
    assert "gateway_url" in completed.stdout  # the description says how to configure it
    assert completed.stderr == ""


# -- tester.py -------------------------------------------------------------------------------


async def test_tester_invokes_every_subscriber_at_a_fixed_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = FakeGateway()
    gw.add_function("echo", topics=["payment.received"])
    gw.add_function("audit", topics="payment.received,refunds")
    gw.add_function("other", topics="shipping")
    async with gw.serve() as url:
        with anyio.fail_after(10):
            sent = await tester.run(
                example_config(url), topic="payment.received", interval=0.1, count=4
            )

    assert sent == 4
    assert len(gw.invocations()) == 8
    assert gw.invocations("other") == []
    echo = gw.invocations("echo")
    ids = message_ids(echo)
    assert len(set(ids)) == 4
    assert all(uuid.UUID(message_id) for message_id in ids)
    assert message_ids(gw.invocations("audit")) == ids  # one message reaches both functions
    for number, record in enumerate(echo, start=1):
        assert json.loads(record.body)["n"] == number
        assert record.headers["content-type"] == "application/json"
        assert record.headers["x-topic"] == "payment.received"
    # Paced, not a burst: 0.3 s from the first to the last at the nominal rate. A fixed-rate
    # schedule catches up after a late message, so single gaps on a loaded machine prove
    # little; the whole span, a third of nominal, still tells pacing from a burst (~1 ms).
    times = [record.time for record in echo]
    assert times == sorted(times)
    assert times[-1] - times[0] > 0.1, times
    out = capsys.readouterr().out
    for message_id in ids:
        assert f"{message_id} -> echo.openfaas-fn: HTTP 200" in out
        assert f"{message_id} -> audit.openfaas-fn: HTTP 200" in out


async def test_tester_reports_a_topic_nobody_subscribes_to(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = FakeGateway()
    gw.add_function("echo", topics=["payment.received"])
    async with gw.serve() as url:
        with anyio.fail_after(10):
            sent = await tester.run(example_config(url), topic="nobody", interval=0, count=2)
    assert sent == 2
    assert gw.invocations() == []
    assert capsys.readouterr().out.count("no function subscribes to this topic") == 2


# -- jsonl_source.py: a connector of your own on run_source ---------------------------------


async def test_jsonl_source_settles_every_line(tmp_path: Path) -> None:
    gw = FakeGateway()
    gw.add_function("orders", topics=["orders"])
    gw.add_function("audit", topics=["orders"])
    gw.add_function("broken", topics=["payments"], handler=FakeResponse(status=500))
    lines = [
        {"topic": "orders", "body": {"n": 1}, "id": "o-1"},
        {"topic": "orders", "body": "plain", "id": 2},
        {"topic": "payments", "body": "pay", "id": "p-1"},
        {"topic": "nobody", "body": "x"},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([*map(json.dumps, lines), "", "not json"]) + "\n")
    async with gw.serve() as url:
        with anyio.fail_after(10):
            verdicts = await jsonl_source.run(example_config(url), str(events))

    assert verdicts == Counter(
        {Settlement.ACK: 2, Settlement.RETRY: 1, Settlement.UNMATCHED: 1, Settlement.INVALID: 1}
    )
    assert sorted(message_ids(gw.invocations("orders"))) == ["2", "o-1"]
    assert sorted(message_ids(gw.invocations("audit"))) == ["2", "o-1"]
    bodies = {r.headers["x-message-id"]: r.body for r in gw.invocations("orders")}
    assert json.loads(bodies["o-1"]) == {"n": 1}
    assert bodies["2"] == b"plain"
    dead = [json.loads(line) for line in (tmp_path / "events.jsonl.dead").read_text().splitlines()]
    # Settled concurrently: in no particular order.
    assert sorted((d["verdict"], d["failed"]) for d in dead) == [
        ("invalid", []),
        ("retry", ["broken.openfaas-fn"]),
        ("unmatched", []),
    ]


# -- the webhooks: one contract, two frameworks -----------------------------------------------


class Webhook:
    """A FakeGateway set up for the webhook examples, and the checks both must pass."""

    def __init__(self) -> None:
        self.gateway = FakeGateway()
        self.gateway.add_function("echo", topics=["orders"])
        self.gateway.add_function("audit", topics="orders,refunds")
        self.gateway.add_function("broken", topics="payments", handler=FakeResponse(status=500))
        self.finished: list[bytes] = []  # bodies the slow function got to answer
        self.gateway.add_function("slow", topics="slow", handler=self._slow)

    async def _slow(self, request: RecordedRequest) -> FakeResponse:
        await anyio.sleep(0.3)
        self.finished.append(request.body)
        return FakeResponse()

    async def exercise(self, client: httpx.AsyncClient) -> None:
        """Post to the running app and check its answers and what the functions received."""
        gw = self.gateway
        response = await client.post(
            "/events/orders",
            content=b'{"id": 1}',
            headers={"X-Message-Id": "m-1", "Content-Type": "application/json"},
        )
        assert response.status_code == 202
        assert response.json() == {"topic": "orders", "matched": 2}

        response = await client.post(
            "/events/payments", content=b"pay", headers={"X-Message-Id": "m-2"}
        )
        assert response.status_code == 202
        assert response.json() == {"topic": "payments", "matched": 1}

        response = await client.post("/events/nobody", content=b"x")  # documented: 404
        assert response.status_code == 404
        assert response.json()["topic"] == "nobody"
        assert response.json()["matched"] == 0

        # 202 means admitted: the invocations finish in the background. /healthz shows it.
        with anyio.fail_after(5):
            while True:
                response = await client.get("/healthz")
                assert response.status_code == 200
                stats: dict[str, Any] = response.json()
                done = stats["invocations_succeeded"] + stats["invocations_failed"]
                if done == 3 and stats["in_flight"] == 0:
                    break
                await anyio.sleep(0.01)
        assert stats["messages"] == 3
        assert stats["unmatched_messages"] == 1
        assert stats["invocations_started"] == 3
        assert stats["invocations_succeeded"] == 2
        assert stats["invocations_failed"] == 1
        assert (stats["topics"], stats["functions"]) == (4, 4)
        assert stats["last_refresh"] is not None
        assert stats["last_refresh_error"] is None

        for function in ("echo", "audit"):
            [record] = gw.invocations(function)
            assert record.body == b'{"id": 1}'
            assert record.headers["x-message-id"] == "m-1"
            assert record.headers["content-type"] == "application/json"
            assert record.headers["x-topic"] == "orders"
        [record] = gw.invocations("broken")
        assert record.body == b"pay"
        assert record.headers["x-message-id"] == "m-2"
        assert len(gw.invocations()) == 3

        # Last, a message still in flight when the server stops: shutdown must let it finish.
        response = await client.post("/events/slow", content=b"late")
        assert response.status_code == 202

    def check_after_shutdown(self, caplog: pytest.LogCaptureFixture, logger: str) -> None:
        assert self.finished == [b"late"]  # the controller drained before closing
        warnings = [r.getMessage() for r in caplog.records if r.name == logger]
        assert len(warnings) == 1, warnings  # the failure, and only it, was logged
        assert "m-2" in warnings[0]
        assert "broken.openfaas-fn" in warnings[0]


@asynccontextmanager
async def serve_asgi(app: Any, backend: str) -> AsyncIterator[str]:
    """Serve an ASGI app on 127.0.0.1, port 0: uvicorn on asyncio, hypercorn on trio.

    Leaving stops the server gracefully, lifespan shutdown included, even when the body failed.
    """
    stopped = anyio.Event()
    async with anyio.create_task_group() as tg:
        if backend == "asyncio":
            import uvicorn

            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=0,
                    lifespan="on",
                    log_config=None,
                    access_log=False,
                    http="h11",
                    ws="none",
                )
            )

            async def run_uvicorn() -> None:
                try:
                    await server.serve()
                finally:
                    stopped.set()

            tg.start_soon(run_uvicorn)
            with anyio.fail_after(10):
                while not server.started:
                    await anyio.sleep(0.01)
            url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

            def stop() -> None:
                server.should_exit = True
        else:
            import trio
            from hypercorn.config import Config
            from hypercorn.trio import serve

            config = Config()
            config.bind = ["127.0.0.1:0"]
            shutdown = anyio.Event()

            async def run_hypercorn(
                *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
            ) -> None:
                try:
                    await serve(
                        app, config, shutdown_trigger=shutdown.wait, task_status=task_status
                    )
                finally:
                    stopped.set()

            with anyio.fail_after(10):
                [url] = await tg.start(run_hypercorn)
            stop = shutdown.set
        try:
            yield url
        finally:
            stop()
            with anyio.move_on_after(10, shield=True):
                await stopped.wait()


async def test_fastapi_webhook(anyio_backend_name: str, caplog: pytest.LogCaptureFixture) -> None:
    webhook = Webhook()
    async with webhook.gateway.serve() as gateway_url:
        app = fastapi_webhook.create_app(example_config(gateway_url))
        with anyio.fail_after(30):
            async with (
                serve_asgi(app, anyio_backend_name) as url,
                httpx.AsyncClient(base_url=url, trust_env=False) as client,
            ):
                await webhook.exercise(client)
    webhook.check_after_shutdown(caplog, "fastapi_webhook")


@asynccontextmanager
async def serve_aiohttp(app: Any) -> AsyncIterator[str]:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # runs the cleanup context up to its yield: the controller starts
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        # Not under a cancel scope of its own: the cleanup context's task groups were entered
        # in runner.setup(), and must be left at the same cancel-scope nesting level.
        await runner.cleanup()  # the cleanup context's rest: the controller closes


@pytest.mark.usefixtures("asyncio_only")
async def test_aiohttp_webhook(caplog: pytest.LogCaptureFixture) -> None:
    webhook = Webhook()
    async with webhook.gateway.serve() as gateway_url:
        app = aiohttp_webhook.create_app(example_config(gateway_url))
        with anyio.fail_after(30):
            async with (
                serve_aiohttp(app) as url,
                httpx.AsyncClient(base_url=url, trust_env=False) as client,
            ):
                await webhook.exercise(client)
    webhook.check_after_shutdown(caplog, "aiohttp_webhook")


# -- trio_connector.py -----------------------------------------------------------------------


@pytest.mark.usefixtures("trio_only")
async def test_trio_connector_delivers_every_result(capsys: pytest.CaptureFixture[str]) -> None:
    gw = FakeGateway()
    gw.add_function("echo", topics=["orders"])
    gw.add_function("broken", topics=["orders"], handler=FakeResponse(status=500))
    async with gw.serve() as url:
        with anyio.fail_after(10):
            outcomes = await trio_connector.run(
                example_config(url), topic="orders", interval=0, count=4
            )

    assert outcomes == Counter({"ok": 4, "UpstreamStatusError": 4})
    ids = message_ids(gw.invocations("echo"))
    assert len(set(ids)) == 4
    assert sorted(message_ids(gw.invocations("broken"))) == sorted(ids)
    bodies = sorted(json.loads(record.body)["n"] for record in gw.invocations("echo"))
    assert bodies == [1, 2, 3, 4]
    out = capsys.readouterr().out
    for message_id in ids:
        assert f"{message_id} -> echo.openfaas-fn: HTTP 200" in out
        assert f"{message_id} -> broken.openfaas-fn: FAILED" in out


@pytest.mark.usefixtures("trio_only")
async def test_trio_connector_stops_cleanly_on_sigterm() -> None:
    gw = FakeGateway()
    gw.add_function("echo", topics=["orders"])
    gw.set_fault("echo", latency=0.2)  # messages are in flight when the signal comes
    outcomes: Counter[str] = Counter()

    async def connector() -> None:
        outcomes.update(
            await trio_connector.run(example_config(url), topic="orders", interval=0.02)
        )

    with anyio.fail_after(10):
        async with gw.serve() as url, anyio.create_task_group() as tg:
            tg.start_soon(connector)
            while len(gw.invocations()) < 3:  # the signal receiver is in place by now
                await anyio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
    # run() has returned: every message submitted before the signal got its result.
    assert outcomes["ok"] >= 3
    assert outcomes == Counter({"ok": len(gw.invocations("echo"))})
