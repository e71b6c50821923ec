"""The one httpx.AsyncClient a controller owns: limits, TLS, and what never to follow."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from ._httpcore import close_handshakes_on_cancel

if TYPE_CHECKING:
    from ._config import ControllerConfig

__all__ = ["open_client"]

logger = logging.getLogger("aioconnector")
_warned_plain_http: set[str] = set()


def open_client(
    config: ControllerConfig, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """A client for lookups and invocations; ``transport``, when given, is used as it is."""
    _warn_if_credentials_travel_in_clear(config)
    size = config.max_concurrency
    if transport is None:
        # Invocations never exceed max_concurrency; the spare connections keep lookups
        # from queueing behind them.
        limits = httpx.Limits(max_connections=size + 2, max_keepalive_connections=size + 2)
        transport = httpx.AsyncHTTPTransport(
            verify=_tls_context(config), limits=limits, trust_env=False
        )
        close_handshakes_on_cancel(transport)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(None),  # deadlines are ours: whole-call, not per-read
        follow_redirects=False,  # credentials never follow a redirect
        trust_env=False,  # no proxy or CA settings picked up behind the user's back
    )


def _tls_context(config: ControllerConfig) -> ssl.SSLContext | bool:
    if not config.gateway_url.startswith("https:"):
        return True  # plain http: skip building a context (it costs ~20 ms)
    try:
        context = ssl.create_default_context(cafile=config.ca_bundle)
        if config.client_cert is not None:
            context.load_cert_chain(config.client_cert, config.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load TLS files (ca_bundle={config.ca_bundle!r}, "
            f"client_cert={config.client_cert!r}, client_key={config.client_key!r}): {exc}"
        ) from exc
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _warn_if_credentials_travel_in_clear(config: ControllerConfig) -> None:
    parts = urlsplit(config.gateway_url)
    host = parts.hostname or ""
    if config.credentials is None or parts.scheme != "http" or _is_loopback(host):
        return
    if config.gateway_url not in _warned_plain_http:  # once per gateway, not per controller
        _warned_plain_http.add(config.gateway_url)
        logger.warning(
            "credentials are sent over plain http to %s; use https outside a trusted network",
            host,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
