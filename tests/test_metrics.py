"""Prometheus metrics: read from the controller's counters, scraped over HTTP, never at odds
with stats(); the health endpoint's probes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aioconnector import (
    AsyncController,
    ControllerConfig,
    InvocationResult,
    RetryPolicy,
    Settlement,
    SourceMessage,
    run_source,
    serve_health,
)
from aioconnector._health import READY_AFTER_INTERVALS
from aioconnector.testing import FakeGateway

from .helpers import Wire

ROOT = Path(__file__).parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels; parsed by prometheus-client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


def fast_retries() -> RetryPolicy:
    return RetryPolicy(attempts=2, initial_delay=0.0, max_delay=0.0, jitter=False)


async def test_a_real_scrape_agrees_with_stats(wire: Wire) -> None:
    wire.gateway.add_function("good", topics="orders,mixed")
    wire.gateway.add_function("bad", topics="mixed")
    wire.gateway.set_fault("bad", status=503)  # retried once, then the result
    registry = CollectorRegistry()
    transport = None if wire.transport is None else wire.transport()
    config = ControllerConfig(gateway_url=wire.url, startup_timeout=5.0, retry=fast_retries())
    async with (
        AsyncController(config, transport=transport, metrics=registry) as ctrl,
        anyio.create_task_group() as tg,
    ):
        assert ctrl.metrics_registry is registry
        port = await tg.start(serve_health, ctrl, 0)
        await ctrl.invoke("orders", b"{}")
        await ctrl.invoke("mixed", b"{}")
        await ctrl.invoke("nobody", b"{}")
        await ctrl.invoke(f"topic-{'x' * 40}", b"{}")  # unmatched: no label of its own
        with pytest.raises(ValueError, match="topic"):
            await ctrl.invoke("bad\ntopic", b"{}")
        response = await scrape(port)
        stats = ctrl.stats()
        tg.cancel_scope.cancel()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = parse(response.text)
    messages = "aioconnector_messages_total"
    assert value(samples, messages, topic="orders", outcome="matched") == 1
    assert value(samples, messages, topic="mixed", outcome="matched") == 1
    assert value(samples, messages, topic="unmatched", outcome="unmatched") == 2
    assert value(samples, messages, topic="unmatched", outcome="invalid") == 1
    topics = {dict(labels)["topic"] for name, labels in samples if name == messages}
    assert topics == {"orders", "mixed", "unmatched"}  # bounded: only routed topics
    # One set of counters: the metrics say what stats() says.
    assert stats.messages == 4
    assert stats.unmatched_messages == 2
    assert stats.invalid_messages == 1
    good, bad = "good.openfaas-fn", "bad.openfaas-fn"
    invocations = "aioconnector_invocations_total"
    assert value(samples, invocations, function_name=good, code="200") == 2
    assert value(samples, invocations, function_name=bad, code="503") == 1
    total = sum(v for (name, _), v in samples.items() if name == invocations)
    assert total == stats.invocations_succeeded + stats.invocations_failed == 3
    assert value(samples, "aioconnector_retries_total", function_name=bad) == 1
    assert value(samples, "aioconnector_retries_total", function_name=good) == 0
    assert stats.retries == 1
    histogram = "aioconnector_invocation_duration_seconds"
    assert value(samples, f"{histogram}_count", function_name=good) == 2
    assert value(samples, f"{histogram}_bucket", function_name=good, le="+Inf") == 2
    assert value(samples, f"{histogram}_sum", function_name=good) > 0
    assert value(samples, "aioconnector_invocations_in_flight") == 0
    assert value(samples, "aioconnector_topic_map_refreshes_total") == stats.refreshes == 1
    assert value(samples, "aioconnector_topic_map_refresh_failures_total") == 0
    assert value(samples, "aioconnector_topic_map_topics") == stats.topics == 2
    assert value(samples, "aioconnector_topic_map_functions") == stats.functions == 2
    assert 0 <= value(samples, "aioconnector_topic_map_age_seconds") < 60
    assert value(samples, "aioconnector_result_streams_full") == 0
    assert value(samples, "aioconnector_function_overloads_total", function_name=bad) == 2
    assert value(samples, "aioconnector_function_requests_in_flight", function_name=good) == 0


async def test_run_source_settlements_are_metrics_and_stats(wire: Wire) -> None:
    wire.gateway.add_function("good", topics="orders")
    registry = CollectorRegistry()
    transport = None if wire.transport is None else wire.transport()
    config = ControllerConfig(gateway_url=wire.url, startup_timeout=5.0)

    async def source() -> AsyncIterator[list[str]]:
        for topic in ("orders", "orders", "nobody", "bad\ntopic"):
            yield [topic]

    async def settle(
        _: list[str], verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        pass

    async with AsyncController(config, transport=transport, metrics=registry) as ctrl:
        await run_source(
            ctrl, source(), convert=lambda t: SourceMessage(topic=t[0], body=b""), settle=settle
        )
        stats = ctrl.stats()
        from prometheus_client import generate_latest

        samples = parse(generate_latest(registry).decode())
    assert stats.settled == {"ack": 2, "unmatched": 1, "invalid": 1}
    assert stats.source_in_flight == 0
    settled = "aioconnector_source_messages_settled_total"
    assert value(samples, settled, settlement="ack") == 2
    assert value(samples, settled, settlement="unmatched") == 1
    assert value(samples, settled, settlement="invalid") == 1
    assert value(samples, "aioconnector_source_messages_in_flight") == 0


async def test_the_collector_leaves_the_registry_at_exit_and_clashes_are_named() -> None:
    gateway = FakeGateway()
    registry = CollectorRegistry()
    config = ControllerConfig(gateway_url="http://gateway.test")
    async with AsyncController(config, transport=gateway.transport(), metrics=registry):
        assert "aioconnector_messages_total" in {
            s.name for f in registry.collect() for s in f.samples
        }
        second = AsyncController(config, transport=gateway.transport(), metrics=registry)
        with pytest.raises(ValueError, match="aioconnector_"):
            async with second:
                pass
    assert list(registry.collect()) == []
    # Sequential controllers may share a registry.
    async with AsyncController(config, transport=gateway.transport(), metrics=registry):
        pass


def test_bad_metrics_and_tracing_arguments_are_named() -> None:
    config = ControllerConfig(gateway_url="http://gateway.test")
    with pytest.raises(TypeError, match="metrics must be"):
        AsyncController(config, metrics="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tracing must be"):
        AsyncController(config, tracing=1)  # type: ignore[arg-type]


async def test_health_probes() -> None:
    gateway = FakeGateway()
    config = ControllerConfig(gateway_url="http://gateway.test", rebuild_interval=60.0)
    source_up = False
    async with (
        AsyncController(config, transport=gateway.transport()) as ctrl,
        anyio.create_task_group() as tg,
    ):
        port = await tg.start(partial(serve_health, ctrl, 0, ready=lambda: source_up))
        assert (await scrape(port, "/healthz")).text == "ok\n"
        not_ready = await scrape(port, "/readyz")
        assert (not_ready.status_code, not_ready.text) == (503, "the source is not connected\n")
        source_up = True
        assert (await scrape(port, "/readyz")).status_code == 200
        # A map older than READY_AFTER_INTERVALS refresh intervals: not ready.
        last = ctrl.stats().last_refresh
        assert last is not None
        ctrl._counts.last_refresh = last.replace(year=last.year - 1)
        stale = await scrape(port, "/readyz")
        assert stale.status_code == 503
        assert f"limit {READY_AFTER_INTERVALS * 60:g}s" in stale.text
        off = await scrape(port, "/metrics")
        assert (off.status_code, off.text.split(":")[0]) == (404, "metrics are off")
        assert (await scrape(port, "/nothing")).status_code == 404
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{port}/healthz"
            assert (await client.post(url, content=b"x")).status_code == 405
            head = await client.head(url)
            assert (head.status_code, head.content) == (200, b"")
            # Keep-alive: several requests on one connection.
            assert [(await client.get(url)).status_code for _ in range(3)] == [200] * 3
        tg.cancel_scope.cancel()
    assert not ctrl.running


async def test_health_port_in_use_is_named() -> None:
    gateway = FakeGateway()
    config = ControllerConfig(gateway_url="http://gateway.test")
    async with (
        AsyncController(config, transport=gateway.transport()) as ctrl,
        anyio.create_task_group() as tg,
    ):
        port = await tg.start(serve_health, ctrl, 0)
        with pytest.raises(OSError, match=f"health port 127.0.0.1:{port}"):
            await serve_health(ctrl, port)
        tg.cancel_scope.cancel()
    with pytest.raises(ValueError, match="port must be"):
        await serve_health(ctrl, 70000)


def test_without_the_extras_nothing_is_imported_and_asking_names_the_extra() -> None:
    """In a fresh interpreter where prometheus_client and opentelemetry cannot be imported."""
    code = """
