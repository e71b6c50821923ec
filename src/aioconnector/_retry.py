"""When to try an invocation again, and how long to wait first. Pure: no I/O, no clock."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import UpstreamConnectionError, UpstreamStatusError

if TYPE_CHECKING:
    from ._results import InvocationResult

__all__ = ["RetryPolicy", "parse_retry_after"]

DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


def _seconds(low: float, *, strict: bool) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < low or (strict and value == low):  # type: ignore[arg-type, operator]
            sign = ">" if strict else ">="
            raise ValueError(f"{attribute.name} must be a number {sign} {low:g}, got {value!r}")

    return check


def _statuses(value: object) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"statuses must be a collection of ints, got {value!r}")
    statuses = frozenset(value)
    bad = [
        s for s in statuses if not isinstance(s, int) or isinstance(s, bool) or not 100 <= s <= 599
    ]
    if bad:
        raise ValueError(
            f"statuses must be HTTP status codes (100-599), got {sorted(map(repr, bad))}"
        )
    return statuses


def _check_bool(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed invocations are retried: exponential backoff with full jitter, within a budget.

    Retried by default: the statuses in ``statuses`` (429, 502, 503, 504) and connections that
    could not be made. *Not* retried unless ``retry_on_timeout=True``: a request that may have
    reached the function (no answer within ``upstream_timeout``, or the connection dropped after
    the request was sent), because functions are not assumed idempotent.
    """

    attempts: int = attrs.field(default=3, validator=_positive_int)
    """Tries in all, the first included; 1 turns retries off."""
    initial_delay: float = attrs.field(default=0.1, validator=_seconds(0, strict=False))
    """Backoff before the first retry, in seconds."""
    max_delay: float = attrs.field(default=5.0, validator=_seconds(0, strict=False))
    """No single wait is longer, ``Retry-After`` included."""
    multiplier: float = attrs.field(default=2.0, validator=_seconds(1, strict=False))
    """Growth of the backoff from one retry to the next."""
    jitter: bool = attrs.field(default=True, validator=_check_bool)
    """Full jitter: wait a random time between 0 and the backoff (spreads retry storms)."""
    budget: float = attrs.field(default=30.0, validator=_seconds(0, strict=True))
    """Seconds from the first attempt after which no retry starts."""
    statuses: frozenset[int] = attrs.field(default=DEFAULT_RETRY_STATUSES, converter=_statuses)
    """Answers worth another try."""
    retry_connection_errors: bool = attrs.field(default=True, validator=_check_bool)
    """Retry when the connection could not be made (the request was never sent)."""
    retry_on_timeout: bool = attrs.field(default=False, validator=_check_bool)
    """Also retry requests that may have reached the function (timeouts, dropped mid-call)."""

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(attempts=1)

    def delay_before_retry(
        self,
        result: InvocationResult,
        *,
        attempt: int,
        elapsed: float,
        now: datetime | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to keep ``result``."""
        if attempt >= self.attempts or not self._retryable(result):
            return None
        backoff = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        delay = (rng or random).uniform(0, backoff) if self.jitter else backoff
        if result.status in (429, 503):
            hinted = parse_retry_after(result.headers.get("retry-after"), now=now)
            if hinted is not None:
                delay = min(self.max_delay, hinted)
        if elapsed + delay > self.budget:
            return None
        return delay

    def _retryable(self, result: InvocationResult) -> bool:
        error = result.error
        if isinstance(error, UpstreamStatusError):
            return error.status in self.statuses
        if isinstance(error, UpstreamConnectionError) and not error.request_sent:
            return self.retry_connection_errors
        if isinstance(error, (UpstreamConnectionError, TimeoutError)):
            return self.retry_on_timeout  # it may have reached the function
        return False


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit() alone accepts "¹"
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
