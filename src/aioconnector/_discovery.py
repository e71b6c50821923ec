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
    from collections.abc import Callable

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
        skipped: set[str] = set()
        for namespace in namespaces:
            params = None if namespace is None else {"namespace": namespace}
            response = await self._request("/system/functions", params)
            if response.status_code == 404:
                raise self._not_a_gateway(namespace)
            payload = _content(response, "/system/functions")
            parsed = parse_functions(
                payload, namespace=namespace, delimiter=self._config.topic_delimiter
            )
            routes.extend(parsed.routes)
            skipped.update(parsed.skipped)
        self._report_skipped(frozenset(skipped))
        return TopicMap.build(routes)

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
        response = await self._request("/system/namespaces", None)
        if response.status_code == 404:  # an older gateway without namespace support
            return (None,)
        return parse_namespaces(_content(response, "/system/namespaces")) or (None,)

    async def _request(self, path: str, params: dict[str, str] | None) -> httpx.Response:
        timeout = self._config.lookup_timeout
        try:
            with anyio.fail_after(timeout):
                response = await self._client.get(self._base + path, params=params, auth=self._auth)
        except TimeoutError:
            raise DiscoveryError(f"GET {path} timed out after lookup_timeout={timeout}s") from None
        except httpx.HTTPError as exc:
            raise DiscoveryError(f"GET {path} failed: {describe(exc)}") from exc
        status = response.status_code
        if status in (401, 403):
            hint = (
                "the credentials were rejected"
                if self._auth is not None
                else "the gateway requires credentials: configure a user and password "
                "(credentials=BasicAuth(...), or basic_auth=true with secret_mount_path)"
            )
            raise AuthenticationError(f"GET {path} answered HTTP {status}: {hint}")
        return response

    def _report_skipped(self, skipped: frozenset[str]) -> None:
        # Warn once per change, not on every refresh.
        if skipped and skipped != self._reported_skips:
            logger.warning(
                "skipped %d function(s) whose name cannot be a URL path segment: %s",
                len(skipped),
                ", ".join(sorted(skipped)[:10]),
            )
        self._reported_skips = skipped


def _content(response: httpx.Response, path: str) -> bytes:
    if not 200 <= response.status_code < 300:
        raise DiscoveryError(f"GET {path} answered HTTP {response.status_code}")
    return response.content
