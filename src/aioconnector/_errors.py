"""The exceptions of aioconnector, all under one base.

::

    ConnectorError
     ├── ControllerStateError (also RuntimeError)   controller not entered, closing, or reused
     ├── MissingExtraError (also ImportError)       an optional extra (a broker client,
     │                                         prometheus-client, opentelemetry-api) is missing
     ├── DiscoveryError                             a /system/* lookup failed
     │    ├── AuthenticationError                   the gateway answered 401/403: fix credentials
     │    ├── NotAGatewayError                      /system/functions answered 404: wrong URL
     │    └── GatewayUnavailableError               no topic map within startup_timeout
     └── InvocationError                            one invocation did not succeed; carried in
          │                                         InvocationResult.error, never raised by invoke()
          ├── UpstreamStatusError                   the function (or gateway) answered non-2xx
          ├── UpstreamTimeoutError (also TimeoutError)  no answer within upstream_timeout
          ├── UpstreamConnectionError (also ConnectionError)  could not connect, or connection lost
          ├── ResponseTooLargeError                 body over max_response_bytes, or head
          │                                         over 100 KiB
          └── InvocationCancelledError              cancelled by shutdown after drain_timeout

Invalid arguments raise the builtin ``ValueError`` or ``TypeError`` at the call site.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the builtin on 3.11+, the backport on 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "AuthenticationError",
    "ConnectorError",
    "ControllerStateError",
    "DiscoveryError",
    "GatewayUnavailableError",
    "InvocationCancelledError",
    "InvocationError",
    "MissingExtraError",
    "NotAGatewayError",
    "ResponseTooLargeError",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
]


class ConnectorError(Exception):
    """Base class of every error aioconnector raises or reports."""


class ControllerStateError(ConnectorError, RuntimeError):
    """The controller is not running: not entered yet, shutting down, closed, or entered twice."""


class MissingExtraError(ConnectorError, ImportError):
    """An optional dependency is not installed: a packaged connector's broker client,
    prometheus-client (``metrics=``) or opentelemetry-api (``tracing=``). The message is one
    line that names the ``pip install 'aioconnector[<extra>]'`` to run."""


class DiscoveryError(ConnectorError):
    """A lookup of namespaces or functions on the gateway failed (status, bad JSON, timeout,
    a response over ``max_lookup_bytes``)."""


class AuthenticationError(DiscoveryError):
    """The gateway rejected the credentials (HTTP 401 or 403) on ``/system/*``."""


class NotAGatewayError(DiscoveryError):
    """``/system/functions`` answered HTTP 404: ``gateway_url`` does not point at an OpenFaaS
    gateway (another server, or a wrong base path). Never retried: a 404 is not transient."""


class GatewayUnavailableError(DiscoveryError):
    """The first topic map could not be built within ``startup_timeout``."""


class InvocationError(ConnectorError):
    """An invocation did not succeed. Reported in ``InvocationResult.error``, not raised."""


class UpstreamStatusError(InvocationError):
    """The gateway or the function answered with a status outside 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"function answered HTTP {status}")
        self.status = status


class UpstreamTimeoutError(InvocationError, TimeoutError):
    """No complete answer within ``upstream_timeout``."""


class UpstreamConnectionError(InvocationError, ConnectionError):
    """The connection to the gateway could not be made or was lost mid-request.

    ``request_sent`` is False when the request surely never left (the connection could not be
    made): such a failure is safe to retry. True means it may have reached the function.
    """

    def __init__(self, message: str, *, request_sent: bool) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class ResponseTooLargeError(InvocationError):
    """The response body was larger than ``max_response_bytes``, or its head (status line and
    headers, through the blank line) larger than 100 KiB; it was not kept."""


class InvocationCancelledError(InvocationError):
    """The controller shut down and cancelled this invocation after ``drain_timeout``."""


def describe(exc: BaseException) -> str:
    """``Type: message``, taking the message from the first link of the cause/context chain
    that has one (on trio, a TLS failure arrives as ``ConnectError('')`` around the real
    ``SSLCertVerificationError``)."""
    link: BaseException | None = exc
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        text = str(link)
        if text:
            return f"{type(exc).__name__}: {text}"
        link = link.__cause__ or link.__context__
    return type(exc).__name__


def only_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a task group wrapped, or None when it holds several.

    Raise the result *outside* the ``except`` block that caught the group, so that it keeps
    its own ``__cause__`` and ``__context__`` and users see their error exactly as raised.
    """
    return group.exceptions[0] if len(group.exceptions) == 1 else None