import sys, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import anyio, aioconnector
from aioconnector import AsyncController, ControllerConfig, MissingExtraError
from aioconnector.testing import FakeGateway
loaded = sorted(m for m in sys.modules if m.startswith(("prometheus", "opentelemetry")))
errors = []
for kw in ({"metrics": True}, {"tracing": True}):
    try:
        AsyncController(ControllerConfig(gateway_url="http://g.test"), **kw)
    except MissingExtraError as exc:
        errors.append(str(exc))
async def main():
    async with AsyncController(ControllerConfig(gateway_url="http://g.test"),
                               transport=FakeGateway().transport()) as c:
        await c.invoke("t", b"")
anyio.run(main)
loaded += sorted(m for m in sys.modules if m.startswith(("prometheus", "opentelemetry")))
print(json.dumps({"loaded": loaded, "errors": errors}))
"""
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
    )
    report = json.loads(out.stdout)
    assert report["loaded"] == []
    assert report["errors"] == [
        "metrics need prometheus-client, which is not installed: "
        "pip install 'aioconnector[prometheus]'",
        "tracing needs opentelemetry-api, which is not installed: pip install 'aioconnector[otel]'",
    ]


async def test_every_metric_the_grafana_dashboard_queries_exists() -> None:
    from aioconnector._prometheus import ControllerCollector

    dashboard = json.loads((ROOT / "examples" / "grafana" / "aioconnector.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\baioconnector_[a-z_]+", target["expr"])
    }
    query = dashboard["templating"]["list"][1]["query"]
    queried |= set(re.findall(r"\baioconnector_[a-z_]+", query))
    config = ControllerConfig(gateway_url="http://gateway.test")
    exposed: set[str] = set()
    for family in ControllerCollector(AsyncController(config)).describe():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }[family.type]
        exposed |= {family.name + suffix for suffix in suffixes}
    assert len(queried) >= 12  # throughput, errors, latency, in flight, map age...
    assert queried <= exposed, sorted(queried - exposed)
