"""The in-process front end: an httpx transport that calls the gateway's handler directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import anyio
import httpx

from ._wire import DROP, Background, Dispatch, Incoming, open_background, response_has_body

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

__all__ = ["FakeTransport"]


@final
class FakeTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` answering from a fake gateway, no sockets.

    Open (``async with``, directly or through ``httpx.AsyncClient``), it owns the task group
    where ``/async-function/`` work runs; entering it again while open nests, and the last
    exit cancels the work left and closes the callback client.
    """

    def __init__(
        self, dispatch: Dispatch, *, callback_transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._dispatch = dispatch
        self._callback_transport = callback_transport
        self._depth = 0
        self._lifetime: AbstractAsyncContextManager[Background] | None = None
        self._background: Background | None = None

    async def __aenter__(self) -> FakeTransport:
        if self._depth == 0:
            lifetime = open_background(self._callback_transport)
            self._background = await lifetime.__aenter__()
            self._lifetime = lifetime
        self._depth += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._lifetime is not None:
            lifetime, self._lifetime = self._lifetime, None
            self._background = None
            # The block's own exception is not ours to handle: it propagates by itself.
            await lifetime.__aexit__(None, None, None)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the gateway, as its server would over a socket."""
        incoming = Incoming(
            method=request.method,
            target=request.url.raw_path.decode("ascii"),
            headers=httpx.Headers(request.headers.raw),
            body=await request.aread(),
        )
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        with anyio.move_on_after(read_timeout) as scope:
            outcome = await self._dispatch(incoming, self._background)
        if scope.cancelled_caught:
            raise httpx.ReadTimeout("timed out waiting for the fake gateway", request=request)
        if outcome is DROP:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        headers = list(outcome.headers.items())
        with_body = response_has_body(request.method, outcome.status)
        if with_body or request.method == "HEAD":  # the same framing as the server's
            headers.append(("Content-Length", str(len(outcome.body))))
        return httpx.Response(
            outcome.status,
            headers=headers,
            content=outcome.body if with_body else b"",
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": outcome.reason.encode()},
        )

    async def aclose(self) -> None:
        """Nothing to release: background work ends when the transport's block does."""
