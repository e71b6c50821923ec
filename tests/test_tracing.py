"""OpenTelemetry traces: a CLIENT span per request, its context at the gateway; a CONSUMER span
per run_source message, parented on the context the message carried."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aioconnector import (
    AsyncController,
    ControllerConfig,
    InvocationResult,
    RetryPolicy,
    Settlement,
    SourceMessage,
    run_source,
)

from .helpers import Wire

# A remote parent, as a publisher would have sent it.
REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def controller(wire: Wire, provider: TracerProvider, **config: object) -> AsyncController:
    transport = None if wire.transport is None else wire.transport()
    settings = ControllerConfig(gateway_url=wire.url, startup_timeout=5.0, **config)  # type: ignore[arg-type]
    return AsyncController(settings, transport=transport, tracing=provider)


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def traceparent_ids(value: str) -> tuple[str, str]:
    version, trace_id, span_id, _ = value.split("-")
    assert version == "00"
    return trace_id, span_id


def client_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


async def test_an_invocation_is_a_client_span_whose_context_reaches_the_gateway(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    wire.gateway.add_function("echo", topics="orders")
    tracer = provider.get_tracer("test")
    async with controller(wire, provider) as ctrl:
        with tracer.start_as_current_span("caller") as caller:
            (result,) = await ctrl.invoke("orders", b"{}", headers={"traceparent": "junk"})
    assert result.ok
    (span,) = client_spans(exporter)
    assert span.name == "echo"
    assert span.parent is not None
    assert span.parent.span_id == caller.get_span_context().span_id
    attributes = dict(span.attributes or {})
    assert attributes["faas.invoked_name"] == "echo"
    assert attributes["faas.invoked_provider"] == "openfaas"
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.full"] == f"{wire.url}/function/echo.openfaas-fn"
    assert attributes["server.address"] == "127.0.0.1" or wire.transport is not None
    assert attributes["http.response.status_code"] == 200
    assert "http.request.resend_count" not in attributes
    assert "error.type" not in attributes
    (request,) = wire.gateway.invocations()
    assert request.headers.get_list("traceparent") == [request.headers["traceparent"]]
    assert traceparent_ids(request.headers["traceparent"]) == hex_ids(span)


async def test_each_retry_is_a_span_with_its_resend_count(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    wire.gateway.add_function("flaky", topics="t")
    wire.gateway.set_fault("flaky", status=503, times=1)
    retry = RetryPolicy(attempts=2, initial_delay=0.0, max_delay=0.0, jitter=False)
    async with controller(wire, provider, retry=retry) as ctrl:
        with provider.get_tracer("test").start_as_current_span("caller"):
            (result,) = await ctrl.invoke("t", b"")
        (alone,) = await ctrl.invoke("t", b"")  # no caller span: the resends link back
    assert result.ok
    assert result.attempts == 2
    assert alone.attempts == 1
    first, second, third = sorted(client_spans(exporter), key=lambda s: s.start_time or 0)
    assert third.parent is None
    assert [link.context for link in second.links] == [first.context]
    assert dict(first.attributes or {})["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert dict(second.attributes or {})["http.request.resend_count"] == 1
    assert second.status.status_code is StatusCode.UNSET
    assert first.context is not None
    assert second.context is not None
    assert first.context.trace_id == second.context.trace_id  # one trace: the invocation's
    sent = [traceparent_ids(r.headers["traceparent"]) for r in wire.gateway.invocations()]
    assert sent == [hex_ids(first), hex_ids(second), hex_ids(third)]


async def test_a_submitted_message_keeps_its_callers_context(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    wire.gateway.add_function("a", topics="fan")
    wire.gateway.add_function("b", topics="fan")
    tracer = provider.get_tracer("test")
    async with controller(wire, provider) as ctrl, ctrl.results() as results:
        with tracer.start_as_current_span("producer") as producer:
            assert await ctrl.submit("fan", b"") == 2
        got = [await results.receive() for _ in range(2)]
    assert all(r.ok for r in got)
    spans = client_spans(exporter)
    assert sorted(s.name for s in spans) == ["a", "b"]
    parent_id = producer.get_span_context().span_id
    assert all(s.parent is not None and s.parent.span_id == parent_id for s in spans)


async def test_a_timeout_is_an_error_span(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.set_fault("slow", latency=5.0)
    async with controller(wire, provider, upstream_timeout=0.05) as ctrl:
        (result,) = await ctrl.invoke("t", b"")
    assert result.status is None
    (span,) = client_spans(exporter)
    assert dict(span.attributes or {})["error.type"] == "timeout"
    assert span.status.status_code is StatusCode.ERROR


async def listed(items: Sequence[SourceMessage]) -> AsyncIterator[SourceMessage]:
    for item in items:
        yield item


async def test_a_message_is_a_consumer_span_parented_on_the_context_it_carried(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    wire.gateway.add_function("echo", topics="orders")
    settled: list[Settlement] = []

    async def settle(
        _: SourceMessage, verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        assert trace.get_current_span().is_recording()  # settled inside the message's span
        settled.append(verdict)

    messages = [
        SourceMessage(
            topic="orders", body=b"", message_id="m1", trace_context={"traceparent": TRACEPARENT}
        ),
        SourceMessage(  # a structured-mode CloudEvent carries it in its body
            topic="orders",
            body=json.dumps({"specversion": "1.0", "traceparent": TRACEPARENT}).encode(),
        ),
        SourceMessage(topic="orders", body=b"", headers={"CE-TraceParent": TRACEPARENT}),
        SourceMessage(topic="nobody", body=b"", headers={"traceparent": TRACEPARENT}),
    ]
    async with controller(wire, provider) as ctrl:
        await run_source(
            ctrl, listed(messages), convert=lambda m: m, settle=settle, max_in_flight=1,
            messaging_system="nats",
        )  # fmt: skip
    assert settled == [Settlement.ACK] * 3 + [Settlement.UNMATCHED]
    spans = exporter.get_finished_spans()
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert [s.name for s in consumers] == ["process orders"] * 3 + ["process nobody"]
    requests = iter(wire.gateway.invocations())
    for consumer in consumers:
        assert consumer.parent is not None
        assert f"{consumer.parent.trace_id:032x}" == REMOTE_TRACE
        assert f"{consumer.parent.span_id:016x}" == REMOTE_SPAN
        assert consumer.parent.is_remote
        assert [f"{link.context.span_id:016x}" for link in consumer.links] == [REMOTE_SPAN]
        attributes = dict(consumer.attributes or {})
        assert attributes["messaging.system"] == "nats"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.destination.name"] == consumer.name.split()[1]
        children = [s for s in client_spans(exporter) if s.parent == consumer.context]
        if consumer.name == "process nobody":
            assert attributes["aioconnector.settlement"] == "unmatched"
            assert children == []
            continue
        assert attributes["aioconnector.settlement"] == "ack"
        (child,) = children  # the invocation's span: the message's child
        assert traceparent_ids(next(requests).headers["traceparent"]) == hex_ids(child)
        assert hex_ids(child)[0] == REMOTE_TRACE  # one trace, from the publisher on
    assert dict(consumers[0].attributes or {})["messaging.message.id"] == "m1"


async def test_an_invalid_message_still_gets_its_span_settled(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def settle(*_: object) -> None:
        pass

    message = SourceMessage(
        topic="bad\ntopic", body=b"", trace_context={"traceparent": TRACEPARENT}
    )
    async with controller(wire, provider) as ctrl:
        await run_source(ctrl, listed([message]), convert=lambda m: m, settle=settle)
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {})["aioconnector.settlement"] == "invalid"
    assert span.status.status_code is StatusCode.ERROR


async def test_without_tracing_no_header_is_added(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller() as ctrl:
        await ctrl.invoke("t", b"")
    (request,) = wire.gateway.invocations()
    assert "traceparent" not in request.headers


async def test_an_asynchronous_invocation_is_traced_on_its_own_route(
    wire: Wire, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with controller(wire, provider, callback_listen="127.0.0.1:0") as ctrl:
        with anyio.fail_after(10):
            (pending,) = await ctrl.invoke_async("t", b"hello")
            assert (await pending.result()).ok
    (span,) = client_spans(exporter)
    assert dict(span.attributes or {})["url.full"] == f"{wire.url}/async-function/echo.openfaas-fn"
    (request,) = wire.gateway.invocations()
    assert traceparent_ids(request.headers["traceparent"]) == hex_ids(span)
