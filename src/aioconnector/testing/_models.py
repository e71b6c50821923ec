"""The values a fake gateway hands out and takes in: responses, recorded requests, handlers."""

from __future__ import annotations

import http
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

import attrs

if TYPE_CHECKING:
    import httpx

__all__ = ["FakeResponse", "Handler", "RecordedRequest"]


def _to_body(value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _to_headers(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


def _check_status(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 200 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an HTTP status from 200 to 599, got {value!r}")


@attrs.frozen(kw_only=True)
class FakeResponse:
    """What a fake function answers: a status, a body and headers.

    ``body`` may be given as ``str`` (encoded as UTF-8). The gateway adds its own headers
    (``X-Call-Id``, ``X-Start-Time``, ``X-Duration-Seconds``) and the framing
    (``Content-Length``); framing headers set here are ignored.
    """

    status: int = attrs.field(default=200, validator=_check_status)
    body: bytes = attrs.field(default=b"", converter=_to_body)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_to_headers, hash=False)

    @property
    def reason(self) -> str:
        """The standard reason phrase of ``status`` (empty for an unassigned code)."""
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return ""


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request as the gateway received it; also what a function handler is called with.

    ``path`` is the raw path as sent (base path included, no percent-decoding), ``query`` the
    raw query string without ``?``. ``function`` is the address ``name.namespace`` of the
    function a ``/function/`` or ``/async-function/`` request was for (namespace defaulted to
    ``openfaas-fn``, whether or not the function exists), else ``None``; ``extra_path`` is what
    followed the function name in the path (``""`` when nothing did). ``time`` is
    ``anyio.current_time()`` when the request was complete, ``in_flight`` the number of requests
    the gateway was handling at that moment, this one included.
    """

    method: str
    path: str
    query: str
    headers: httpx.Headers = attrs.field(hash=False)
    body: bytes
    time: float
    in_flight: int
    function: str | None = None
    extra_path: str = ""
    is_async: bool = False
    """True for an ``/async-function/`` request (the handler then runs in the background)."""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode(errors="replace")


Handler: TypeAlias = (
    FakeResponse | Callable[[RecordedRequest], FakeResponse | Awaitable[FakeResponse]]
)
"""A fake function: a fixed :class:`FakeResponse`, or a callable (sync or async) from the
:class:`RecordedRequest` to one."""
