"""One invocation on the wire: what to send (`Invocation`), and the `Invoker` that sends it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, final
from urllib.parse import quote

import anyio
import attrs
import httpx

from ._errors import (
    InvocationCancelledError,
    InvocationError,
    ResponseTooLargeError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    describe,
)
from ._results import InvocationResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ._config import BasicAuth, ControllerConfig

__all__ = [
    "HttpxInvoker",
    "Invocation",
    "Invoker",
    "RequestPlan",
    "cancelled",
    "finish",
    "lost",
    "not_sent",
]


# The connection was never made, so the request never left: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@attrs.frozen
class RequestPlan:
    """What every invocation request shares, worked out once from the config, for both
    invokers: where requests go, the credentials they carry, and their limits."""

    prefix: str
    """The gateway URL and route, up to the function's address."""
    credentials: BasicAuth | None
    """Sent with invocations only when ``auth_invocations`` (off by default: functions, and
    whoever they call back, never see the gateway password)."""
    timeout: float | None
    max_response_bytes: int

    @classmethod
    def from_config(cls, config: ControllerConfig) -> RequestPlan:
        route = "async-function" if config.async_invocation else "function"
        return cls(
            prefix=f"{config.gateway_url}/{route}/",
            credentials=config.credentials if config.auth_invocations else None,
            timeout=config.upstream_timeout,
            max_response_bytes=config.max_response_bytes,
        )

    def url_for(self, function: str) -> str:
        """The function's invocation URL. ``safe=""`` quotes "/" too: an address can never
        leave the route."""
        return self.prefix + quote(function, safe="")


@attrs.define(kw_only=True)
class Invocation:
    """Everything needed to invoke one function for one message; headers already merged.

    Never changed once made (not frozen: a frozen class takes twice as long to create).
    """

    topic: str
    function: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    context: object = attrs.field(default=None, eq=False, hash=False)


class Invoker(Protocol):
    """Sends one invocation. Per-call failures come back as results; cancellation propagates."""

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        """The invocation's result (`cancelled` when `abort` stopped it)."""

    def set_timeouts(self, timeouts: Mapping[str, float | None]) -> None:
        """From now on, requests to these functions (by address) take these timeouts instead
        of ``upstream_timeout`` (``None``: no timeout)."""

    def abort(self) -> None:
        """Stop every invocation in progress (they return `cancelled` results), and every
        later one.

        The controller's shutdown calls it after ``drain_timeout``: one call instead of a
        cancel scope around every request.
        """

    async def aclose(self) -> None:
        """Release what the invoker holds (connections); called once, at controller exit."""


