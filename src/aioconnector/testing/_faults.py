"""Injected faults: how the gateway misbehaves for one function or for its /system/ endpoints."""

from __future__ import annotations

import math
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

SystemEndpoint: TypeAlias = Literal["namespaces", "functions"]
"""The /system/ endpoints a :meth:`FakeGateway.system_fault` can target."""


def _to_headers(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


def _check_times(_instance: object, _attribute: object, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"times must be None (always) or at least 1, got {value!r}")


def _check_latency(_instance: object, _attribute: object, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"latency must be a number of seconds >= 0, got {value!r}")


def _check_status(_instance: object, _attribute: object, value: int | None) -> None:
    if value is not None and not 200 <= value <= 599:
        raise ValueError(f"status must be an HTTP status from 200 to 599, got {value!r}")


@attrs.define(kw_only=True)
class _Fault:
    """Shared part: a delay, then a status, a dropped connection, or the normal answer."""

    latency: float = attrs.field(default=0.0, converter=float, validator=_check_latency)
    status: int | None = attrs.field(default=None, validator=_check_status)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_to_headers)
    body: bytes | None = None
    drop_connection: bool = False
    times: int | None = attrs.field(default=None, validator=_check_times)
    remaining: int | None = attrs.field(init=False)

    @remaining.default
    def _remaining(self) -> int | None:
        return self.times

    def consume(self) -> bool:
        """Count one use; True when this was the last one."""
        if self.remaining is None:
            return False
        self.remaining -= 1
        return self.remaining == 0


def _check_duration(_instance: object, _attribute: object, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"duration must be None (until cleared) or seconds > 0, got {value!r}")


@attrs.define(kw_only=True)
class FunctionFault(_Fault):
    """A fault for one function: how the gateway answers its /function/ and /async-function/.

    With a ``duration`` it lapses that many seconds (of :func:`time.monotonic`) after it was
    made, whatever ``times`` has left.
    """

    duration: float | None = attrs.field(default=None, validator=_check_duration)
    expires_at: float | None = attrs.field(init=False)

    @expires_at.default
    def _expires_at(self) -> float | None:
        return None if self.duration is None else time.monotonic() + self.duration

    def expired(self) -> bool:
        """Whether its time window is over."""
        return self.expires_at is not None and time.monotonic() >= self.expires_at

    def __attrs_post_init__(self) -> None:
        if self.drop_connection and self.status is not None:
            raise ValueError("drop_connection and status exclude each other")
        if not (self.latency or self.status is not None or self.drop_connection):
            raise ValueError("a fault needs latency, status or drop_connection")


@attrs.define(kw_only=True)
class SystemFault(_Fault):
    """A fault for /system/namespaces and/or /system/functions."""

    endpoint: SystemEndpoint | None = None
    malformed_json: bool = False
    truncated: bool = False

    def __attrs_post_init__(self) -> None:
        if self.endpoint not in (None, "namespaces", "functions"):
            raise ValueError(
                f"endpoint must be None, 'namespaces' or 'functions', got {self.endpoint!r}"
            )
        if self.malformed_json and self.truncated:
            raise ValueError("malformed_json and truncated exclude each other")
        if self.drop_connection and (
            self.status is not None or self.malformed_json or self.truncated
        ):
            raise ValueError("drop_connection excludes status, malformed_json and truncated")
        if not (
            self.latency
            or self.status is not None
            or self.drop_connection
            or self.malformed_json
            or self.truncated
        ):
            raise ValueError(
                "a fault needs latency, status, drop_connection, malformed_json or truncated"
            )

    def matches(self, endpoint: SystemEndpoint) -> bool:
        """Whether this fault applies to a request for ``endpoint``."""
        return self.endpoint is None or self.endpoint == endpoint


def _check_attempts(_instance: object, _attribute: object, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"attempts must be an int >= 1, got {value!r}")


def _check_duplicates(_instance: object, _attribute: object, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"duplicates must be an int >= 0, got {value!r}")


def _check_delay(_instance: object, _attribute: object, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"delay must be a number of seconds >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class CallbackMode:
    """How the queue-worker calls back for one function: retried attempts (OpenFaaS Pro), a
    lost callback, duplicates, a delay."""

    attempts: int = attrs.field(default=1, validator=_check_attempts)
    retry_statuses: frozenset[int] = frozenset()
    lose: bool = False
    duplicates: int = attrs.field(default=0, validator=_check_duplicates)
    delay: float = attrs.field(default=0.0, converter=float, validator=_check_delay)
