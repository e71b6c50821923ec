"""`AsyncController`: the lifecycle and the public API; the data path is `Dispatcher`'s."""

from __future__ import annotations

import enum
import functools
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, final

import anyio
import attrs

from ._async_invoke import AsyncInvocations
from ._callbacks import callback_headers
from ._discovery import Discovery
from ._dispatch import Dispatcher
from ._drain import Drain
from ._errors import ControllerStateError, DiscoveryError, MissingExtraError, only_exception
from ._fastpath import FastInvoker
from ._http import open_client
from ._invoke import HttpxInvoker, Invoker
from ._refresh import Refresher
from ._results import InvocationResult, ResultHub, ResultStream
from ._runtime import current_runtime
from ._slots import Slots
from ._stats import ControllerStats, Counts
from ._workers import WorkerPool

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Mapping, Sequence

    import httpx
    from opentelemetry.trace import TracerProvider
    from prometheus_client.registry import Collector, CollectorRegistry
    from typing_extensions import Self

    from ._callback_app import CallbackApp
    from ._callbacks import CallbackStats, PendingInvocation
    from ._config import ControllerConfig
    from ._dispatch import Job
    from ._message import Body
    from ._policy import FunctionPolicy
    from ._runtime import Runtime
    from ._tracing import Tracer

__all__ = ["AsyncController", "ControllerStats"]


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


_RUNNING: Final = _State.RUNNING  # the hot path's check: a plain name is ten times quicker


