"""A fake function's capacity: of-watchdog's max_inflight, a load-dependent latency, counters."""

from __future__ import annotations

import math
from collections import Counter
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Capacity", "FunctionStats", "Latency", "Load"]


def _check_seconds(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):  # also rejects NaN
        raise ValueError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


def _to_seconds(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"seconds must be a number, got {value!r}")
    return float(value)


@attrs.frozen(kw_only=True)
class Latency:
    """How long a fake function takes, growing with how busy it is.

    A request the function admits sleeps ``base + per_inflight * n`` seconds before the
    handler runs, where ``n`` is the number of the function's other requests in progress when
    it arrived (0 for a request alone: it takes ``base``). The sleep is ``anyio.sleep`` (or the
    gateway's ``sleep=``) and cancellable, and counts in ``X-Duration-Seconds``.
    """

    base: float = attrs.field(default=0.0, converter=_to_seconds, validator=_check_seconds)
    per_inflight: float = attrs.field(default=0.0, converter=_to_seconds, validator=_check_seconds)

    def delay(self, others: int) -> float:
        """The seconds a request sleeps when ``others`` requests are already in progress."""
        return self.base + self.per_inflight * others


def _check_max_inflight(_instance: object, _attribute: object, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_inflight must be an int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"max_inflight must be None (no limit) or at least 1, got {value!r}")


def _check_retry_after(_instance: object, _attribute: object, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        # delta-seconds is a whole number (RFC 9110 section 10.2.3)
        raise TypeError(f"retry_after must be a whole number of seconds or None, got {value!r}")
    if value < 0:
        raise ValueError(f"retry_after must be >= 0 seconds, got {value!r}")


def _check_latency(_instance: object, _attribute: object, value: Latency | None) -> None:
    if value is not None and not isinstance(value, Latency):
        raise TypeError(f"latency must be a Latency or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Capacity:
    """What one function can take: see :meth:`FakeGateway.set_capacity`."""

    max_inflight: int | None = attrs.field(default=None, validator=_check_max_inflight)
    retry_after: int | None = attrs.field(default=None, validator=_check_retry_after)
    latency: Latency | None = attrs.field(default=None, validator=_check_latency)

    def __attrs_post_init__(self) -> None:
        if self.retry_after is not None and self.max_inflight is None:
            raise ValueError("retry_after is sent with the 429s of max_inflight: set both")

    def full(self, inflight: int) -> bool:
        """Whether a request arriving now, with ``inflight`` in progress, is turned away."""
        return self.max_inflight is not None and inflight >= self.max_inflight


def _frozen_counts(value: Mapping[int, int]) -> Mapping[int, int]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class FunctionStats:
    """Counters of one function's requests, as :meth:`FakeGateway.function_stats` reads them.

    ``requests`` counts every ``/function/`` and ``/async-function/`` request for it (faulted
    or not); ``throttled`` the 429s answered because ``max_inflight`` requests were in
    progress; ``inflight`` the requests the function admitted and is running now,
    ``peak_inflight`` the most at once. ``statuses`` counts the status of each outcome: the
    answer of a ``/function/`` request, the fault answered to an ``/async-function/`` request
    or else its function's answer (the one its callback carries; the 202 is not counted);
    ``dropped`` the connections closed without an answer.
    """

    requests: int
    throttled: int
    inflight: int
    peak_inflight: int
    statuses: Mapping[int, int] = attrs.field(converter=_frozen_counts)
    dropped: int


@attrs.define
class Load:
    """The live counters of one function address (they outlive a redeploy or removal)."""

    requests: int = 0
    throttled: int = 0
    inflight: int = 0
    peak_inflight: int = 0
    dropped: int = 0
    statuses: Counter[int] = attrs.field(factory=Counter)

    def enter(self) -> int:
        """Admit a request; the number of others in progress before it."""
        others = self.inflight
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        return others

    def leave(self) -> None:
        self.inflight -= 1

    def reset(self) -> None:
        """Zero the counters; the peak restarts from what is in progress."""
        self.requests = self.throttled = self.dropped = 0
        self.peak_inflight = self.inflight
        self.statuses.clear()

    def snapshot(self) -> FunctionStats:
        return FunctionStats(
            requests=self.requests,
            throttled=self.throttled,
            inflight=self.inflight,
            peak_inflight=self.peak_inflight,
            statuses=self.statuses,
            dropped=self.dropped,
        )
