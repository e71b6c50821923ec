"""`FastInvoker`: the pool, the request heads, and one exchange from request to result."""

from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING, Final, final

import anyio
import httpx

from .._errors import (
    InvocationError,
    ResponseTooLargeError,
)
from .._http import _tls_context
from .._invoke import RequestPlan, cancelled, finish, lost, not_sent
from .._runtime import current_runtime
from .._slots import Slots
from .._waiters import WaiterQueue
from ._connection import LOST, Connection, UnansweredError
from ._parse import MalformedResponseError
from ._wire import WireAbortedError, WireTimeoutError

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterable, Mapping

    from .._config import ControllerConfig
    from .._invoke import Invocation
    from .._results import InvocationResult
    from .._runtime import Runtime, Timer
    from ._wire import Wire

__all__ = ["FastInvoker"]

_HEAD_CACHE: Final = 1024  # cached request heads (function x header set); FIFO beyond
_KEEPALIVE_EXPIRY: Final = 5.0  # seconds idle before a pooled connection is dropped, as httpx
# Headers that make a request safe to resend on a new connection (as in Go's net/http).
_IDEMPOTENCY_KEYS: Final = frozenset({"idempotency-key", "x-idempotency-key"})
# At most this many connects at once; the others wait their turn. Ten thousand calls starting
# together would otherwise hold ten thousand connects' worth of memory at the same moment,
# which the allocator keeps after they end (a third of the memory per call in flight), and
# overflow the gateway's listen backlog.
_CONNECTS_AT_ONCE: Final = 256
# How often deadlines are checked: 1/20 of upstream_timeout, within these bounds.
_SWEEP_MIN: Final = 0.005
_SWEEP_MAX: Final = 0.1


def _sweep_interval(timeout: float | None, others: Iterable[float | None]) -> float:
    """1/20 of the shortest timeout, within the bounds: no deadline is missed by more."""
    shortest = min((t for t in (timeout, *others) if t), default=0.0)
    return min(_SWEEP_MAX, max(_SWEEP_MIN, shortest / 20))


class _ConnectError(Exception):
    """The connection could not be made: the request never left."""


# What an exchange can fail with, as a result: `_error_for` says which error each one is.
_FAILURES: Final = (
    _ConnectError,
    UnansweredError,
    *LOST,
    MalformedResponseError,
    ResponseTooLargeError,
)