@final
class AsyncController(anyio.AsyncContextManagerMixin):
    """Routes messages to the OpenFaaS functions whose ``topic`` annotation names their topic.

    Use it as ``async with AsyncController(config) as controller:``. Entering builds the first
    topic map (retrying until ``startup_timeout``) and starts the background refresh; leaving
    drains submitted invocations (up to ``drain_timeout``), ends every results stream and closes
    the HTTP client. A controller is single-use.

    ``transport`` replaces the HTTP transport for lookups and invocations alike: pass an
    ``httpx.MockTransport``, ``FakeGateway.transport()`` or any ``httpx.AsyncBaseTransport``.

    ``on_startup_retry(error, attempt, delay)`` is called after each failed lookup while
    entering: the `DiscoveryError`, the attempt's number (1 for the first) and the seconds until
    the next one; use it to tell a person what is happening. It must not block.

    ``metrics``: ``True`` registers the controller's Prometheus metrics with prometheus-client's
    default registry while it runs, a ``CollectorRegistry`` with that one (needs
    ``aioconnector[prometheus]``; see `metrics_registry` and `serve_health`). ``tracing``:
    ``True`` makes OpenTelemetry spans with the global tracer provider, a ``TracerProvider``
    with that one (needs ``aioconnector[otel]``). Off, neither is imported nor costs anything.
    """

    def __init__(
        self,
        config: ControllerConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_startup_retry: Callable[[DiscoveryError, int, float], None] | None = None,
        metrics: bool | CollectorRegistry = False,
        tracing: bool | TracerProvider = False,
    ) -> None:
        if on_startup_retry is not None and not callable(on_startup_retry):
            raise TypeError(f"on_startup_retry must be callable, got {on_startup_retry!r}")
        self._config = config
        self._transport = transport
        self._on_startup_retry = on_startup_retry
        self._slots = Slots(config.max_concurrency)
        self._hub = ResultHub(config.result_buffer)
        self._drain = Drain()  # shutdown's bookkeeping: messages in progress
        self._counts = Counts()
        self._dispatch = Dispatcher(config, self._slots, self._hub, self._drain, self._counts)
        self._async = AsyncInvocations(
            config, slots=self._slots, hub=self._hub, counts=self._counts, dispatch=self._dispatch
        )
        self._registry: CollectorRegistry | None = None
        self._collector: Collector | None = None
        if metrics is not False:
            self._registry, self._collector = _metrics(self, metrics)
            self._dispatch.enable_metrics()
        self._tracer: Tracer | None = None  # the traced path's (`_tracing`), when tracing
        if tracing is not False:
            self._tracer = _make_tracer(config, tracing)
            self.invoke = self._traced_invoke  # type: ignore[method-assign]
            self.submit = self._traced_submit  # type: ignore[method-assign]
        self._state: _State
        self._set_state(_State.NEW)
        self._session: _Session | None = None  # what exists only while running

    # -- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self, None]:
        if self._state is not _State.NEW:
            raise ControllerStateError(
                "an AsyncController can be entered only once; create a new one"
            )
        self._set_state(_State.STARTING)
        error: BaseException | None = None
        if self._collector is not None:
            assert self._registry is not None  # noqa: S101 - set together
            self._registry.register(self._collector)  # a clash raises ValueError, naming it
        try:
            try:
                async with (
                    open_client(self._config, self._transport) as client,
                    anyio.create_task_group() as tg,
                ):
                    discovery = Discovery(client, self._config)
                    dispatch = self._dispatch
                    refresher = Refresher(
                        discovery, dispatch, self._counts, interval=self._config.rebuild_interval
                    )
                    refresher.install(await discovery.fetch_at_startup(self._on_startup_retry))
                    runtime = current_runtime()
                    invoker = self._invoker_for(client, runtime)
                    dispatch.start(invoker, runtime)
                    async_route = attrs.evolve(self._config, async_invocation=True)
                    await self._async.start(
                        tg, self._invoker_for(client, runtime, async_route), runtime
                    )
                    run_job = functools.partial(dispatch.fan_out, holding=True)  # no wrapper frame
                    workers = WorkerPool(runtime, run_job, self._config.max_concurrency)
                    await tg.start(workers.run)
                    session = _Session(invoker=invoker, refresher=refresher, workers=workers)
                    self._session = session
                    refresh_scope = await tg.start(refresher.run_forever)
                    tg.start_soon(self._hub.watch)  # returns when the hub closes, at shutdown
                    self._set_state(_State.RUNNING)
                    try:
                        yield self
                    finally:
                        await self._shutdown(session, refresh_scope)
                        with anyio.CancelScope(shield=True):
                            await invoker.aclose()
            except BaseExceptionGroup as group:
                error = only_exception(group)
                if error is None:
                    raise
            if error is not None:
                raise error  # outside `except`: its own __cause__ and __context__ stay
        finally:
            self._set_state(_State.CLOSED)
            self._hub.close()
            if self._collector is not None and self._registry is not None:
                self._registry.unregister(self._collector)

    def _set_state(self, state: _State) -> None:
        self._state = state
        # The data path checks one attribute for each message: None while running.
        refusal = None
        if state in (_State.NEW, _State.STARTING):
            refusal = (
                "the controller is not running: use it inside `async with AsyncController(...)`"
            )
        elif state is not _RUNNING:
            refusal = f"the controller is {state.value}; no new messages are accepted"
        self._dispatch.refusal = refusal

    def _invoker_for(
        self, client: httpx.AsyncClient, runtime: Runtime, config: ControllerConfig | None = None
    ) -> Invoker:
        # A transport given by the user is used as it is, for invocations too (MockTransport,
        # respx, proxies, custom TLS); otherwise invocations take the lean HTTP/1.1 pool,
        # twenty to seventy times cheaper per call than httpx's, and lookups stay on httpx.
        config = config or self._config
        invoker: Invoker
        if self._transport is not None:
            invoker = HttpxInvoker(client, config)
        else:
            invoker = FastInvoker(config, runtime)
        if self._tracer is not None:
            invoker = self._tracer.wrap(invoker, config)
        return invoker

    async def _shutdown(self, session: _Session, refresh_scope: anyio.CancelScope) -> None:
        self._set_state(_State.CLOSING)
        with anyio.CancelScope(shield=True):
            deadline = anyio.current_time() + self._config.drain_timeout
            await self._drain.drain(self._config.drain_timeout, session.invoker.abort)
            await self._async.shutdown(deadline)  # outstanding callbacks: the time left
            refresh_scope.cancel()
            self._dispatch.stop()
            session.workers.close()
            self._hub.close()  # wakes publishers blocked on a subscriber that stopped reading

    # -- the public API ----------------------------------------------------------------------

    async def invoke(
        self,
        topic: str,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        context: object = None,
    ) -> Sequence[InvocationResult]:
        """Invoke every function subscribed to ``topic`` concurrently and return their results.

        The results (one per matched function, in address order, empty when nothing matched)
        are also published to every results stream. Failures are results, not exceptions.
        Cancelling the call cancels its requests.
        """
        dispatch = self._dispatch
        first, functions = dispatch.accept(topic, body, headers, context)
        drain = self._drain
        if len(functions) != 1:
            if not functions:
                return ()
            drain.enter()
            return await dispatch.fan_out((first, functions))
        # One function, the usual case: `fan_out`'s work without its frame, and the drain's
        # enter() and leave() inlined (two method calls cost 0.7% of an invocation's CPU).
        drain.busy += 1
        try:
            if not self._slots.try_acquire():
                await self._slots.acquire()
            return (await dispatch.run(first),)
        finally:
            drain.busy -= 1
            if drain.busy == 0 and drain.idle is not None:
                drain.idle.set()

    async def submit(
        self,
        topic: str,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        context: object = None,
    ) -> int:
        """Admit a message and return as soon as capacity is free for its first invocation.

        The invocations run on the controller's worker tasks (started as needed, at most
        ``max_concurrency``, kept until exit); their results go to the results streams.
        Returns how many functions matched (0: nothing will be invoked).
        """
        dispatch = self._dispatch
        job = dispatch.accept(topic, body, headers, context)
        if not job[1]:
            return 0
        if dispatch.waiting_full:
            await dispatch.wait_for_room()
        await self._slots.acquire()
        session = self._session
        if session is None or self._state is not _RUNNING:
            self._slots.release()
            raise ControllerStateError("the controller began shutting down before admission")
        self._drain.busy += 1  # Drain.enter(), inlined: a method call costs 0.3% here
        session.workers.put(job)
        return len(job[1])

    async def invoke_async(
        self,
        topic: str,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        context: object = None,
    ) -> tuple[PendingInvocation, ...]:
        """Invoke every function subscribed to ``topic`` asynchronously (``/async-function/``)
        and return one `PendingInvocation` per function (in address order; empty when nothing
        matched) once the gateway has accepted each request.

        ``await pending.result()`` gives the function's result when its callback arrives; the
        result also goes to every results stream. A request the gateway refuses (anything but
        202) is a failed result at once. Needs a callback receiver: ``callback_listen`` (the
        built-in server) or ``callback_public_url`` where `callback_app` is mounted. Waits
        while ``max_pending_async`` invocations await their callbacks. ``X-Call-Id`` and
        ``X-Callback-Url`` are set for each call and cannot be given in ``headers``.
        """
        return await self._async.invoke(topic, body, headers, context)

    @property
    def callback_app(self) -> CallbackApp:
        """The callback receiver as a plain ASGI app, to mount in the web application that
        serves ``callback_public_url`` (e.g. ``app.mount("/callbacks", controller.callback_app)``
        in FastAPI or Starlette). It must run in the controller's event loop."""
        return self._async.app

    def handle_callback(self, path: str, headers: Mapping[str, str], body: bytes) -> int:
        """Hand over one callback received by a web framework that is not ASGI (aiohttp):
        its request path, headers and body. Returns the HTTP status to answer with (200, or
        a 4xx when the callback was rejected); it never waits."""
        pairs = [(str(name), str(value)) for name, value in headers.items()]
        return self._async.registry.receive(path, callback_headers(pairs), body).status

    @property
    def callback_address(self) -> tuple[str, int] | None:
        """The ``(host, port)`` the built-in callback server is bound to (the port chosen when
        ``callback_listen`` gave 0); ``None`` when it is not running."""
        return self._async.address

    def callback_stats(self) -> CallbackStats:
        """Counters of the callbacks received, accepted and rejected, and the invocations
        still awaiting theirs."""
        return self._async.registry.stats()

    # The traced path: `invoke` and `submit` when ``tracing`` is on. Each invocation carries
    # the caller's trace context (`TracedInvocation.trace`) to the worker that sends it, and the
    # traced invoker makes a CLIENT span per request.

    async def _traced_invoke(
        self,
        topic: str,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        context: object = None,
    ) -> Sequence[InvocationResult]:
        first, functions = self._dispatch.accept(topic, body, headers, context)
        if not functions:
            return ()
        assert self._tracer is not None  # noqa: S101 - set with this method
        self._drain.enter()
        return await self._dispatch.fan_out((self._tracer.traced(first), functions))

    async def _traced_submit(
        self,
        topic: str,
        body: Body,
        *,
        headers: Mapping[str, str] | None = None,
        context: object = None,
    ) -> int:
        dispatch = self._dispatch
        first, functions = dispatch.accept(topic, body, headers, context)
        if not functions:
            return 0
        assert self._tracer is not None  # noqa: S101 - set with this method
        job = (self._tracer.traced(first), functions)
        if dispatch.waiting_full:
            await dispatch.wait_for_room()
        await self._slots.acquire()
        session = self._session
        if session is None or self._state is not _RUNNING:
            self._slots.release()
            raise ControllerStateError("the controller began shutting down before admission")
        self._drain.enter()
        session.workers.put(job)
        return len(job[1])

    def results(self) -> ResultStream:
        """Subscribe to every result produced from now on.

        Use under ``async with``; iterate with ``async for``. While this stream's buffer
        (``result_buffer``) is full, the invocations whose results it has not taken wait,
        holding their slots (other streams still get those results at once): nothing is
        dropped, so keep reading, or close the stream.
        """
        return self._hub.subscribe()

    def topics(self) -> frozenset[str]:
        """The topics currently routed to at least one function: the topics of the functions'
        annotations, as written (with a wildcard ``topic_matching``, patterns included)."""
        return self._dispatch.topic_map.topics()

    def functions_for(self, topic: str) -> tuple[str, ...]:
        """The addresses (``name.namespace``) of the functions a message on ``topic`` invokes,
        sorted: with a wildcard ``topic_matching``, those whose annotation names ``topic`` and
        those with a pattern that matches it (a pattern given here is matched as a plain
        topic: ``*`` is then just a token)."""
        return self._dispatch.topic_map.functions_for(topic)

    def policy_for(self, function: str) -> FunctionPolicy:
        """How ``function`` (an address, as `functions_for` gives) is invoked: the config's
        retry policy, timeout and limits, overridden by the function's annotations as of the
        last topic-map refresh. Its live state (adaptive limit, in flight, gate) is in
        ``stats().per_function``."""
        if not isinstance(function, str):
            raise TypeError(f"function must be a str (an address), got {function!r}")
        return self._dispatch.policy_for(function)

    async def refresh(self) -> None:
        """Rebuild the topic map now. On failure the old map stays and the error is raised."""
        if self._session is None or self._state is not _State.RUNNING:
            raise ControllerStateError(f"cannot refresh: the controller is {self._state.value}")
        await self._session.refresher.refresh()

    def stats(self) -> ControllerStats:
        """A snapshot of the counters."""
        return self._counts.snapshot(
            in_flight=self._slots.borrowed,
            streams_full=self._hub.streams_full,
            topic_map=self._dispatch.topic_map,
            per_function=self._dispatch.function_states(),
        )

    @property
    def config(self) -> ControllerConfig:
        """The configuration this controller was created with."""
        return self._config

    @property
    def running(self) -> bool:
        """Whether it accepts messages: entered, and not shutting down."""
        return self._state is _RUNNING

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        """The Prometheus registry its metrics are registered with while it runs (``None``
        when ``metrics`` is off): serve it with ``prometheus_client.generate_latest``."""
        return self._registry


