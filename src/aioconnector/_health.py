"""`serve_health`: ``/healthz``, ``/readyz`` and ``/metrics`` on a small HTTP/1.1 server.

For connectors that have no web server of their own (``aioconnector connect`` runs one with
``--health-port``): a Kubernetes Deployment probes it and Prometheus scrapes it. anyio and h11
(httpx's own HTTP/1.1 parser) only, so it runs on asyncio and trio; one task per connection,
each bounded by an idle timeout; GET and HEAD only.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final

import anyio
import h11
from anyio.abc import SocketAttribute

from ._h11 import answer, next_event

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import ByteStream, TaskStatus

    from ._controller import AsyncController

__all__ = ["READY_AFTER_INTERVALS", "serve_health"]

#: /readyz fails once the topic map is older than this many ``rebuild_interval``s.
READY_AFTER_INTERVALS: Final = 3
_READ_SIZE: Final = 4096
_MAX_HEAD: Final = 8 * 1024


async def serve_health(
    controller: AsyncController,
    port: int,
    *,
    host: str = "127.0.0.1",
    ready: Callable[[], bool] | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``controller``'s health on ``host``:``port`` (0: a free port) until cancelled.

    - ``/healthz``: 200 while the process runs (liveness).
    - ``/readyz``: 200 when the controller is running, its topic map was built within
      ``READY_AFTER_INTERVALS`` times ``rebuild_interval``, and ``ready()`` (e.g. "the source is
      connected") is true; else 503 saying why.
    - ``/metrics``: the controller's `metrics_registry` in Prometheus' text format; 404 when
      metrics are off.

    With ``port = await tg.start(serve_health, controller, 0)`` it reports the bound port
    once it listens.
    Kubernetes probes reach a pod on its own address: listen on ``host="0.0.0.0"`` there.
    """
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    if ready is not None and not callable(ready):
        raise TypeError(f"ready must be callable, got {ready!r}")
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:  # say which setting
        raise OSError(exc.errno, f"health port {host}:{port}: {exc.strerror}") from exc
    async with listener:
        task_status.started(listener.listeners[0].extra(SocketAttribute.local_port))
        routes = _Routes(controller, ready)
        await listener.serve(routes.connection)


class _Routes:
    def __init__(self, controller: AsyncController, ready: Callable[[], bool] | None) -> None:
        self._controller = controller
        self._ready = ready

    async def connection(self, stream: ByteStream) -> None:
        async with stream:
            connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
            try:
                while await self._exchange(connection, stream):
                    connection.start_next_cycle()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError):
                pass  # the client went away, or went quiet
            except h11.ProtocolError:
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await answer(connection, stream, 400, b"bad request\n", head=False)

    async def _exchange(self, connection: h11.Connection, stream: ByteStream) -> bool:
        request = await next_event(connection, stream, _READ_SIZE)
        if not isinstance(request, h11.Request):
            return False  # closed while idle
        while True:  # a probe's body, if any, means nothing
            event = await next_event(connection, stream, _READ_SIZE)
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.ConnectionClosed):
                return False
        head = request.method == b"HEAD"
        if request.method not in (b"GET", b"HEAD"):
            return await answer(connection, stream, 405, b"GET or HEAD only\n", head=head)
        path = request.target.decode("latin-1").partition("?")[0]
        if path == "/healthz":
            return await answer(connection, stream, 200, b"ok\n", head=head)
        if path == "/readyz":
            problem = self._not_ready()
            if problem is None:
                return await answer(connection, stream, 200, b"ready\n", head=head)
            return await answer(connection, stream, 503, problem.encode() + b"\n", head=head)
        if path == "/metrics":
            registry = self._controller.metrics_registry
            if registry is None:
                text = b"metrics are off: AsyncController(config, metrics=True)\n"
                return await answer(connection, stream, 404, text, head=head)
            from prometheus_client import (  # noqa: PLC0415 - metrics on: installed
                CONTENT_TYPE_LATEST,
                generate_latest,
            )

            body = generate_latest(registry)
            return await answer(
                connection, stream, 200, body, content_type=CONTENT_TYPE_LATEST, head=head
            )
        return await answer(connection, stream, 404, b"not found\n", head=head)

    def _not_ready(self) -> str | None:
        """Why the connector is not ready, or None."""
        controller = self._controller
        if not controller.running:
            return "the controller is not running"
        stats = controller.stats()
        limit = READY_AFTER_INTERVALS * controller.config.rebuild_interval
        if stats.last_refresh is None:
            return "no topic map yet"
        age = (datetime.now(timezone.utc) - stats.last_refresh).total_seconds()
        if age > limit:
            why = stats.last_refresh_error or "no refresh"
            return f"the topic map is {age:.0f}s old (limit {limit:g}s): {why}"
        if self._ready is not None and not self._ready():
            return "the source is not connected"
        return None
