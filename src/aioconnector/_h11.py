"""What the two small HTTP/1.1 servers share (the callback receiver and the health endpoint):
reading the next h11 event off a stream, and sending a whole answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import anyio
import h11

if TYPE_CHECKING:
    from anyio.abc import ByteStream

__all__ = ["TEXT", "answer", "next_event"]

TEXT: Final = "text/plain; charset=utf-8"
IDLE_TIMEOUT: Final = 30.0  # a connection quiet this long is closed


async def next_event(connection: h11.Connection, stream: ByteStream, read_size: int) -> object:
    """The connection's next event, reading up to ``read_size`` bytes at a time; a peer quiet
    for `IDLE_TIMEOUT` seconds raises `TimeoutError`."""
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            with anyio.fail_after(IDLE_TIMEOUT):
                data = await stream.receive(read_size)
        except anyio.EndOfStream:
            data = b""
        connection.receive_data(data)


async def answer(
    connection: h11.Connection,
    stream: ByteStream,
    status: int,
    body: bytes,
    *,
    content_type: str = TEXT,
    head: bool = False,
    close: bool = False,
) -> bool:
    """Send a whole answer (no body for a HEAD request); True when the connection may carry
    another request: the request was read to its end and ``close`` was not asked."""
    if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return False
    close = close or connection.their_state is not h11.DONE  # a body left unread
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if close:
        headers.append(("Connection", "close"))
    data = connection.send(h11.Response(status_code=status, headers=headers))
    if not head:
        data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send(data)
    return not close