def _metrics(
    controller: AsyncController, metrics: bool | CollectorRegistry
) -> tuple[CollectorRegistry, Collector]:
    if metrics is not True and not callable(getattr(metrics, "register", None)):
        raise TypeError(
            f"metrics must be a bool or a prometheus_client CollectorRegistry, got {metrics!r}"
        )
    try:
        from prometheus_client import REGISTRY  # noqa: PLC0415 - the extra, only when asked

        from ._prometheus import ControllerCollector  # noqa: PLC0415
    except ImportError as exc:
        raise MissingExtraError(
            "metrics need prometheus-client, which is not installed: "
            "pip install 'aioconnector[prometheus]'"
        ) from exc
    registry = REGISTRY if metrics is True else metrics
    assert not isinstance(registry, bool)  # noqa: S101 - narrowed above
    return registry, ControllerCollector(controller)


def _make_tracer(config: ControllerConfig, tracing: bool | TracerProvider) -> Tracer:
    if tracing is not True and not callable(getattr(tracing, "get_tracer", None)):
        raise TypeError(
            f"tracing must be a bool or an opentelemetry TracerProvider, got {tracing!r}"
        )
    try:
        from ._tracing import Tracer  # noqa: PLC0415 - opentelemetry, only when asked
    except ImportError as exc:
        raise MissingExtraError(
            "tracing needs opentelemetry-api, which is not installed: "
            "pip install 'aioconnector[otel]'"
        ) from exc
    return Tracer(config, None if isinstance(tracing, bool) else tracing)


@attrs.frozen
class _Session:
    invoker: Invoker
    refresher: Refresher
    workers: WorkerPool[Job]
