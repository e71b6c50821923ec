"""OpenTelemetry traces: a CLIENT span per request to the gateway, a CONSUMER span per message.

Imported only when tracing is on (``AsyncController(config, tracing=True)``), and with it
opentelemetry-api (the ``aioconnector[otel]`` extra; never the SDK: the application chooses
and configures one). Without it nothing here runs: the controller's plain `invoke`/`submit`
and invokers are used as they are.

Spans follow the semantic conventions as they stand:

- one CLIENT span per request, not per invocation: HTTP client spans are per request sent,
  with ``http.request.resend_count`` on each retry. It is named after the function, as FaaS
  client spans are, with ``faas.invoked_name`` and ``faas.invoked_provider="openfaas"`` (not
  one of the convention's listed providers, which are clouds), and the HTTP client attributes.
  Its context goes to the gateway as W3C ``traceparent``/``tracestate``, so the function's own
  spans join the trace.
- one CONSUMER span ``process {topic}`` per message of `run_source`, parented on the context
  the message carried and linked to it (the convention's recommendation for a single-message
  process span), with ``messaging.*`` attributes and the settlement; the message's requests
  are its children. ``messaging.system`` is the broker's name (the convention lists
  ``rabbitmq`` but no value for NATS, Redis, MQTT or PostgreSQL).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import quote

import attrs
import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, StatusCode

from ._invoke import Invocation, RequestPlan
from ._message import rekeyed
from ._observe import error_kind
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanContext, TracerProvider

    from ._config import ControllerConfig
    from ._invoke import Invoker
    from ._results import InvocationResult
    from ._source import Settlement, SourceMessage

__all__ = ["TraceState", "TracedInvocation", "Tracer", "TracingInvoker"]

_PROPAGATED: Final = frozenset({"traceparent", "tracestate", "baggage"})


@final
class TraceState:
    """One invocation's trace context (the caller's, captured where it was accepted) and how
    many requests it made, carried in `Invocation.trace` to the task that sends it."""

    __slots__ = ("first", "parent", "requests")

    def __init__(self, parent: Context) -> None:
        self.parent = parent
        self.requests = 0
        # The first request's span: each resend links to it (without a parent span the
        # requests are roots of their own traces; the link ties them together).
        self.first: SpanContext | None = None

    def fork(self) -> TraceState:
        """The same parent, for another function of the message."""
        return TraceState(self.parent)


@attrs.define(kw_only=True)
class TracedInvocation(Invocation):
    """An `Invocation` of the traced path, with its `TraceState` (plain invocations, the
    untraced path's, carry nothing more)."""

    trace: TraceState

    def for_function(self, function: str) -> TracedInvocation:
        """The message's invocation of another function: the same parent, its own count."""
        message_id = self.message_id
        return TracedInvocation(
            topic=self.topic,
            function=function,
            body=self.body,
            headers=self.headers
            if message_id is None
            else rekeyed(self.headers, message_id, function),
            context=self.context,
            message_id=message_id,
            trace=self.trace.fork(),
        )


@final
class Tracer:
    """The controller's traced path: captures contexts, wraps its invoker, makes spans."""

    def __init__(self, config: ControllerConfig, provider: TracerProvider | None) -> None:
        self.tracer = trace.get_tracer("aioconnector", __version__, tracer_provider=provider)

    def traced(self, invocation: Invocation) -> TracedInvocation:
        """``invocation`` with the current context, for the requests that send it."""
        return TracedInvocation(
            topic=invocation.topic,
            function=invocation.function,
            body=invocation.body,
            headers=invocation.headers,
            context=invocation.context,
            message_id=invocation.message_id,
            trace=TraceState(otel_context.get_current()),
        )

    def wrap(self, invoker: Invoker, config: ControllerConfig) -> TracingInvoker:
        """``invoker`` traced; ``config`` is what it was made with (its route and gateway)."""
        return TracingInvoker(invoker, self, config)

    def consume(self, message: SourceMessage, system: str) -> _Consuming:
        """Start the CONSUMER span of ``message``, current until `_Consuming.end`."""
        carrier = _carrier(message)
        extracted = propagate.extract(carrier) if carrier else None
        linked = trace.get_current_span(extracted).get_span_context() if extracted else None
        links = [Link(linked)] if linked is not None and linked.is_valid else None
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
        }
        if message.message_id is not None:
            attributes["messaging.message.id"] = message.message_id
        span = self.tracer.start_span(
            f"process {message.topic}",
            context=extracted,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        return _Consuming(span)


@final
class _Consuming:
    """A message's CONSUMER span, current in this task until `end`."""

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def end(self, settlement: Settlement, results: Sequence[InvocationResult]) -> None:
        span = self._span
        span.set_attribute("aioconnector.settlement", settlement.value)
        failed = [r for r in results if not r.ok]
        if failed or settlement.value == "invalid":
            span.set_status(StatusCode.ERROR, settlement.value)
        otel_context.detach(self._token)
        span.end()


@final
class TracingInvoker:
    """An `Invoker` that wraps another: a CLIENT span per request, its context injected."""

    def __init__(self, inner: Invoker, tracer: Tracer, config: ControllerConfig) -> None:
        self._inner = inner
        self._tracer = tracer.tracer
        base = httpx.URL(RequestPlan.from_config(config).prefix)
        if base.userinfo:  # url.full never carries credentials
            base = base.copy_with(username=None, password=None)
        self._prefix = str(base)
        self._host = base.host
        self._port = base.port or (443 if base.scheme == "https" else 80)
        self.set_timeouts: Callable[[Mapping[str, float | None]], None] = inner.set_timeouts
        self.abort: Callable[[], None] = inner.abort

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        state = getattr(invocation, "trace", None)
        if state is None:  # not made by the traced path: the current context, no resends seen
            state = TraceState(otel_context.get_current())
        resends = state.requests
        state.requests += 1
        function = invocation.function
        attributes: dict[str, Any] = {
            "faas.invoked_name": function.partition(".")[0],
            "faas.invoked_provider": "openfaas",
            "http.request.method": "POST",
            "server.address": self._host,
            "server.port": self._port,
            "url.full": self._prefix + quote(function, safe=""),
        }
        if resends:
            attributes["http.request.resend_count"] = resends
        span = self._tracer.start_span(
            function.partition(".")[0],
            context=state.parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=None if state.first is None else [Link(state.first)],
        )
        if state.first is None:
            state.first = span.get_span_context()
        try:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            result = await self._inner.invoke(_with_context(invocation, carrier))
        except BaseException as exc:  # cancelled: the span ends, marked
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(StatusCode.ERROR)
            span.end()
            raise
        if result.status is not None:
            span.set_attribute("http.response.status_code", result.status)
        if result.error is not None:
            status = result.status
            kind = str(status) if status is not None else error_kind(type(result.error))
            span.set_attribute("error.type", kind)
            span.set_status(StatusCode.ERROR, str(result.error))
        span.end()
        return result


def _with_context(invocation: Invocation, carrier: Mapping[str, str]) -> Invocation:
    """The invocation with the span's trace context as headers (any it had replaced), the
    ``traceparent`` last: the fast path does not cache request heads that end with it."""
    headers = [(n, v) for n, v in invocation.headers if n.lower() not in _PROPAGATED]
    headers += sorted(carrier.items(), key=lambda item: item[0] == "traceparent")
    return Invocation(
        topic=invocation.topic,
        function=invocation.function,
        body=invocation.body,
        headers=tuple(headers),
        context=invocation.context,
    )


def _carrier(message: SourceMessage) -> dict[str, str]:
    """The W3C trace context a message carried: its ``trace_context``, else its headers
    (``traceparent`` or a binary-mode CloudEvent's ``ce-traceparent``), else a
    structured-mode CloudEvent's ``traceparent`` extension in its JSON body."""
    for fields in (message.trace_context, message.headers):
        if fields:
            found = {k.lower(): v for k, v in fields.items()}
            if "traceparent" in found:
                return found
            if "ce-traceparent" in found:
                return {k[3:]: v for k, v in found.items() if k.startswith("ce-")}
    body = message.body
    if isinstance(body, (bytes, bytearray)) and body[:1] == b"{" and b"traceparent" in body:
        try:
            event = json.loads(body)
        except ValueError:
            return {}
        if isinstance(event, dict) and isinstance(event.get("traceparent"), str):
            return {
                k: v for k in ("traceparent", "tracestate") if isinstance(v := event.get(k), str)
            }
    return {}
