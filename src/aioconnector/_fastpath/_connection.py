"""One pooled connection: reading responses off a byte stream with `_parse`'s parser.

The stream is an `AsyncioWire` on asyncio, an anyio byte stream elsewhere: both ``receive`` and
``send`` alike and raise anyio's exceptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

import anyio

from .._errors import ResponseTooLargeError
from ._parse import (
    BLANK_LINE,
    CHUNK_LINE,
    CHUNKED,
    Head,
    MalformedResponseError,
    check_trailers,
    parse_head,
)

if TYPE_CHECKING:
    import socket

    from anyio.abc import ByteStream

    from ._wire import AsyncioWire

__all__ = ["MAX_RESPONSE_HEAD_BYTES", "Connection"]

_READ_SIZE: Final = 65536
#: The largest response head (or trailer section) accepted, in bytes, from the status line
#: through the blank line that ends it: httpcore's limit, counted exactly, whatever the reads.
MAX_RESPONSE_HEAD_BYTES: Final = 100 * 1024
_MAX_LINE: Final = MAX_RESPONSE_HEAD_BYTES  # a chunk line longer than this is malformed


@final
class Connection:
    """A stream, the bytes received but not consumed yet, and since when it is idle.

    Per response: `response_head`, then `response_body`; then `reusable` says whether the
    stream is in step for another request.
    """

    __slots__ = ("buffer", "idle_since", "pooled", "socket", "stream")

    def __init__(self, stream: ByteStream | AsyncioWire, socket: socket.socket | None = None):
        self.stream = stream
        self.socket = socket  # an anyio stream's socket, peeked at before reuse
        self.buffer = b""
        self.idle_since = 0.0
        self.pooled = False  # has carried a response and been pooled: a reused connection

    async def answer_begins(self) -> None:
        """Wait for the first bytes of the response (the buffer is empty between exchanges):
        whether any arrived tells a connection closed unanswered from one closed mid-answer."""
        self.buffer = await self.stream.receive(_READ_SIZE)

    async def response_head(self) -> Head:
        """The head of the final response, 1xx informational responses skipped."""
        while True:
            while (head := self._take_head()) is None:
                self.buffer += await self.stream.receive(_READ_SIZE)
            parsed = parse_head(head)
            if parsed[0] >= 200:
                return parsed
            if parsed[0] == 101:
                raise MalformedResponseError("unexpected 101 Switching Protocols")

    async def response_body(self, framing: int, limit: int) -> bytes:
        """The body: ``framing`` bytes, chunked, or up to EOF; more than ``limit`` fails."""
        buffer = self.buffer
        if 0 <= framing <= len(buffer):  # the usual case: it came with the head
            self.buffer = buffer[framing:]
            return buffer[:framing]
        if framing >= 0:
            return await self.exact(framing)
        if framing == CHUNKED:
            return await self.chunked(limit)
        return await self.until_close(limit)

    def reusable(self) -> bool:
        return not self.buffer  # bytes beyond the response: the stream is out of step

    async def head(self) -> bytes:
        """The next head (or trailer section), through the newline of its last line."""
        while (head := self._take_head()) is None:
            self.buffer += await self.stream.receive(_READ_SIZE)
        return head

    def _take_head(self) -> bytes | None:
        """A complete head off the buffer, or None while it is incomplete."""
        buffer = self.buffer
        # Only a blank line ending within the limit counts; without one, a buffer that already
        # holds the limit means a head of at least one byte more.
        match = BLANK_LINE.search(buffer, 0, MAX_RESPONSE_HEAD_BYTES)
        if match is not None:
            self.buffer = buffer[match.end() :]
            return buffer[: match.start() + 1]
        if len(buffer) >= MAX_RESPONSE_HEAD_BYTES:
            raise ResponseTooLargeError(
                f"response head over the limit of {MAX_RESPONSE_HEAD_BYTES} bytes"
            )
        return None

    async def exact(self, size: int) -> bytes:
        """The next ``size`` bytes."""
        buffer = self.buffer
        if len(buffer) >= size:
            self.buffer = buffer[size:]
            return buffer[:size]
        pieces = [buffer]
        have = len(buffer)
        while have < size:
            data = await self.stream.receive(_READ_SIZE)
            pieces.append(data)
            have += len(data)
        data = b"".join(pieces)
        self.buffer = data[size:]
        return data[:size] if have > size else data

    async def line(self) -> bytes:
        """The next CRLF-terminated line, CRLF included."""
        buffer = self.buffer
        start = 0
        while (end := buffer.find(b"\r\n", start)) < 0:
            if len(buffer) > _MAX_LINE:
                raise MalformedResponseError("chunk header line too long")
            start = max(0, len(buffer) - 1)
            self.buffer = buffer = buffer + await self.stream.receive(_READ_SIZE)
        self.buffer = buffer[end + 2 :]
        return buffer[: end + 2]

    async def chunked(self, limit: int) -> bytes:
        pieces: list[bytes] = []
        size = 0
        while True:
            line = await self.line()
            match = CHUNK_LINE.fullmatch(line)
            if match is None:
                raise MalformedResponseError(f"invalid chunk header {line[:40]!r}")
            chunk = int(match[1], 16)
            if chunk == 0:
                break
            if size + chunk > limit:
                await self.too_large(limit - size, limit)
            pieces.append(await self.exact(chunk))
            size += chunk
            if await self.exact(2) != b"\r\n":
                raise MalformedResponseError("chunk not followed by CRLF")
        # Trailers: ignored, as httpx does, but they must be well-formed.
        while len(self.buffer) < 2 and self.buffer != b"\n":
            self.buffer += await self.stream.receive(_READ_SIZE)
        if self.buffer.startswith(b"\r\n"):
            self.buffer = self.buffer[2:]
        elif self.buffer.startswith(b"\n"):
            self.buffer = self.buffer[1:]
        else:
            check_trailers(await self.head())
        return b"".join(pieces)

    async def too_large(self, allowed: int, limit: int) -> None:
        """Fail once more than ``allowed`` bytes arrive (as httpx counts: what was received)."""
        have = len(self.buffer)
        while have <= allowed:
            have += len(await self.stream.receive(_READ_SIZE))
        raise ResponseTooLargeError(f"response exceeds max_response_bytes={limit}")

    async def until_close(self, limit: int) -> bytes:
        pieces = [self.buffer]
        size = len(self.buffer)
        self.buffer = b""
        while size <= limit:
            try:
                data = await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return b"".join(pieces)
            pieces.append(data)
            size += len(data)
        raise ResponseTooLargeError(f"response exceeds max_response_bytes={limit}")
