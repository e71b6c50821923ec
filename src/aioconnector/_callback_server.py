"""`CallbackServer`: the built-in callback receiver, a small HTTP/1.1 server on anyio and h11.

Started in the controller's task group when ``callback_listen`` is set. One task per
connection (the queue-worker keeps a few alive), each bounded by an idle timeout; a rejected
callback is answered from its head alone and the connection closed, its body never read.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Final, final

import anyio
import h11
from anyio.abc import SocketAttribute

from ._callbacks import NOT_POST, Reply, callback_headers
from ._h11 import answer, next_event

if TYPE_CHECKING:
    from anyio.abc import ByteStream, TaskStatus

    from ._callbacks import CallbackRegistry

__all__ = ["CallbackServer"]

_READ_SIZE: Final = 65536
_MAX_HEAD: Final = 16 * 1024  # a callback's head: the function's headers and ours


@final
class CallbackServer:
    """Serves callbacks on ``host``:``port`` (0: any free port) until cancelled."""

    def __init__(self, registry: CallbackRegistry, host: str | None, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port

    async def run(self, *, task_status: TaskStatus[tuple[str, int]]) -> None:
        """Listen, report the bound ``(host, port)`` through ``task_status``, serve."""
        try:
            listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        except OSError as exc:  # say which setting: the gateway's address is also in play
            where = f"{self._host or ''}:{self._port}"
            raise OSError(exc.errno, f"callback_listen={where!r}: {exc.strerror}") from exc
        async with listener:
            first = listener.listeners[0]
            host = str(first.extra(SocketAttribute.local_address)[0])
            task_status.started((host, first.extra(SocketAttribute.local_port)))
            await listener.serve(self._connection)

    async def _connection(self, stream: ByteStream) -> None:
        async with stream:
            connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
            try:
                while await self._exchange(connection, stream):
                    connection.start_next_cycle()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError):
                pass  # the client went away, or went quiet
            except h11.ProtocolError:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await _answer(connection, stream, Reply(400, "bad request"), close=True)

    async def _exchange(self, connection: h11.Connection, stream: ByteStream) -> bool:
        """Answer one request; True when the connection may carry another."""
        request = await next_event(connection, stream, _READ_SIZE)
        if not isinstance(request, h11.Request):
            return False  # closed while idle
        registry = self._registry
        if request.method != b"POST":
            registry.counts.not_post += 1
            return await _answer(connection, stream, NOT_POST)
        admitted = registry.admit(request.target.decode("latin-1").partition("?")[0])
        if isinstance(admitted, Reply):
            return await _answer(connection, stream, admitted)
        headers = callback_headers(list(request.headers))
        body: bytes | None = None
        if not registry.too_large(headers.get("content-length")):
            if connection.they_are_waiting_for_100_continue:
                continue_ = h11.InformationalResponse(status_code=100, headers=[])
                await stream.send(connection.send(continue_))
            body = await _read_body(connection, stream, registry.max_body)
        return await _answer(connection, stream, registry.settle(admitted, headers, body))


async def _read_body(connection: h11.Connection, stream: ByteStream, limit: int) -> bytes | None:
    """The body, or None once it grows over ``limit`` (the rest is left unread)."""
    body = bytearray()
    while True:
        event = await next_event(connection, stream, _READ_SIZE)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise anyio.BrokenResourceError  # closed in the middle of the body


async def _answer(
    connection: h11.Connection, stream: ByteStream, reply: Reply, *, close: bool = False
) -> bool:
    """Send ``reply``; True when the connection may carry another request."""
    return await answer(connection, stream, reply.status, reply.body, close=close)
