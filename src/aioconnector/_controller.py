"""`AsyncController`: owns the HTTP client, the background refresh, the limiter and the results."""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import sys
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final, final

import anyio
import attrs

from ._backend import loop_clock, running_asyncio
from ._discovery import Discovery
from ._errors import (
    ControllerStateError,
    DiscoveryError,
    InvocationCancelledError,
    only_exception,
)
from ._fastpath import FastInvoker
from ._http import open_client
from ._invoke import HttpxInvoker, Invocation, Invoker
from ._message import base_headers, check_topic, coerce_body, merge_headers
from ._results import InvocationResult, ResultHub, ResultStream
from ._slots import Slots
from ._topics import TopicMap
from ._workers import WorkerPool

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Mapping, Sequence

    import httpx
    from anyio.abc import TaskStatus
    from typing_extensions import Self

    from ._config import ControllerConfig
    from ._message import Body

__all__ = ["AsyncController", "ControllerStats"]

logger = logging.getLogger("aioconnector")

# After drain_timeout, cancelled invocations get this long to hand their results to subscribers.
_CANCEL_GRACE = 5.0
_REFRESH_RETRY_FIRST = 1.0
_TOPIC_HEADERS_CACHE = 1024  # routed topics whose merged headers are kept (all dropped when full)


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


_RUNNING: Final = _State.RUNNING  # the hot path's check: a plain name is ten times quicker


