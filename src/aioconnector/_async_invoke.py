"""`AsyncInvocations`: ``invoke_async``, from a message to pending invocations and their results.

Each matched function gets a pending entry (a slot of ``max_pending_async``, held until its
result has been published), then one ``POST /async-function/NAME`` with our ``X-Call-Id`` and
its callback URL, holding a ``max_concurrency`` slot only until the gateway answers. The
entry ends with its callback, a refusal (anything but 202), ``callback_timeout``, or shutdown;
its result then goes to the results streams through one publisher task, so a receiver never
waits for a slow stream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, final

import anyio
import attrs

from ._callback_app import CallbackApp
from ._callback_server import CallbackServer
from ._callbacks import CallbackRegistry
from ._config import parse_listen
from ._dispatch import for_function
from ._errors import ControllerStateError, UpstreamStatusError
from ._invoke import Invocation
from ._results import InvocationResult
from ._slots import Slots

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import TaskGroup, TaskStatus
    from anyio.streams.memory import MemoryObjectSendStream

    from ._callbacks import PendingInvocation
    from ._config import ControllerConfig
    from ._dispatch import Dispatcher
    from ._invoke import Invoker
    from ._message import Body
    from ._results import ResultHub
    from ._runtime import Runtime
    from ._stats import Counts

__all__ = ["AsyncInvocations"]

logger = logging.getLogger("aioconnector")

# Ours to set on every async request: a caller's value would break the correlation.
_RESERVED: Final = frozenset({"x-call-id", "x-callback-url"})
# Hosts that mean "every interface": no URL to give the gateway can be made from them.
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind
# After drain_timeout: how long cancelled invocations get to end and be published.
_CANCEL_GRACE: Final = 5.0


@final
class AsyncInvocations:
    """The async path of one controller: its pending entries, receiver and publisher."""

    def __init__(
        self,
        config: ControllerConfig,
        *,
        slots: Slots,
        hub: ResultHub,
        counts: Counts,
        dispatch: Dispatcher,
    ) -> None:
        listen = config.callback_listen
        public = config.callback_public_url
        if listen is not None and public is None and parse_listen(listen)[0] in _WILDCARD_HOSTS:
            raise ValueError(
                f"callback_listen={listen!r} listens on every interface: set "
                "callback_public_url to the URL the gateway reaches it by"
            )
        self._config = config
        self._slots = slots
        self._hub = hub
        self._counts = counts
        self._dispatch = dispatch
        self._pending_slots = Slots(config.max_pending_async)
        self.registry = CallbackRegistry(
            max_body=config.max_response_bytes,
            timeout=config.callback_timeout,
            finish=self._finished,
        )
        self.registry.base_url = config.callback_public_url
        self.app = CallbackApp(self.registry)
        self.address: tuple[str, int] | None = None  # the built-in server's, once bound
        self._invoker: Invoker | None = None
        self._queue: MemoryObjectSendStream[InvocationResult] | None = None
        self._published: anyio.Event | None = None  # made by start(): it needs the loop
        self._scopes: list[anyio.CancelScope] = []  # the server's and the expiry loop's
        self._pauses: set[anyio.CancelScope] = set()  # retry waits
        self._busy = 0  # invoke_async calls in progress
        self._idle: anyio.Event | None = None  # made by shutdown; set when nothing is left
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, tg: TaskGroup, invoker: Invoker, runtime: Runtime) -> None:
        """Start the publisher, the expiry loop and (with ``callback_listen``) the server."""
        self._invoker = invoker
        self.registry.clock = runtime.clock
        await tg.start(self._publish)
        if self._config.callback_timeout is not None:
            await tg.start(self._expire)
        if self._config.callback_listen is not None:
            host, port = parse_listen(self._config.callback_listen)
            server = CallbackServer(self.registry, host or None, port)
            self.address = await tg.start(self._serve, server)
            if self.registry.base_url is None:
                bound_host, bound_port = self.address
                netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
                self.registry.base_url = f"http://{netloc}:{bound_port}"

    async def _serve(
        self, server: CallbackServer, *, task_status: TaskStatus[tuple[str, int]]
    ) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            await server.run(task_status=task_status)

    async def _expire(self, *, task_status: TaskStatus[None]) -> None:
        """End the entries whose ``callback_timeout`` passed, waking at the earliest deadline
        (the oldest entry's: all have the same timeout)."""
        registry = self.registry
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            task_status.started()
            while True:
                changed = registry.changed = anyio.Event()
                due = registry.expire(registry.clock())
                with anyio.move_on_at(float("inf") if due is None else due):
                    await changed.wait()

    async def _publish(self, *, task_status: TaskStatus[None]) -> None:
        """Hand each ended invocation's result to the results streams, then free its slot.
        The queue is made and closed here, so that it is closed however the task ends."""
        send, receive = anyio.create_memory_object_stream[InvocationResult](
            self._config.max_pending_async  # one result per entry at most: never full
        )
        published = self._published = anyio.Event()
        self._queue = send
        try:
            with send, receive:
                task_status.started()
                async for result in receive:
                    try:
                        await self._hub.publish(result)
                    finally:
                        self._pending_slots.release()
        finally:
            published.set()

    def _finished(self, result: InvocationResult) -> None:
        """An entry ended (the registry's hook; never waits)."""
        if result.ok:
            self._counts.succeeded += 1
        else:
            self._counts.failed += 1
        queued = False
        if self._hub.subscribed and self._queue is not None:
            try:
                self._queue.send_nowait(result)
                queued = True
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                logger.warning("the result of %s was not published: shutdown", result.function)
        if not queued:
            self._pending_slots.release()
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle is not None and not self._busy and not self.registry.pending:
            self._idle.set()

    async def shutdown(self, deadline: float) -> None:
        """Wait until ``deadline`` (the controller's clock) for sends and callbacks; then end
        what is left as cancelled, publish, and stop. Called once, shielded."""
        self._closing = True
        registry = self.registry
        self._idle = anyio.Event()
        self._check_idle()
        with anyio.move_on_at(deadline):
            await self._idle.wait()
        if self._busy or registry.pending:
            logger.warning(
                "drain_timeout passed with %d async invocation(s) awaiting their callback; "
                "cancelling them",
                len(registry.pending),
            )
            if self._invoker is not None:
                self._invoker.abort()
            for scope in tuple(self._pauses):
                scope.cancel()
            for entry in tuple(registry.pending.values()):
                registry.cancel(entry, "cancelled at shutdown after drain_timeout, no callback")
            with anyio.move_on_after(_CANCEL_GRACE):
                await self._idle.wait()
        if self._queue is not None and self._published is not None:
            self._queue.close()
            with anyio.move_on_after(_CANCEL_GRACE):
                await self._published.wait()
        for scope in self._scopes:
            scope.cancel()
        if self._invoker is not None:
            await self._invoker.aclose()

    # -- invoking ----------------------------------------------------------------------------

    async def invoke(
        self, topic: str, body: Body, headers: Mapping[str, str] | None, context: object
    ) -> tuple[PendingInvocation, ...]:
        if headers is not None:
            reserved = sorted(name for name in headers if str(name).lower() in _RESERVED)
            if reserved:
                raise ValueError(
                    f"headers {reserved} are set by invoke_async for each call; leave them out"
                )
        first, functions = self._dispatch.accept(topic, body, headers, context)
        if self.registry.base_url is None:
            raise ControllerStateError(
                "invoke_async needs a callback receiver: set callback_listen (built-in "
                "server), or callback_public_url (the URL where callback_app is mounted)"
            )
        if not functions:
            return ()
        self._busy += 1
        try:
            if len(functions) == 1:
                return (await self._one(first),)
            entries: list[PendingInvocation | None] = [None] * len(functions)
            async with anyio.create_task_group() as tg:
                for index, function in enumerate(functions):
                    invocation = first if index == 0 else for_function(first, function)
                    tg.start_soon(self._one_into, entries, index, invocation)
            return tuple(entry for entry in entries if entry is not None)
        finally:
            self._busy -= 1
            self._check_idle()

    async def _one_into(
        self, entries: list[PendingInvocation | None], index: int, invocation: Invocation
    ) -> None:
        entries[index] = await self._one(invocation)

    async def _one(self, invocation: Invocation) -> PendingInvocation:
        """Register one invocation, then send it until the gateway accepts or refuses it."""
        await self._pending_slots.acquire()  # backpressure: max_pending_async outstanding
        registry = self.registry
        entry = registry.register(invocation)  # from here on, the entry owns the slot
        if self._closing or self._invoker is None:
            registry.cancel(entry, "cancelled at shutdown before it was sent")
            return entry
        wire = Invocation(
            topic=invocation.topic,
            function=invocation.function,
            body=invocation.body,
            headers=(
                *(pair for pair in invocation.headers if pair[0].lower() not in _RESERVED),
                ("X-Call-Id", entry.call_id),
                ("X-Callback-Url", registry.url_for(entry.call_id)),
            ),
            context=invocation.context,
        )
        try:
            result = await self._send(wire)
        except BaseException:
            registry.cancel(entry, "invoke_async was cancelled while sending")
            raise
        if result.status != 202 or result.error is not None:
            error = result.error or UpstreamStatusError(result.status or 0)
            refused = attrs.evolve(result, error=error, call_id=entry.call_id)
            registry.complete(entry, refused, by_callback=False)  # unless a callback came first
        return entry

    async def _send(self, wire: Invocation) -> InvocationResult:
        """The gateway's answer, with retries as the `RetryPolicy` says; a concurrency slot
        is held for each request only."""
        assert self._invoker is not None  # noqa: S101 - checked by the caller
        clock = self.registry.clock
        self._counts.started += 1
        started = clock()
        attempt = 0
        while True:
            await self._slots.acquire()
            try:
                attempt += 1
                result = await self._invoker.invoke(wire)
            finally:
                self._slots.release()
            if result.status == 202 or self._closing:
                break
            delay = self._config.retry.delay_before_retry(
                result, attempt=attempt, elapsed=clock() - started
            )
            if delay is None:
                break
            self._counts.retries += 1
            with anyio.CancelScope() as pause:
                self._pauses.add(pause)
                try:
                    await anyio.sleep(delay)
                finally:
                    self._pauses.discard(pause)
            if pause.cancelled_caught:
                break
        if attempt > 1:
            result = attrs.evolve(result, attempts=attempt, duration=clock() - started)
        return result
