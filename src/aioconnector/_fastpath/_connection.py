"""One pooled connection: reading response heads and bodies off an anyio byte stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

import anyio

from .._errors import ResponseTooLargeError
from ._parse import BLANK_LINE, CHUNK_LINE, CHUNKED, MalformedResponseError, check_trailers

if TYPE_CHECKING:
    from anyio.abc import ByteStream

__all__ = ["Connection"]

_READ_SIZE: Final = 65536
_MAX_HEAD: Final = 100 * 1024  # a response head (or chunk line) larger than this is malformed


@final
class Connection:
    """One pooled connection: the stream, bytes received but not consumed, when it went idle."""

    __slots__ = ("buffer", "idle_since", "stream")

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.idle_since = 0.0

    async def body(self, framing: int, limit: int) -> bytes:
        """The body: ``framing`` bytes, or chunked, or up to EOF; at most ``limit`` bytes."""
        if framing >= 0:
            return await self.exact(framing)
        if framing == CHUNKED:
            return await self.chunked(limit)
        return await self.until_close(limit)

    async def head(self) -> bytes:
        """The next response head, through the newline of its last line."""
        buffer = self.buffer
        start = 0
        while True:
            match = BLANK_LINE.search(buffer, start)
            if match is not None:
                self.buffer = buffer[match.end() :]
                return buffer[: match.start() + 1]
            if len(buffer) > _MAX_HEAD:
                raise MalformedResponseError(f"response head larger than {_MAX_HEAD} bytes")
            start = max(0, len(buffer) - 2)
            self.buffer = buffer = buffer + await self.stream.receive(_READ_SIZE)

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
            if len(buffer) > _MAX_HEAD:
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
            size += chunk
            if size > limit:
                raise ResponseTooLargeError(f"response exceeds max_response_bytes={limit}")
            pieces.append(await self.exact(chunk))
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
