"""`CallbackApp`: the callback receiver as a plain ASGI 3 application, no framework needed.

Mount it where the gateway's callbacks should arrive (``app.mount("/callbacks", ...)`` in
FastAPI or Starlette); it reads only the last two segments of the path, the call id and its
token, so the mount point does not matter. It must run in the controller's event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, final

from ._callbacks import NOT_POST, Reply, callback_headers

if TYPE_CHECKING:
    from ._callbacks import CallbackRegistry

__all__ = ["CallbackApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@final
class CallbackApp:
    """An ASGI app that hands each callback POSTed to ``.../{call id}/{token}`` to the
    controller, and answers at once (200, or a 4xx for a rejected callback)."""

    def __init__(self, registry: CallbackRegistry) -> None:
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # served on its own: nothing to start or stop
            await _lifespan(receive, send)
            return
        if kind != "http":
            raise ValueError(f"the callback app serves HTTP only, not {kind!r}")
        registry = self._registry
        if scope["method"] != "POST":
            registry.counts.not_post += 1
            await _reply(send, NOT_POST)
            return
        admitted = registry.admit(scope["path"])
        if isinstance(admitted, Reply):
            await _reply(send, admitted)  # the body is not read: a rejection costs nothing
            return
        headers = callback_headers(scope["headers"])
        body: bytes | None = None
        if not registry.too_large(headers.get("content-length")):
            body = await _read(receive, registry.max_body)
        await _reply(send, registry.settle(admitted, headers, body))


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it grows over ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the sender went away
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _reply(send: Send, reply: Reply) -> None:
    body = reply.body
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
