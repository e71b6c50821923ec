"""What one invocation produced, and the streams that carry results to subscribers."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, final

import anyio
import attrs

from ._errors import ControllerStateError, InvocationError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from typing_extensions import Self

__all__ = ["InvocationResult", "ResultHub", "ResultStream"]

logger = logging.getLogger("aioconnector")


@attrs.frozen(kw_only=True)
class InvocationResult:
    """The outcome of invoking one function for one message.

    Per-call failures (timeouts, connection errors, non-2xx answers, shutdown) are values here:
    ``error`` is set and ``ok`` is false. ``invoke()`` never raises for them.
    """

    topic: str
    """The message's topic."""
    function: str
    """The function's address on the gateway, ``name.namespace`` (or ``name``)."""
    status: int | None
    """The HTTP status the gateway answered with; ``None`` when no answer arrived."""
    body: bytes = b""
    """The response body (empty when no answer arrived)."""
    headers: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)
    """Response headers, names lower-cased; repeated headers joined with ``", "``."""
    duration: float = 0.0
    """Seconds from the start of the first attempt to the end of the last."""
    error: InvocationError | None = attrs.field(default=None, eq=False, hash=False)
    """Why the invocation did not succeed, or ``None``."""
    call_id: str | None = None
    """The gateway's ``X-Call-Id`` for this call, when it sent one."""
    attempts: int = 1
    """How many requests were made (1 without retries; 0 when cancelled before sending)."""
    context: object = attrs.field(default=None, eq=False, hash=False)
    """Whatever the caller passed as ``context=`` to ``invoke``/``submit``, for correlation."""

    @property
    def ok(self) -> bool:
        """True when the function answered 2xx and nothing went wrong."""
        return self.error is None and self.status is not None and 200 <= self.status < 300


@final
class ResultStream:
    """An async iterator over results, registered with the controller when it was created.

    Use it under ``async with`` (or call :meth:`aclose`): closing it unsubscribes at once. It ends
    when the controller exits, after every result already buffered has been delivered.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[InvocationResult], hub: ResultHub):
        self._receive = receive
        self._hub = hub

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> InvocationResult:
        try:
            # A buffered result is taken without a checkpoint (a third of the cost of a read);
            # when none is, the reader waits, which lets everything else run.
            try:
                return self._receive.receive_nowait()
            except anyio.WouldBlock:
                return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()  # an exhausted stream needs no aclose() from the user
            raise StopAsyncIteration from None

    async def receive(self) -> InvocationResult:
        """The next result; raises ``anyio.EndOfStream`` once the controller has exited."""
        return await self._receive.receive()

    async def aclose(self) -> None:
        """Unsubscribe now; results buffered but not yet read are discarded."""
        self._receive.close()
        self._hub.discard(self)

    @property
    def buffered(self) -> int:
        """How many results wait in this stream's buffer."""
        return self._receive.statistics().current_buffer_used


# A stream full for this long gets one warning (per episode: until nothing waits on it).
_FULL_WARNING_AFTER = 5.0


@final
class _Blocked:
    """A stream that is full while publishers wait on it, from the first waiter to the last."""

    __slots__ = ("since", "waiting", "warned")

    def __init__(self, since: float) -> None:
        self.since = since
        self.waiting = 0
        self.warned = False


@final
class ResultHub:
    """Fans each result out to every subscriber.

    A result goes at once to every stream with room; only then does the publisher wait for the
    full ones (all at the same time), so a stream that stopped reading holds back the invocation
    that publishes, never the delivery to the other streams.
    """

    def __init__(self, buffer: int, *, warn_after: float = _FULL_WARNING_AFTER) -> None:
        self._buffer = buffer
        self._subscribers: dict[ResultStream, MemoryObjectSendStream[InvocationResult]] = {}
        # Whether any stream subscribes (else `publish` has nothing to do): an attribute, read
        # for every result.
        self.subscribed = False
        self._blocked: dict[ResultStream, _Blocked] = {}
        self._warn_after = warn_after
        self._wake: anyio.Event | None = None  # set for watch(): a new episode, or closing
        self._closed = False

    @property
    def streams_full(self) -> int:
        """How many streams are full with publishers waiting on them."""
        return len(self._blocked)

    def subscribe(self) -> ResultStream:
        if self._closed:
            raise ControllerStateError("the controller has exited; its results have ended")
        send, receive = anyio.create_memory_object_stream[InvocationResult](self._buffer)
        stream = ResultStream(receive, self)
        self._subscribers[stream] = send
        self.subscribed = True
        return stream

    def discard(self, stream: ResultStream) -> None:
        send = self._subscribers.pop(stream, None)
        self.subscribed = bool(self._subscribers)
        if send is not None:
            send.close()

    async def publish(self, result: InvocationResult) -> None:
        if not self._subscribers:
            return
        full: list[tuple[ResultStream, MemoryObjectSendStream[InvocationResult]]] | None = None
        for stream, send in tuple(self._subscribers.items()):
            try:
                send.send_nowait(result)  # room in the buffer: no checkpoint needed
            except anyio.WouldBlock:
                full = [*(full or ()), (stream, send)]
            except anyio.BrokenResourceError:
                self.discard(stream)  # the subscriber closed its end meanwhile
        if full is None:
            return
        if len(full) == 1:
            await self._wait_for_room(*full[0], result)
            return
        # All at once: a slow stream that still reads must not wait behind a stuck one.
        async with anyio.create_task_group() as tg:
            for stream, send in full:
                tg.start_soon(self._wait_for_room, stream, send, result)

    async def _wait_for_room(
        self,
        stream: ResultStream,
        send: MemoryObjectSendStream[InvocationResult],
        result: InvocationResult,
    ) -> None:
        blocked = self._blocked.get(stream)
        if blocked is None:
            blocked = self._blocked[stream] = _Blocked(anyio.current_time())
            if self._wake is not None:
                self._wake.set()
        blocked.waiting += 1
        try:
            await send.send(result)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.discard(stream)
            if self._closed:  # else the subscriber closed its stream: it wants no more
                _not_delivered(result, "a results stream stopped reading during shutdown")
        except BaseException:
            # Cancelled (the caller of invoke() was): this stream goes without the result.
            _not_delivered(result, "its invocation was cancelled while a results stream was full")
            raise
        finally:
            blocked.waiting -= 1
            if not blocked.waiting:
                del self._blocked[stream]  # the episode is over

    async def watch(self) -> None:
        """Warn once when a stream has been full for ``warn_after`` seconds; return on close."""
        while not self._closed:
            wake = self._wake = anyio.Event()
            now = anyio.current_time()
            next_due = math.inf
            for blocked in self._blocked.values():
                if blocked.warned:
                    continue
                due = blocked.since + self._warn_after
                if due > now:
                    next_due = min(next_due, due)
                    continue
                blocked.warned = True
                logger.warning(
                    "a results stream has been full for over %gs: %d invocation(s) wait to "
                    "publish to it, holding their concurrency slots; read it or close it",
                    self._warn_after,
                    blocked.waiting,
                )
            with anyio.move_on_after(next_due - now):
                await wake.wait()

    def close(self) -> None:
        """End every stream (after what it has buffered); later subscriptions fail."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        for stream in tuple(self._subscribers):
            self.discard(stream)


def _not_delivered(result: InvocationResult, why: str) -> None:
    logger.warning("a result for %s was not delivered: %s", result.function, why)
