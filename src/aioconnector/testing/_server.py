"""The loopback front end: a small HTTP/1.1 server on anyio and h11, one task per connection."""

from __future__ import annotations

import errno
import ssl
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, final

import anyio
import h11
import httpx
from anyio import AsyncContextManagerMixin
from anyio.abc import SocketAttribute, SocketListener
from anyio.streams.tls import TLSStream

from ._wire import DROP, Background, Dispatch, Incoming, open_background, response_has_body

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import ByteStream, SocketStream, TaskGroup

    from ._models import FakeResponse

__all__ = ["Server"]

_BACKLOG: Final = 4096
_READ_SIZE: Final = 65536
#: accept() errors that mean "out of descriptors or memory for now": wait and try again.
_TRANSIENT_ACCEPT_ERRORS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)


@final
class Server(AsyncContextManagerMixin):
    """Serves a dispatch function over HTTP/1.1 while its ``async with`` block runs.

    Entering binds the listener and yields ``(host, port)``; leaving cancels every
    connection and the background work, then closes the listener. With ``ssl_context``, every
    connection is wrapped in TLS first; a failed handshake closes that connection only.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        host: str,
        port: int,
        callback_transport: httpx.AsyncBaseTransport | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._dispatch = dispatch
        self._host = host
        self._port = port
        self._callback_transport = callback_transport
        self._ssl_context = ssl_context

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[tuple[str, int]]:
        listener = await anyio.create_tcp_listener(
            local_host=self._host, local_port=self._port, backlog=_BACKLOG
        )
        async with listener:
            first = listener.listeners[0]
            port = first.extra(SocketAttribute.local_port)
            host = str(first.extra(SocketAttribute.local_address)[0])
            async with (
                open_background(self._callback_transport) as background,
                anyio.create_task_group() as task_group,
            ):
                for one in listener.listeners:
                    assert isinstance(one, SocketListener)  # noqa: S101 (for the type checker)
                    task_group.start_soon(self._accept, one, task_group, background)
                try:
                    yield host, port
                finally:
                    task_group.cancel_scope.cancel()

    async def _accept(
        self, listener: SocketListener, task_group: TaskGroup, background: Background
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    raise
                await anyio.sleep(0.01)
                continue
            task_group.start_soon(self._connection, stream, background)

    async def _connection(self, socket: SocketStream, background: Background) -> None:
        async with socket:
            stream: ByteStream = socket
            if self._ssl_context is not None:
                try:
                    # Not standard_compatible: no close_notify dance, an abrupt EOF is an EOF.
                    stream = await TLSStream.wrap(
                        socket,
                        server_side=True,
                        ssl_context=self._ssl_context,
                        standard_compatible=False,
                    )
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    return  # a failed handshake (ssl.SSLError is an OSError) ends this one only
            connection = h11.Connection(h11.SERVER)
            try:
                while await self._exchange(connection, stream, background):
                    connection.start_next_cycle()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError):
                pass  # the client went away (or broke the TLS session)

    async def _exchange(
        self, connection: h11.Connection, stream: ByteStream, background: Background
    ) -> bool:
        """Answer one request; True when the connection may carry another."""
        try:
            request = await _next_event(connection, stream)
            if not isinstance(request, h11.Request):
                return False  # the client closed an idle connection
            if connection.they_are_waiting_for_100_continue:
                await stream.send(
                    connection.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            body = bytearray()
            while True:
                event = await _next_event(connection, stream)
                if isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return False  # closed in the middle of the body
        except h11.RemoteProtocolError as exc:
            await _refuse(connection, stream, exc.error_status_hint)
            return False
        method = request.method.decode("ascii")
        outcome = await self._dispatch(
            Incoming(
                method=method,
                target=request.target.decode("latin-1"),
                headers=httpx.Headers(list(request.headers.raw_items())),
                body=bytes(body),
            ),
            background,
        )
        if outcome is DROP:
            return False
        await stream.send(_encode(connection, method, outcome))
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE


async def _next_event(connection: h11.Connection, stream: ByteStream) -> object:
    """The next h11 event (or ``PAUSED``), reading from ``stream`` as needed."""
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            data = b""
        connection.receive_data(data)


def _encode(connection: h11.Connection, method: str, response: FakeResponse) -> bytes:
    headers = list(response.headers.items())
    with_body = response_has_body(method, response.status)
    if with_body or method == "HEAD":
        headers.append(("Content-Length", str(len(response.body))))
    data = connection.send(
        h11.Response(status_code=response.status, headers=headers, reason=response.reason)
    )
    if with_body and response.body:
        data += connection.send(h11.Data(data=response.body))
    return data + connection.send(h11.EndOfMessage())


async def _refuse(connection: h11.Connection, stream: ByteStream, status: int) -> None:
    """Answer a request we cannot parse, then let the connection close."""
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} bad request\n".encode()
    try:
        data = connection.send(
            h11.Response(
                status_code=status,
                headers=[
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ],
            )
        )
        data += connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await stream.send(data)
