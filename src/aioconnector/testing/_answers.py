"""The gateway's own answers and headers, built the same way for every endpoint."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import attrs

from ._models import FakeResponse
from ._wire import FRAMING_HEADERS

if TYPE_CHECKING:
    from collections.abc import Mapping

SERVED_BY: Final = "aioconnector-fake-gateway"
JSON: Final = {"Content-Type": "application/json"}
TEXT: Final = {"Content-Type": "text/plain; charset=utf-8"}
NOT_FOUND: Final = FakeResponse(status=404, body=b"404 page not found\n", headers=TEXT)
MALFORMED_JSON: Final = b'[{"name": "fake", "annotations": {"topic": orders}]'


def json_body(payload: object) -> bytes:
    """``payload`` encoded compactly, as Go's encoding/json does."""
    return json.dumps(payload, separators=(",", ":")).encode()


def text(status: int, message: str) -> FakeResponse:
    return FakeResponse(status=status, body=message, headers=TEXT)


def merge(*layers: Mapping[str, str]) -> dict[str, str]:
    """Headers of all ``layers``, a later one overriding an earlier one whatever the case;
    framing headers left out."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for key, value in layer.items():
            if key.lower() not in FRAMING_HEADERS:
                merged[key.lower()] = (key, value)
    return dict(merged.values())


def gateway_headers(call_id: str, start_ns: int, duration: float | None = None) -> dict[str, str]:
    """The headers the gateway adds to an invocation's answer."""
    headers = {"X-Call-Id": call_id, "X-Start-Time": str(start_ns), "X-Served-By": SERVED_BY}
    if duration is not None:
        headers["X-Duration-Seconds"] = f"{duration:f}"
    return headers


def fault(status: int, body: bytes | None, headers: Mapping[str, str]) -> FakeResponse:
    """An injected error answer; the body defaults to the reason phrase."""
    if body is None:
        body = FakeResponse(status=status).reason.encode()
    return FakeResponse(status=status, body=body, headers=merge(TEXT, headers))


def with_headers(response: FakeResponse, extra: Mapping[str, str]) -> FakeResponse:
    """``response`` without framing headers, plus the gateway's ``extra`` headers."""
    return attrs.evolve(response, headers=merge(response.headers, extra))


def throttled(max_inflight: int, retry_after: int | None) -> FakeResponse:
    """of-watchdog's answer when ``max_inflight`` requests are already in progress."""
    response = text(
        429, f"Concurrent request limit exceeded. Max concurrent requests: {max_inflight}\n"
    )
    if retry_after is None:
        return response
    return with_headers(response, {"Retry-After": str(retry_after)})


def unreachable_body(status: int, ref: str) -> bytes | None:
    """The gateway's body when it cannot reach function ``ref`` (None: the reason phrase)."""
    if status == 500:  # faas-provider's proxy, when the call to the function fails
        return f"Can't reach service for: {ref}.".encode()
    if status == 503:  # faas-provider's proxy, when the function has no endpoint
        return f"No endpoints available for: {ref}.".encode()
    return None