@attrs.frozen(kw_only=True)
class ControllerStats:
    """A snapshot of the controller's counters, from :meth:`AsyncController.stats`."""

    messages: int
    """Messages accepted by ``invoke``/``submit`` (matched or not)."""
    unmatched_messages: int
    """Accepted messages whose topic matched no function (no invocation was made)."""
    invocations_started: int
    invocations_succeeded: int
    invocations_failed: int
    """Invocations whose result was not ok (error statuses, timeouts, cancellations...)."""
    retries: int
    """Requests made again after a retryable failure (see ``RetryPolicy``)."""
    in_flight: int
    """Invocations holding a concurrency slot right now (at most ``max_concurrency``); an
    invocation keeps its slot until its result was handed to every results stream."""
    streams_full: int
    """Results streams that are full while invocations wait to hand them a result (holding
    their slots). The other streams are not held back: they get every result at once."""
    topics: int
    functions: int
    refreshes: int
    """Successful topic-map builds, the first one included."""
    refresh_failures: int
    last_refresh: datetime | None
    """When the topic map was last built successfully (UTC)."""
    last_refresh_error: str | None
    """The last refresh failure's message; ``None`` once a refresh succeeds again."""

    def as_dict(self) -> dict[str, int | str | None]:
        """The counters as a JSON-ready dict (``last_refresh`` as an ISO 8601 string)."""
        values = attrs.asdict(self)
        if self.last_refresh is not None:
            values["last_refresh"] = self.last_refresh.isoformat()
        return values


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
    """

    def __init__(
        self,
        config: ControllerConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_startup_retry: Callable[[DiscoveryError, int, float], None] | None = None,
    ) -> None:
        if on_startup_retry is not None and not callable(on_startup_retry):
            raise TypeError(f"on_startup_retry must be callable, got {on_startup_retry!r}")
        self._config = config
        self._transport = transport
        self._on_startup_retry = on_startup_retry
        self._state = _State.NEW
        self._map = TopicMap.EMPTY
        self._slots = Slots(config.max_concurrency)
        self._clock: Callable[[], float] = anyio.current_time  # the loop's own, once running
        self._native = False  # running on asyncio: fan-outs use plain asyncio tasks
        self._hub = ResultHub(config.result_buffer)
        self._base_headers = base_headers(
            {
                "User-Agent": config.user_agent,
                "X-Connector": config.connector_name,
                "Content-Type": config.content_type,
                "X-Callback-Url": config.callback_url if config.async_invocation else None,
            }
        )
        self._session: _Session | None = None  # what exists only while running
        # Shutdown bookkeeping: fan-outs in progress, and the scopes of retry pauses (requests
        # in progress are stopped by the invoker's abort()).
        self._busy = 0
        self._idle: anyio.Event | None = None
        self._cancelling = False
        self._pausing: set[anyio.CancelScope] = set()
        self._topic_headers: dict[str, tuple[tuple[str, str], ...]] = {}
        self._counts = _Counts()

    # -- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self, None]:
        if self._state is not _State.NEW:
            raise ControllerStateError(
                "an AsyncController can be entered only once; create a new one"
            )
        self._state = _State.STARTING
        self._clock = loop_clock()
        self._native = running_asyncio()
        error: BaseException | None = None
        try:
            try:
                async with (
                    open_client(self._config, self._transport) as client,
                    anyio.create_task_group() as tg,
                ):
                    discovery = Discovery(client, self._config)
                    self._install(await discovery.fetch_at_startup(self._on_startup_retry))
                    refresher = _Refresher(self, discovery)
                    invoker = self._invoker_for(client)
                    run_job = functools.partial(self._fan_out, holding=True)  # no wrapper frame
                    workers = WorkerPool(tg, run_job, self._config.max_concurrency)
                    self._session = _Session(invoker=invoker, refresher=refresher, workers=workers)
                    refresh_scope = await tg.start(refresher.run_forever)
                    tg.start_soon(self._hub.watch)  # returns when the hub closes, at shutdown
                    self._state = _State.RUNNING
                    try:
                        yield self
                    finally:
                        await self._shutdown(refresh_scope)
                        with anyio.CancelScope(shield=True):
                            await invoker.aclose()
            except BaseExceptionGroup as group:
                error = only_exception(group)
                if error is None:
                    raise
            if error is not None:
                raise error  # outside `except`: its own __cause__ and __context__ stay
        finally:
            self._state = _State.CLOSED
            self._hub.close()

    def _invoker_for(self, client: httpx.AsyncClient) -> Invoker:
        # A transport given by the user is used as it is, for invocations too (MockTransport,
        # respx, proxies, custom TLS); otherwise invocations take the lean HTTP/1.1 pool,
        # twenty to seventy times cheaper per call than httpx's, and lookups stay on httpx.
        if self._transport is not None:
            return HttpxInvoker(client, self._config)
        return FastInvoker(self._config)

    async def _shutdown(self, refresh_scope: anyio.CancelScope) -> None:
        self._state = _State.CLOSING
        idle = self._idle = anyio.Event()
        with anyio.CancelScope(shield=True):
            if self._busy:
                with anyio.move_on_after(self._config.drain_timeout):
                    await idle.wait()
            if self._busy:
                logger.warning(
                    "drain_timeout=%ss passed with %d message(s) in flight; cancelling them",
                    self._config.drain_timeout,
                    self._busy,
                )
                self._cancelling = True
                if self._session is not None:
                    self._session.invoker.abort()
                for scope in tuple(self._pausing):
                    scope.cancel()
                with anyio.move_on_after(_CANCEL_GRACE):
                    await idle.wait()
            refresh_scope.cancel()
            if self._session is not None:
                self._session.workers.close()
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
        first, functions = self._accept(topic, body, headers, context)
        if len(functions) != 1:
            if not functions:
                return ()
            self._busy += 1
            return await self._fan_out((first, functions))
        # One function, the usual case: `_fan_out`'s work without its frame.
        self._busy += 1
        try:
            if not self._slots.try_acquire():
                await self._slots.acquire()
            return (await self._run(first),)
        finally:
            self._busy -= 1
            if self._busy == 0 and self._idle is not None:
                self._idle.set()

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
        job = self._accept(topic, body, headers, context)
        if not job[1]:
            return 0
        await self._slots.acquire()
        session = self._session
        if session is None or self._state is not _RUNNING:
            self._slots.release()
            raise ControllerStateError("the controller began shutting down before admission")
        self._busy += 1
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
        """The topics currently routed to at least one function."""
        return self._map.topics()

    def functions_for(self, topic: str) -> tuple[str, ...]:
        """The addresses (``name.namespace``) of the functions a message on ``topic`` invokes."""
        return self._map.functions_for(topic)

    async def refresh(self) -> None:
        """Rebuild the topic map now. On failure the old map stays and the error is raised."""
        if self._session is None or self._state is not _State.RUNNING:
            raise ControllerStateError(f"cannot refresh: the controller is {self._state.value}")
        await self._session.refresher.refresh()

    def stats(self) -> ControllerStats:
        """A snapshot of the counters."""
        counts = self._counts
        return ControllerStats(
            messages=counts.messages,
            unmatched_messages=counts.unmatched,
            invocations_started=counts.started,
            invocations_succeeded=counts.succeeded,
            invocations_failed=counts.failed,
            retries=counts.retries,
            in_flight=self._slots.borrowed,
            streams_full=self._hub.streams_full,
            topics=len(self._map.topics()),
            functions=self._map.function_count,
            refreshes=counts.refreshes,
            refresh_failures=counts.refresh_failures,
            last_refresh=counts.last_refresh,
            last_refresh_error=counts.last_refresh_error,
        )

    @property
    def config(self) -> ControllerConfig:
        """The configuration this controller was created with."""
        return self._config

    # -- the data path -----------------------------------------------------------------------

    def _accept(
        self, topic: str, body: Body, headers: Mapping[str, str] | None, context: object
    ) -> tuple[Invocation, tuple[str, ...]]:
        # A topic seen before without extra headers: checked then, its headers merged then.
        merged = self._topic_headers.get(topic) if headers is None and type(topic) is str else None
        cache = False
        if merged is None:
            topic = check_topic(topic)
            merged = merge_headers(self._base_headers, topic, headers)
            cache = headers is None
        payload = body if type(body) is bytes else coerce_body(body)
        if self._state is not _RUNNING:
            raise ControllerStateError(
                "the controller is not running: use it inside `async with AsyncController(...)`"
                if self._state in (_State.NEW, _State.STARTING)
                else f"the controller is {self._state.value}; no new messages are accepted"
            )
        functions = self._map.functions_for(topic)
        self._counts.messages += 1
        if not functions:
            self._counts.unmatched += 1
        elif cache:
            # Only routed topics are kept: they come from the gateway, not from the message
            # source, so a source sending endless distinct topics cannot grow the cache.
            if len(self._topic_headers) >= _TOPIC_HEADERS_CACHE:
                self._topic_headers.clear()
            self._topic_headers[topic] = merged
        # The invocation of the first function; `_for_function` makes the others from it.
        first = Invocation(
            topic=topic,
            function=functions[0] if functions else "",
            body=payload,
            headers=merged,
            context=context,
        )
        return first, functions

    async def _fan_out(
        self, job: tuple[Invocation, tuple[str, ...]], *, holding: bool = False
    ) -> tuple[InvocationResult, ...]:
        """Invoke a message's functions (its first invocation, and the functions' addresses);
        ``holding``: a slot for the first is already taken."""
        first, functions = job
        # Each invocation takes a slot *before* its task starts, so waiting costs no task.
        error: BaseException | None = None
        slots = self._slots
        try:
            if len(functions) == 1:
                if not holding:
                    await slots.acquire()
                holding = False
                return (await self._run(first),)
            if self._native:
                held, holding = holding, False
                return await self._fan_out_tasks(first, functions, held)
            results: list[InvocationResult | None] = [None] * len(functions)
            try:
                async with anyio.create_task_group() as tg:
                    for index, function in enumerate(functions):
                        if not holding:
                            await slots.acquire()
                        holding = False
                        invocation = first if index == 0 else _for_function(first, function)
                        tg.start_soon(self._run_into, results, index, invocation)
            except BaseExceptionGroup as group:
                error = only_exception(group)
                if error is None:
                    raise
            if error is not None:
                raise error
            return tuple(r for r in results if r is not None)
        finally:
            if holding:
                slots.release()
            self._busy -= 1
            if self._busy == 0 and self._idle is not None:
                self._idle.set()

    async def _fan_out_tasks(
        self, first: Invocation, functions: tuple[str, ...], holding: bool
    ) -> tuple[InvocationResult, ...]:
        """On asyncio: every function but the last in a plain asyncio task, the last in this
        one. An anyio task group costs about 25 us per task here, as much as an invocation;
        what it guarantees is kept: an error or a cancellation cancels and awaits the others."""
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[InvocationResult]] = []
        entered: set[int] = set()  # tasks that began: _run gives their slots back itself

        async def run(index: int, invocation: Invocation) -> InvocationResult:
            entered.add(index)
            return await self._run(invocation)

        last = len(functions) - 1
        try:
            for index, function in enumerate(functions):
                if not holding:
                    await self._slots.acquire()
                holding = False
                invocation = first if index == 0 else _for_function(first, function)
                if index < last:
                    tasks.append(loop.create_task(run(index, invocation)))
                else:
                    result = await self._run(invocation)
            return (*[await task for task in tasks], result)
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
            for index, task in enumerate(tasks):
                if index not in entered:
                    self._slots.release()  # cancelled before it began: its slot is ours
                elif not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as lost
            raise

    async def _run_into(
        self, results: list[InvocationResult | None], index: int, invocation: Invocation
    ) -> None:
        results[index] = await self._run(invocation)

    async def _run(self, invocation: Invocation) -> InvocationResult:
        """Invoke one function with a slot already taken; always gives back the slot it holds."""
        holding = True
        clock = self._clock
        try:
            self._counts.started += 1
            started = clock()
            attempt = 0  # requests made so far
            while True:
                session = self._session
                result = None
                if session is not None and not self._cancelling:
                    attempt += 1
                    result = await session.invoker.invoke(invocation)
                if result is None:  # shutdown stopped it, before or during the request
                    result = _cancelled(invocation, clock() - started, attempts=attempt)
                    break
                if result.ok:
                    break  # the usual case, without asking the retry policy
                delay = self._config.retry.delay_before_retry(
                    result, attempt=attempt, elapsed=clock() - started
                )
                if delay is None or self._cancelling:
                    break
                # Wait without a slot, so a retrying invocation never blocks others.
                self._counts.retries += 1
                self._slots.release()
                holding = False
                if not await self._pause(delay):
                    break  # shutdown: keep the last answer
                await self._slots.acquire()
                holding = True
            if attempt > 1 and result.attempts != attempt:
                result = attrs.evolve(result, attempts=attempt, duration=clock() - started)
            if result.ok:
                self._counts.succeeded += 1
            else:
                self._counts.failed += 1
            if self._hub.subscribed:  # else no checkpoint: nothing to hand over
                await self._hub.publish(result)
            return result
        finally:
            if holding:
                self._slots.release()

    async def _pause(self, delay: float) -> bool:
        """Sleep before a retry; False when shutdown cut the sleep short."""
        with anyio.CancelScope() as scope:
            self._pausing.add(scope)
            try:
                await anyio.sleep(delay)
            finally:
                self._pausing.discard(scope)
        return not scope.cancelled_caught

    def _install(self, topic_map: TopicMap) -> None:
        self._map = topic_map  # one assignment: an invocation sees the old map or the new one
        counts = self._counts
        counts.refreshes += 1
        counts.last_refresh = datetime.now(timezone.utc)
        counts.last_refresh_error = None


@attrs.frozen
class _Session:
    invoker: Invoker
    refresher: _Refresher
    workers: WorkerPool[tuple[Invocation, tuple[str, ...]]]


@attrs.define
class _Counts:
    messages: int = 0
    unmatched: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    last_refresh: datetime | None = None
    last_refresh_error: str | None = None


@final
class _Refresher:
    """The background refresh loop, and on-demand refreshes serialised with it."""

    def __init__(self, controller: AsyncController, discovery: Discovery) -> None:
        self._controller = controller
        self._discovery = discovery
        self._lock = anyio.Lock()

    async def refresh(self) -> None:
        controller = self._controller
        async with self._lock:
            try:
                topic_map = await self._discovery.fetch()
            except DiscoveryError as exc:
                controller._counts.refresh_failures += 1
                controller._counts.last_refresh_error = str(exc)
                logger.warning("topic map refresh failed; keeping the last map: %s", exc)
                raise
            controller._install(topic_map)
        logger.debug(
            "topic map rebuilt: %d topic(s), %d function(s)",
            len(topic_map.topics()),
            topic_map.function_count,
        )

    async def run_forever(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        interval = self._controller.config.rebuild_interval
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            delay = interval
            retry = min(_REFRESH_RETRY_FIRST, interval)
            while True:
                await anyio.sleep(delay)
                try:
                    await self.refresh()
                except DiscoveryError:
                    delay, retry = retry, min(retry * 2, interval)  # sooner than usual, backing off
                else:
                    delay, retry = interval, min(_REFRESH_RETRY_FIRST, interval)


def _for_function(first: Invocation, function: str) -> Invocation:
    """The message's invocation of one function (``attrs.evolve`` costs ten times more)."""
    return Invocation(
        topic=first.topic,
        function=function,
        body=first.body,
        headers=first.headers,
        context=first.context,
    )


def _cancelled(invocation: Invocation, duration: float, *, attempts: int) -> InvocationResult:
    return InvocationResult(
        topic=invocation.topic,
        function=invocation.function,
        status=None,
        duration=duration,
        error=InvocationCancelledError(
            f"{invocation.function}: cancelled at shutdown after drain_timeout"
        ),
        attempts=attempts,
        context=invocation.context,
    )
