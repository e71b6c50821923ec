"""One pooled connection: one exchange (request out, response in) at a time, over a `Wire`.

The wire is an `AsyncioWire` on asyncio and a `TrioWire` on trio; both raise anyio's
exceptions. Responses are read with `_parse`'s parser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

import anyio

from .._errors import ResponseTooLargeError
from ._parse import (
    BLANK_LINE,
    CHUNK_LINE,
    CHUNKED,
    LENGTH,
    Framing,
    MalformedResponseError,
    check_trailers,
    parse_head,
)

if TYPE_CHECKING:
    from ._wire import Wire

__all__ = [
    "LOST",
    "MAX_RESPONSE_HEAD_BYTES",
    "Answer",
    "Connection",
    "UnansweredError",
]

_READ_SIZE: Final = 65536
#: The largest response head (or trailer section) accepted, in bytes, from the status line
#: through the blank line that ends it: httpcore's limit, counted exactly, whatever the reads.
MAX_RESPONSE_HEAD_BYTES: Final = 100 * 1024
_MAX_LINE: Final = MAX_RESPONSE_HEAD_BYTES  # a chunk line longer than this is malformed
#: What a wire raises when the connection breaks (ssl.SSLError is an OSError).
LOST: Final = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)

# A complete response: status, headers, body, and whether the connection is in step for another.
Answer = tuple[int, dict[str, str], bytes, bool]


class UnansweredError(Exception):
    """The connection broke before the first byte of an answer (its cause says how): the
    server may have closed it as idle just as the request went out."""


@final
class Connection:
    """A wire, the bytes received but not consumed yet, and since when it is idle."""

    __slots__ = ("buffer", "headers", "idle_since", "pooled", "status", "wire")

    def __init__(self, wire: Wire):
        self.wire = wire
        self.buffer = b""
        # The head of the current exchange's answer, once read (status None until then).
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.idle_since = 0.0
        self.pooled = False  # has carried a response and been pooled: a reused connection

    async def exchange(self, request: bytes, limit: int) -> Answer:
        """Send ``request`` and read the final response (1xx ones skipped); a body over
        ``limit`` bytes fails with `ResponseTooLargeError`. Raises `UnansweredError` when the
        connection breaks before a byte of the answer arrived, a `LOST` error after. When the
        body fails, `status` and `headers` hold the answer's head."""
        wire = self.wire
        self.status = None
        try:
            if wire.write(request):  # the kernel's buffer is full: wait until it drains
                await wire.drain()
            # The buffer is empty between exchanges: this is the start of the answer.
            self.buffer = await wire.receive(_READ_SIZE)
        except LOST as exc:
            raise UnansweredError(exc) from exc
        while True:
            while (head := self._take_head()) is None:
                self.buffer += await wire.receive(_READ_SIZE)
            status, headers, framing, length, keep_alive = parse_head(head)
            if status >= 200:
                break
            if status == 101:
                raise MalformedResponseError("unexpected 101 Switching Protocols")
        self.status, self.headers = status, headers  # for a result if the body fails
        buffer = self.buffer
        if framing is LENGTH and length <= len(buffer) and length <= limit:
            self.buffer = buffer[length:]  # the usual case: the body came with the head
            body = buffer[:length]
        else:
            body = await self._body(framing, length, limit)
        # Bytes beyond the response: the connection is out of step.
        return status, headers, body, keep_alive and not self.buffer

    async def _body(self, framing: Framing, length: int, limit: int) -> bytes:
        if framing is LENGTH:
            if length > limit:  # declared too large: fail before reading
                raise ResponseTooLargeError(f"response of {length} bytes exceeds {limit} bytes")
            return await self.exact(length)
        if framing is CHUNKED:
            return await self.chunked(limit)
        return await self.until_close(limit)

    async def head(self) -> bytes:
        """The next head (or trailer section), through the newline of its last line."""
        while (head := self._take_head()) is None:
            self.buffer += await self.wire.receive(_READ_SIZE)
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
            data = await self.wire.receive(_READ_SIZE)
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
            self.buffer = buffer = buffer + await self.wire.receive(_READ_SIZE)
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
            self.buffer += await self.wire.receive(_READ_SIZE)
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
            have += len(await self.wire.receive(_READ_SIZE))
        raise ResponseTooLargeError(f"response exceeds max_response_bytes={limit}")

    async def until_close(self, limit: int) -> bytes:
        pieces = [self.buffer]
        size = len(self.buffer)
        self.buffer = b""
        while size <= limit:
            try:
                data = await self.wire.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return b"".join(pieces)
            pieces.append(data)
            size += len(data)
        raise ResponseTooLargeError(f"response exceeds max_response_bytes={limit}")