@final
class HttpxInvoker:
    """Invokes functions through the gateway with a shared ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient, config: ControllerConfig) -> None:
        plan = self._plan = RequestPlan.from_config(config)
        self._client = client
        self._timeout = plan.timeout
        self._max_bytes = plan.max_response_bytes
        creds = plan.credentials
        self._auth = None if creds is None else httpx.BasicAuth(creds.user, creds.password)
        self._scopes: set[anyio.CancelScope] = set()
        self._aborted = False
        self._timeouts: Mapping[str, float | None] = {}

    def set_timeouts(self, timeouts: Mapping[str, float | None]) -> None:
        self._timeouts = dict(timeouts)

    def abort(self) -> None:
        self._aborted = True
        for scope in tuple(self._scopes):
            scope.cancel()

    async def aclose(self) -> None:
        """Nothing to do: the controller closes the shared client."""

    def url_for(self, function: str) -> str:
        return self._plan.url_for(function)

    async def invoke(self, invocation: Invocation) -> InvocationResult:
        started = anyio.current_time()
        status: int | None = None
        headers: dict[str, str] = {}
        body = b""
        error: InvocationError | None = None
        timeout = self._timeouts.get(invocation.function, self._timeout)
        # One deadline for the whole exchange (httpx's timeouts are per read, not per call).
        with anyio.move_on_after(timeout) as deadline:
            self._scopes.add(deadline)
            if self._aborted:
                deadline.cancel()  # abort() came first: send nothing
            try:
                request = self._client.build_request(
                    "POST",
                    self.url_for(invocation.function),
                    content=invocation.body,
                    headers=invocation.headers,
                )
                # httpx's own body stream is an async generator that is never closed when a
                # send is cancelled (encode/httpx#3686): a ResourceWarning on trio.
                request.stream = _Body(invocation.body)
                response = await self._client.send(request, auth=self._auth, stream=True)
                try:
                    status = response.status_code
                    headers = _flatten(response.headers)
                    body = await _read_capped(response, self._max_bytes)
                finally:
                    await response.aclose()
            except _NOT_SENT as exc:
                error = not_sent(invocation, describe(exc))
            except httpx.TimeoutException as exc:
                error = UpstreamTimeoutError(f"{invocation.function}: {type(exc).__name__}")
            except httpx.TransportError as exc:
                error = _lost(invocation, exc)
            except ResponseTooLargeError as exc:
                error = exc
                body = b""
            finally:
                self._scopes.discard(deadline)
        if self._aborted and deadline.cancelled_caught:
            return cancelled(invocation, anyio.current_time() - started, attempts=1)
        return finish(
            invocation,
            started=started,
            status=status,
            body=body,
            headers=headers,
            error=error,
            timed_out=deadline.cancelled_caught,
            timeout=timeout,
            now=anyio.current_time(),
        )


def finish(
    invocation: Invocation,
    *,
    started: float,
    status: int | None,
    body: bytes,
    headers: dict[str, str],
    error: InvocationError | None,
    timed_out: bool,
    timeout: float | None,
    now: float,
) -> InvocationResult:
    """The result of one exchange, the same for every invoker: a deadline that passed is an
    `UpstreamTimeoutError`, a non-2xx answer an `UpstreamStatusError`. ``now`` is the time the
    exchange ended (on the clock ``started`` came from)."""
    if timed_out:
        error = UpstreamTimeoutError(
            f"{invocation.function}: no complete answer within upstream_timeout={timeout}s"
        )
    elif error is None and status is not None and not 200 <= status < 300:
        error = UpstreamStatusError(status)
    return InvocationResult(
        topic=invocation.topic,
        function=invocation.function,
        status=status,
        body=body,
        headers=headers,
        duration=now - started,
        error=error,
        call_id=headers.get("x-call-id"),
        context=invocation.context,
    )


def cancelled(invocation: Invocation, duration: float, *, attempts: int) -> InvocationResult:
    """The result of an invocation that the controller's shutdown stopped (after
    ``drain_timeout``): before its request (``attempts`` 0) or during one."""
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


# The errors of an exchange, the same for both invokers (each says which of its exceptions is
# which): the request never left; it left and no complete answer came; the answer was too
# large (`ResponseTooLargeError`, as raised); the deadline passed (`finish`); shutdown
# (`cancelled`).


def not_sent(invocation: Invocation, why: str) -> UpstreamConnectionError:
    """The connection could not be made: the request never left (always safe to retry)."""
    return UpstreamConnectionError(f"{invocation.function}: {why}", request_sent=False)


def lost(invocation: Invocation, why: str) -> UpstreamConnectionError:
    """The request was sent (it may have been processed) and no complete answer came."""
    return UpstreamConnectionError(f"{invocation.function}: {why}", request_sent=True)


def _lost(invocation: Invocation, exc: httpx.TransportError) -> InvocationError:
    """httpx's error for a request that was sent and got no complete answer."""
    if isinstance(exc, httpx.RemoteProtocolError) and "Receive buffer too long" in str(exc):
        # h11's words for a head over httpcore's 100 KiB, the fast path's MAX_RESPONSE_HEAD_BYTES
        # too (httpcore checks between reads of up to 64 KiB, so not to the byte). Not imported:
        # _fastpath imports this module; a test checks that both messages agree.
        return ResponseTooLargeError("response head over the limit of 102400 bytes")
    return lost(invocation, describe(exc))


def _flatten(headers: httpx.Headers) -> dict[str, str]:
    flat: dict[str, str] = {}
    for name, value in headers.multi_items():
        flat[name] = f"{flat[name]}, {value}" if name in flat else value
    return flat


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLargeError(f"response of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLargeError(f"response exceeds max_response_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


class _Body(httpx.AsyncByteStream):
    """The request body as one chunk, iterated without an async generator."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._data)


class _OneChunk:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data
