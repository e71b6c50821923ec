"""Fetching the topic map from the gateway's ``/system/*`` API."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, final

import anyio
import httpx

from ._errors import (
    AuthenticationError,
    DiscoveryError,
    GatewayUnavailableError,
    NotAGatewayError,
    describe,
)
from ._topics import TopicMap, parse_functions, parse_namespaces

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._config import ControllerConfig

    # Told of each failed startup lookup: the error, the attempt (1 first), seconds to the next.
    StartupRetryHook = Callable[[DiscoveryError, int, float], None]

__all__ = ["Discovery"]

logger = logging.getLogger("aioconnector")

_STARTUP_FIRST_DELAY = 0.1
_STARTUP_MAX_DELAY = 2.0


@final
class Discovery:
    """Builds a fresh `TopicMap` from the gateway on every call to :meth:`fetch`."""

    def __init__(self, client: httpx.AsyncClient, config: ControllerConfig) -> None:
        self._client = client
        self._config = config
        # gateway_url is normalised (no trailing slash), so a base path is kept and no "//" appears.
        self._base = config.gateway_url
        creds = config.credentials
        self._auth = None if creds is None else httpx.BasicAuth(creds.user, creds.password)
        self._reported_skips: frozenset[str] = frozenset()

    async def fetch(self) -> TopicMap:
        """One complete lookup; raises `DiscoveryError` (or `AuthenticationError`) on failure."""
        namespaces: tuple[str | None, ...]
        if self._config.namespaces is not None:
            namespaces = self._config.namespaces
        else:
            namespaces = await self._namespaces()
        routes: list[tuple[str, tuple[str, ...]]] = []
        annotations: list[tuple[str, Mapping[str, str]]] = []
        skipped: set[str] = set()
        for namespace in namespaces:
            params = None if namespace is None else {"namespace": namespace}
            status, payload = await self._request("/system/functions", params)
            if status == 404:
                raise self._not_a_gateway(namespace)
            _check_status(status, "/system/functions")
            parsed = parse_functions(
                payload,
                namespace=namespace,
                delimiter=self._config.topic_delimiter,
                matching=self._config.topic_matching,
            )
            routes.extend(parsed.routes)
            annotations.extend(parsed.annotations)
            skipped.update(parsed.skipped)
        self._report_skipped(frozenset(skipped))
        return TopicMap.build(routes, annotations, matching=self._config.topic_matching)

    async def fetch_at_startup(self, on_retry: StartupRetryHook | None = None) -> TopicMap:
        """Retry `fetch` with backoff until ``startup_timeout``; 401/403 and a 404 on
        ``/system/functions`` end it at once (they are never transient)."""
        timeout = self._config.startup_timeout
        delay = _STARTUP_FIRST_DELAY
        last: DiscoveryError | None = None
        with anyio.move_on_after(timeout):
            for attempt in itertools.count(1):
                try:
                    return await self.fetch()
                except (AuthenticationError, NotAGatewayError):
                    raise
                except DiscoveryError as exc:
                    last = exc
                    logger.info(
                        "gateway not ready (attempt %d: %s); retrying in %.1fs", attempt, exc, delay
                    )
                    if on_retry is not None:
                        on_retry(exc, attempt, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, _STARTUP_MAX_DELAY)
        raise GatewayUnavailableError(
            f"could not build the topic map from {self._config.gateway_url} within "
            f"startup_timeout={timeout}s; last error: {last or 'lookup still running'}. "
            "Check that gateway_url points at the OpenFaaS gateway and that it is up."
        ) from last

    def _not_a_gateway(self, namespace: str | None) -> NotAGatewayError:
        query = "" if namespace is None else f"?namespace={namespace}"
        also = "" if namespace is None else f", or namespace {namespace!r} does not exist"
        return NotAGatewayError(
            f"GET /system/functions{query} answered HTTP 404: {self._base} is not an OpenFaaS "
            f"gateway, or gateway_url has a wrong base path{also}"
        )

    async def _namespaces(self) -> tuple[str | None, ...]:
        status, payload = await self._request("/system/namespaces", None)
        if status == 404:  # an older gateway without namespace support
            return (None,)
        _check_status(status, "/system/namespaces")
        return parse_namespaces(payload) or (None,)

    async def _request(self, path: str, params: dict[str, str] | None) -> tuple[int, bytes]:
        """The status and, for a 2xx answer, the body (else ``b""``) of ``GET path``."""
        timeout = self._config.lookup_timeout
        url = self._base + path
        try:
            with anyio.fail_after(timeout):
                async with self._client.stream("GET", url, params=params, auth=self._auth) as r:
                    status = r.status_code
                    self._check_auth(status, path)
                    payload = await self._read(r, path) if 200 <= status < 300 else b""
        except TimeoutError:
            raise DiscoveryError(f"GET {path} timed out after lookup_timeout={timeout}s") from None
        except httpx.HTTPError as exc:
            raise DiscoveryError(f"GET {path} failed: {describe(exc)}") from exc
        return status, payload

    async def _read(self, response: httpx.Response, path: str) -> bytes:
        """The body, failing as soon as it is known to exceed ``max_lookup_bytes``."""
        limit = self._config.max_lookup_bytes
        declared = response.headers.get("content-length", "")
        # Decoded bytes are counted, so a compressed body cannot expand past the limit either.
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(path, limit, f"declares {declared} bytes")
        pieces: list[bytes] = []
        size = 0
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > limit:
                raise _too_large(path, limit, f"sent more than {limit} bytes")
            pieces.append(piece)
        return b"".join(pieces)

    def _check_auth(self, status: int, path: str) -> None:
        if status in (401, 403):
            hint = (
                "the credentials were rejected"
                if self._auth is not None
                else "the gateway requires credentials: configure a user and password "
                "(credentials=BasicAuth(...), or basic_auth=true with secret_mount_path)"
            )
            raise AuthenticationError(f"GET {path} answered HTTP {status}: {hint}")

    def _report_skipped(self, skipped: frozenset[str]) -> None:
        # Warn once per change, not on every refresh.
        if skipped and skipped != self._reported_skips:
            logger.warning(
                "skipped %d function(s) or topic(s) that cannot be invoked: %s",
                len(skipped),
                ", ".join(sorted(skipped)[:10]),
            )
        self._reported_skips = skipped


def _check_status(status: int, path: str) -> None:
    if not 200 <= status < 300:
        raise DiscoveryError(f"GET {path} answered HTTP {status}")


def _too_large(path: str, limit: int, what: str) -> DiscoveryError:
    return DiscoveryError(
        f"GET {path} {what}, over max_lookup_bytes={limit} (the max_lookup_bytes setting, "
        "env variable max_lookup_bytes); the response was dropped"
    )
