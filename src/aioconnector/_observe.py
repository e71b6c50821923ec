"""What the data path records for metrics beyond the counters it keeps anyway.

Most metrics are counters the controller already keeps for `stats()` (`Counts`, each `Lane`),
read when Prometheus scrapes (`_prometheus.Collector`): nothing is recorded twice, so the two
never disagree. What no counter holds — each function's results by status code (or error
kind) and their durations — a `FunctionRecorder` records, one per function, and only while
metrics are on: the data path checks ``lane.recorder is not None`` once per invocation.

Plain ints and floats, no locks: the event loop's one thread is the only writer, and a scrape
from another thread reads values that are at worst one result behind. Nothing here imports
prometheus-client.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Final, final

from ._errors import (
    InvocationCancelledError,
    ResponseTooLargeError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)

if TYPE_CHECKING:
    from ._results import InvocationResult

__all__ = ["DURATION_BUCKETS", "FunctionRecorder", "error_kind"]

#: Upper bounds (seconds) of the invocation duration histogram's buckets; +Inf follows.
#: Prometheus' defaults, which OpenFaaS' ``gateway_functions_seconds`` uses, up to a minute.
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_KINDS: Final[dict[type, str]] = {
    UpstreamTimeoutError: "timeout",
    UpstreamConnectionError: "connection",
    InvocationCancelledError: "cancelled",
    ResponseTooLargeError: "too_large",
}


def error_kind(error: type | None) -> str:
    """The ``code`` label of a result without a status: what kind of failure it was."""
    if error is None:
        return "none"
    for kind, name in _KINDS.items():
        if issubclass(error, kind):
            return name
    return "error"


@final
class FunctionRecorder:
    """One function's results by status (or error class), and their durations' histogram."""

    __slots__ = ("buckets", "codes", "retries", "sum")

    def __init__(self) -> None:
        # By status code, or by the error's class when no answer came (labelled at scrape).
        self.codes: dict[int | type, int] = {}
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # not cumulative; the last is +Inf
        self.sum = 0.0
        self.retries = 0

    def record(self, result: InvocationResult) -> None:
        """An invocation of the function ended with ``result`` (retries included)."""
        status = result.status
        key = status if status is not None else type(result.error)
        codes = self.codes
        codes[key] = codes.get(key, 0) + 1
        duration = result.duration
        self.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1  # "le": bound >= duration
        self.sum += duration