@final
class FastInvoker:
    """Invokes functions over a keep-alive HTTP/1.1 connection pool of its own.

    Gives the same results as `HttpxInvoker` for the same gateway behaviour. Opens at most
    ``max_concurrency`` connections; a call finding them all busy waits for one (the controller
    never lets that happen). Its connections are the runtime's wires (`AsyncioWire`,
    `TrioWire`); one periodic sweep enforces every call's deadline. Close it with :meth:`aclose`.

    ``runtime``: the event loop's (`current_runtime`), taken at the first call if not given.
    """

    def __init__(self, config: ControllerConfig, runtime: Runtime | None = None) -> None:
        plan = self._plan = RequestPlan.from_config(config)
        base = httpx.URL(config.gateway_url)
        self._host = base.raw_host.decode("ascii")
        https = base.scheme == "https"
        self._port = base.port or (443 if https else 80)
        context = _tls_context(config)  # a context for https, else True
        self._tls: ssl.SSLContext | None = None if isinstance(context, bool) else context
        self._host_line = b"Host: " + base.netloc + b"\r\n"
        creds = plan.credentials
        self._auth = b""
        if creds is not None:
            token = base64.b64encode(f"{creds.user}:{creds.password}".encode())
            self._auth = b"Authorization: Basic " + token + b"\r\n"
        self._timeout = plan.timeout
        self._max_bytes = plan.max_response_bytes
        self._limit = config.max_concurrency
        self._heads: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        self._idle: list[Connection] = []  # LIFO: the warmest connection first
        self._busy: set[Connection] = set()  # in an exchange
        self._open = 0  # idle, busy and being opened
        # Calls waiting for a connection while all are busy; a turn lost goes to the next.
        self._waiters = WaiterQueue(lost_turn=self._pass_turn)
        self._connecting: dict[anyio.CancelScope, float] = {}  # connects, with deadlines
        self._connect_turns = Slots(_CONNECTS_AT_ONCE)
        self._closed = False
        self._aborted = False
        self._runtime = runtime
        self._clock: Callable[[], float] | None = None if runtime is None else runtime.clock
        # Deadlines are swept for (see _start_sweep): at most this late.
        self._sweep: Timer | None = None
        self._timeouts: dict[str, float | None] = {}  # functions with their own timeout
        self._sweep_every = _sweep_interval(config.upstream_timeout, ())

    def set_timeouts(self, timeouts: Mapping[str, float | None]) -> None:
        self._timeouts = dict(timeouts)
        self._sweep_every = _sweep_interval(self._timeout, self._timeouts.values())

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        """The result of one exchange (`cancelled` when `abort` stopped it)."""
        clock = self._clock or self._bind()
        started = clock()
        if self._closed:
            raise RuntimeError("this FastInvoker is closed")
        if self._aborted:
            return cancelled(invocation, 0.0, attempts=1)
        timeout = self._timeout
        if self._timeouts:  # a dict lookup only when some function has its own timeout
            timeout = self._timeouts.get(invocation.function, timeout)
        # One deadline for the whole exchange, connecting included, as HttpxInvoker.
        deadline = math.inf if timeout is None else started + timeout
        status: int | None = None
        headers: dict[str, str] = {}
        body = b""
        error: InvocationError | None = None
        timed_out = False
        connection = self._take_idle(started)
        try:
            if connection is None:
                connection = await self._checkout(deadline)
            request = self._request(invocation)
            self._arm(connection.wire, deadline)
            try:
                status, headers, body, keep_alive = await connection.exchange(
                    request, self._max_bytes
                )
            except UnansweredError:
                # A pooled connection closed before a byte of the answer: the server dropped
                # it as idle, most likely. As Go's net/http does, a request with an
                # idempotency key goes once more, on a new connection (not pooled: never a
                # third time). Otherwise a request that may have been processed is not resent.
                if not connection.pooled or not _may_resend(invocation):
                    raise
                stale, connection = connection, None
                await self._drop(stale)
                connection = await self._connect(deadline)
                self._arm(connection.wire, deadline)
                status, headers, body, keep_alive = await connection.exchange(
                    request, self._max_bytes
                )
            if keep_alive and not self._closed:
                self._release(connection, started)
                connection = None
        except WireTimeoutError:
            timed_out = True
        except WireAbortedError:
            return cancelled(invocation, clock() - started, attempts=1)
        except _FAILURES as exc:
            error = _error_for(invocation, exc)
        finally:
            if connection is not None:  # never reused after an error or a cancellation
                await self._drop(connection)
        if connection is not None and connection.status is not None:
            status, headers = connection.status, connection.headers  # the body failed
        return finish(
            invocation,
            started=started,
            status=status,
            body=body,
            headers=headers,
            error=error,
            timed_out=timed_out,
            timeout=timeout,
            now=clock(),
        )

    def _bind(self) -> Callable[[], float]:
        """Take the running loop's runtime (at the first call, when none was given)."""
        runtime = self._runtime = current_runtime()
        clock = self._clock = runtime.clock
        return clock

    def _arm(self, wire: Wire, deadline: float) -> None:
        wire.arm(deadline)
        if self._aborted:
            wire.abort()  # abort() came while this call was connecting
        if self._sweep is None and deadline != math.inf:
            self._start_sweep()

    def _start_sweep(self) -> None:
        """Expire the wires past their deadline, every `_sweep_every` while any is busy.

        Deadlines are enforced this late at most: one sweep costs less than arming and
        cancelling a timer (or, on trio, entering a cancel scope) for every request.
        """
        assert self._runtime is not None  # noqa: S101 - bound before any call arms a wire
        self._sweep = self._runtime.call_later(self._sweep_every, self._sweep_now)

    def _sweep_now(self) -> None:
        self._sweep = None
        assert self._clock is not None  # noqa: S101 - bound before any sweep starts
        now = self._clock()
        for connection in tuple(self._busy):
            if connection.wire.deadline <= now:
                connection.wire.expire()
        for scope, deadline in tuple(self._connecting.items()):
            if deadline <= now:
                scope.cancel()
        if self._busy or self._connecting:
            self._start_sweep()

    def abort(self) -> None:
        """Stop every exchange in progress, and refuse later ones: they return `cancelled`
        results."""
        self._aborted = True
        while self._waiters:  # calls waiting for a connection: they find it aborted
            self._waiters.wake()
        for connection in tuple(self._busy):
            connection.wire.abort()
        for connecting in tuple(self._connecting):
            connecting.cancel()

    async def aclose(self) -> None:
        """Close every pooled connection; connections in use close when their call ends."""
        self._closed = True
        if self._sweep is not None and not self._busy and not self._connecting:
            self._sweep.cancel()  # nothing left to sweep for
            self._sweep = None
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._drop(connection)

    def _request(self, invocation: Invocation) -> bytes:
        key = (invocation.function, invocation.headers)
        head = self._heads.get(key) or self._prepare(key)
        content = invocation.body
        return b"%b%d\r\n\r\n%b" % (head, len(content), content)

    def _prepare(self, key: tuple[str, tuple[tuple[str, str], ...]]) -> bytes:
        """The request head up to the Content-Length value, cached per function and headers."""
        function, fields = key
        target = httpx.URL(self._plan.url_for(function)).raw_path
        lines = [b"POST ", target, b" HTTP/1.1\r\n", self._host_line]
        for name, value in fields:
            if self._auth and name.lower() == "authorization":
                continue  # replaced by ours, as httpx's auth= does
            lines += (name.encode("ascii"), b": ", value.encode("ascii"), b"\r\n")
        lines += (self._auth, b"Content-Length: ")
        head = b"".join(lines)
        if fields and fields[-1][0] == "traceparent":
            return head  # a traced request's own head (_tracing puts it last): never reused
        if len(self._heads) >= _HEAD_CACHE:
            del self._heads[next(iter(self._heads))]
        self._heads[key] = head
        return head

    def _take_idle(self, now: float) -> Connection | None:
        """The warmest pooled connection if it is fresh and intact, else None (`_checkout`).

        A pooled connection is used only if nothing arrived on it while it was idle: one the
        server closed is dropped before a request is sent on it.
        """
        idle = self._idle
        if idle:
            connection = idle[-1]
            if now - connection.idle_since < _KEEPALIVE_EXPIRY and connection.wire.intact():
                idle.pop()
                self._busy.add(connection)
                return connection
        return None

    async def _checkout(self, deadline: float) -> Connection:
        """An intact pooled connection, else a new one; waits while all are busy."""
        assert self._clock is not None  # noqa: S101 - bound by the call
        while True:
            while self._idle:
                if (connection := self._take_idle(self._clock())) is not None:
                    return connection
                self._open -= 1  # expired, or closed by the server while idle
                await self._idle.pop().wire.aclose()
            if self._open < self._limit:
                return await self._connect(deadline)
            await self._wait_for_connection(deadline)
            if self._aborted:
                raise WireAbortedError

    async def _wait_for_connection(self, deadline: float) -> None:
        with anyio.move_on_at(deadline) as scope:  # on asyncio, nothing else bounds it
            await self._waiters.wait()
        if scope.cancelled_caught:
            raise WireTimeoutError

    def _pass_turn(self) -> None:
        if self._waiters:
            self._waiters.wake()

    async def _connect(self, deadline: float) -> Connection:
        self._open += 1
        try:
            wire = await self._open_wire(deadline)
        except BaseException as exc:
            self._open -= 1
            if self._waiters:
                self._waiters.wake()
            if isinstance(exc, LOST):
                raise _ConnectError(_describe(exc)) from exc
            raise
        connection = Connection(wire)
        self._busy.add(connection)
        return connection

    async def _open_wire(self, deadline: float) -> Wire:
        """Connect in a cancel scope that the sweep cancels past ``deadline`` and `abort`
        cancels at once. The scope has no deadline of its own: an anyio deadline arms a loop
        timer that outlives the connect by up to ``upstream_timeout`` (a kilobyte each)."""
        assert self._runtime is not None  # noqa: S101 - bound by the call
        turns = self._connect_turns
        if not turns.try_acquire():
            with anyio.move_on_at(deadline) as waited:
                await turns.acquire()
            if waited.cancelled_caught:
                raise WireTimeoutError
        try:
            with anyio.CancelScope() as scope:
                self._connecting[scope] = deadline
                if self._sweep is None and deadline != math.inf:
                    self._start_sweep()
                try:
                    if not self._aborted:  # abort() came while this call waited its turn
                        return await self._runtime.connect(self._host, self._port, self._tls)
                finally:
                    del self._connecting[scope]
        finally:
            turns.release()
        raise WireAbortedError if self._aborted else WireTimeoutError

    def _release(self, connection: Connection, started: float) -> None:
        """Pool a connection after a complete response."""
        self._busy.discard(connection)
        # Idle time counts from the start of its last call: it expires early, never late.
        connection.idle_since = started
        connection.pooled = True
        self._idle.append(connection)
        if self._waiters:
            self._waiters.wake()

    async def _drop(self, connection: Connection) -> None:
        """Close a connection that is not in the pool (also when cancelled)."""
        self._busy.discard(connection)
        self._open -= 1
        if self._waiters:
            self._waiters.wake()
        await connection.wire.aclose()


def _may_resend(invocation: Invocation) -> bool:
    """Whether the caller marked the request safe to send twice, with an idempotency key."""
    return any(name.lower() in _IDEMPOTENCY_KEYS for name, _ in invocation.headers)


def _error_for(invocation: Invocation, exc: BaseException) -> InvocationError:
    """The result's error for one of the `_FAILURES` of an exchange."""
    if isinstance(exc, _ConnectError):
        return not_sent(invocation, str(exc))
    if isinstance(exc, UnansweredError):
        return lost(invocation, _describe(exc.__cause__ or exc))
    if isinstance(exc, (*LOST, MalformedResponseError)):
        return lost(invocation, _describe(exc))
    assert isinstance(exc, ResponseTooLargeError)  # noqa: S101 - the last of _FAILURES
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, anyio.EndOfStream):
        return "the server closed the connection before the response was complete"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
