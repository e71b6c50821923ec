"""The response side of HTTP/1.1 as pure functions, with h11's rules (what httpx parses with).

Lines end in LF or CRLF; NUL, bare CR, VT and FF are invalid anywhere in a head; obsolete line
folding is joined with one space; repeated Content-Length values must agree and count once; the
only Transfer-Encoding is ``chunked``. Headers come out as ``HttpxInvoker`` reports them: names
lower-cased, repeats joined with ``", "``, decoded as ASCII, else UTF-8, else Latin-1.
``tests/test_fastpath.py`` checks all of this against h11 itself, on generated heads.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = [
    "BLANK_LINE",
    "CHUNKED",
    "CHUNK_LINE",
    "LENGTH",
    "UNTIL_CLOSE",
    "Framing",
    "Head",
    "MalformedResponseError",
    "check_trailers",
    "parse_head",
]

BLANK_LINE: Final = re.compile(rb"\n\r?\n")
CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: [^\x00\n\r\x0b\x0c]*)?")
_TOKEN: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FOLD: Final = re.compile(r"\n[ \t]+")
# Header names seen before, as sent -> lower-cased. A gateway sends a few names over and over:
# a hit skips validating and lower-casing. Bounded: beyond the bound, names are not added.
_NAMES: dict[str, str] = {}
_NAMES_BOUND: Final = 512


class MalformedResponseError(Exception):
    """The response is not valid HTTP/1.1."""


class Framing(enum.Enum):
    """How the body of a response is delimited."""

    LENGTH = "length"  # Content-Length bytes (0 for 1xx, 204 and 304 answers)
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until close"  # neither: the body ends when the server closes


# The members as plain names: an enum member lookup costs as much as a dict's (Python 3.11).
LENGTH: Final = Framing.LENGTH
CHUNKED: Final = Framing.CHUNKED
UNTIL_CLOSE: Final = Framing.UNTIL_CLOSE


# A parsed head: status, headers, body framing, the Content-Length (for LENGTH), keep-alive.
Head = tuple[int, dict[str, str], Framing, int, bool]


def parse_head(head: bytes) -> Head:
    """Parse a response head (through the newline ending its last line, blank line excluded).

    Returns the status, the headers, the body framing and length, and whether the connection
    may be kept alive. Raises ``MalformedResponseError`` for anything h11 rejects.
    """
    first, _, block = _normalise(head).partition(b"\n")
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise MalformedResponseError(f"invalid status line {first[:100]!r}")
    status = int(match[2])
    if status < 100:
        raise MalformedResponseError(f"invalid status {status}")
    return _finish_head(status, match[1] >= b"1.1", _headers(block))


def _finish_head(status: int, keep_alive: bool, headers: dict[str, str]) -> Head:
    """Check and normalise the framing headers (as h11 does) and work out the body framing.

    ``keep_alive`` says whether the HTTP version allows it (1.1 or later).
    """
    length = headers.get("content-length")
    if length is not None and not (length.isdigit() and length.isascii() and len(length) <= 20):
        # h11 accepts a list of equal lengths (also over repeated headers) and keeps one.
        lengths = {part.strip(" \t") for part in length.split(",")}
        length = lengths.pop()
        if lengths or not (length.isdigit() and length.isascii()) or len(length) > 20:
            raise MalformedResponseError(f"invalid Content-Length {headers['content-length']!r}")
        headers["content-length"] = length
    chunked = "transfer-encoding" in headers
    if chunked:
        if headers["transfer-encoding"].lower() != "chunked":  # repeats included
            raise MalformedResponseError("the only Transfer-Encoding supported is chunked")
        headers["transfer-encoding"] = "chunked"
    connection = headers.get("connection")
    if connection is not None and "close" in (
        token.strip(" \t") for token in connection.lower().split(",")
    ):
        keep_alive = False
    if status in (204, 304) or status < 200:
        return status, headers, LENGTH, 0, keep_alive
    if chunked:
        return status, headers, CHUNKED, 0, keep_alive
    if length is not None:
        return status, headers, LENGTH, int(length), keep_alive
    return status, headers, UNTIL_CLOSE, 0, False


def check_trailers(trailers: bytes) -> None:
    """Raise ``MalformedResponseError`` unless the trailer section (as a head) is well-formed."""
    _headers(_normalise(trailers))


def _normalise(head: bytes) -> bytes:
    """A head or trailer section with LF line ends and the last one removed; checked."""
    head = head.replace(b"\r\n", b"\n")
    if len(head.translate(None, b"\r\x00\x0b\x0c")) != len(head):  # one pass for all four
        raise MalformedResponseError("invalid character in response head")
    return head[:-1]


def _headers(block: bytes) -> dict[str, str]:
    """Header lines (LF-separated, checked by `_normalise`) as ``InvocationResult`` has them."""
    headers: dict[str, str] = {}
    if not block:
        return headers
    text = _decode(block)
    if "\n " in text or "\n\t" in text:
        text = _FOLD.sub(" ", text)
    names = _NAMES
    for line in text.split("\n"):
        name, colon, value = line.partition(":")
        key = names.get(name)
        if key is None or not colon:
            key = _new_name(name, colon)
        value = value.strip(" \t")  # any other character was checked by `_normalise`
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _decode(data: bytes) -> str:
    """Header bytes as httpx decodes them: ASCII, else UTF-8, else Latin-1 (all of them alike)."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")


def _new_name(name: str, colon: str) -> str:
    if not colon or _TOKEN.fullmatch(name) is None:
        raise MalformedResponseError(f"invalid header line {name[:40]!r}")
    key = name.lower()
    if len(_NAMES) < _NAMES_BOUND:
        _NAMES[name] = key
    return key
