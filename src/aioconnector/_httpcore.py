"""A fix for httpcore: a connection whose TLS handshake is cancelled is closed at once."""

# ruff: noqa: ASYNC109 - the timeout parameters are httpcore's interface, not ours

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import httpcore

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable

    import httpx

__all__ = ["close_handshakes_on_cancel"]


def close_handshakes_on_cancel(transport: httpx.AsyncHTTPTransport) -> None:
    """Make ``transport`` close a connection whose TLS handshake is cancelled.

    httpcore 1.0 closes the TCP connection when ``start_tls`` raises an ``Exception`` only: a
    cancellation (``startup_timeout``, ``lookup_timeout``, shutdown, the caller's) landing
    mid-handshake left the socket open until garbage collection, with a ResourceWarning.
    The pool's network backend is private; if httpx ever moves it, nothing is wrapped.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.AsyncNetworkBackend):
        pool._network_backend = _ClosingBackend(backend)  # type: ignore[union-attr]


class _ClosingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, with streams that close when their handshake is cancelled."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _ClosingStream(stream)

    async def connect_unix_socket(  # pragma: no cover - the controller never asks for one
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._backend.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - used by retries only
        await self._backend.sleep(seconds)


class _ClosingStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            return await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
