"""The Prometheus collector: the controller's counters, read when Prometheus scrapes.

Imported only when metrics are turned on (``AsyncController(config, metrics=True)``), as is
prometheus-client (the ``aioconnector[prometheus]`` extra). Every value comes from
`AsyncController.stats()` and the per-function recorders (`_observe`) at scrape time: the data
path does no work for a metric that ``stats()`` already counts.

Labels stay bounded: function names come from the gateway, and a message's topic becomes a
label only when it was in the topic map (routed); every other message is counted under the one
topic label value ``unmatched``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._observe import DURATION_BUCKETS, error_kind

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._controller import AsyncController

__all__ = ["PREFIX", "ControllerCollector"]

PREFIX: Final = "aioconnector_"
UNMATCHED: Final = "unmatched"  # the topic label of every message whose topic was not routed
_BOUNDS: Final = (*(f"{bound:g}" for bound in DURATION_BUCKETS), "+Inf")


@final
class ControllerCollector(Collector):
    """A ``prometheus_client`` collector of one controller's metrics (see the README's table)."""

    def __init__(self, controller: AsyncController) -> None:
        self._controller = controller

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples: a registry checks their names for clashes."""
        return iter(self._families(with_samples=False))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(with_samples=True))

    def _families(self, *, with_samples: bool) -> list[Metric]:  # noqa: PLR0915 - one table
        controller = self._controller
        stats = controller.stats()
        dispatch = controller._dispatch
        families: list[Metric] = []

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            families.append(family)
            return family

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            families.append(family)
            return family

        messages = counter(
            "messages",
            "Messages given to invoke/submit, by topic (routed topics only) and outcome",
            ("topic", "outcome"),
        )
        invocations = counter(
            "invocations",
            "Finished invocations (retries included) by function and HTTP status code, or "
            "error kind when no answer came (timeout, connection, cancelled, too_large)",
            ("function_name", "code"),
        )
        durations = HistogramMetricFamily(
            PREFIX + "invocation_duration_seconds",
            "Seconds from an invocation's first request to its last answer, by function",
            labels=("function_name",),
        )
        families.append(durations)
        retries = counter("retries", "Requests made again after a failure", ("function_name",))
        in_flight = gauge(
            "invocations_in_flight", "Invocations holding a concurrency slot (max_concurrency)"
        )
        fn_in_flight = gauge(
            "function_requests_in_flight", "Requests on the wire, by function", ("function_name",)
        )
        fn_waiting = gauge(
            "function_waiting",
            "Invocations waiting for their function's turn (its limit or Retry-After gate)",
            ("function_name",),
        )
        fn_limit = gauge(
            "function_concurrency_limit",
            "A function's concurrency limit (adaptive or annotated); absent when none",
            ("function_name",),
        )
        overloads = counter(
            "function_overloads",
            "Overload signals (429, 502-504, timeouts, refused connections), by function",
            ("function_name",),
        )
        denied = counter(
            "function_retries_denied", "Retries refused by the retry budget", ("function_name",)
        )
        refreshes = counter("topic_map_refreshes", "Successful topic-map builds")
        refresh_failures = counter("topic_map_refresh_failures", "Failed topic-map builds")
        age = gauge(
            "topic_map_age_seconds", "Seconds since the topic map was last built successfully"
        )
        topics = gauge("topic_map_topics", "Topics in the topic map")
        functions = gauge("topic_map_functions", "Functions in the topic map")
        full = gauge(
            "result_streams_full", "Results streams full while invocations wait to hand results"
        )
        settled = counter(
            "source_messages_settled",
            "Messages run_source settled, by settlement (ack, retry, unmatched, invalid)",
            ("settlement",),
        )
        source_in_flight = gauge(
            "source_messages_in_flight", "Messages run_source fetched and has not settled yet"
        )
        if not with_samples:
            return families

        routed = dict(dispatch.per_topic or {})
        for topic, count in sorted(routed.items()):
            messages.add_metric((topic, "matched"), count)
        messages.add_metric((UNMATCHED, "unmatched"), stats.unmatched_messages)
        messages.add_metric((UNMATCHED, "invalid"), stats.invalid_messages)
        for function, recorder in sorted(dispatch.recorders().items()):
            # Copies first: prometheus-client's own server scrapes from another thread.
            for key, count in sorted(dict(recorder.codes).items(), key=_code_order):
                invocations.add_metric((function, _code(key)), count)
            cumulative, total = [], 0
            for bound, count in zip(_BOUNDS, list(recorder.buckets), strict=True):
                total += count
                cumulative.append((bound, total))
            durations.add_metric((function,), cumulative, recorder.sum)
            retries.add_metric((function,), recorder.retries)
        in_flight.add_metric((), stats.in_flight)
        for function, state in stats.per_function.items():
            fn_in_flight.add_metric((function,), state.in_flight)
            fn_waiting.add_metric((function,), state.waiting)
            if state.limit is not None:
                fn_limit.add_metric((function,), state.limit)
            overloads.add_metric((function,), state.overloads)
            denied.add_metric((function,), state.denied_retries)
        refreshes.add_metric((), stats.refreshes)
        refresh_failures.add_metric((), stats.refresh_failures)
        if stats.last_refresh is not None:
            age.add_metric((), max(0.0, time.time() - stats.last_refresh.timestamp()))
        topics.add_metric((), stats.topics)
        functions.add_metric((), stats.functions)
        full.add_metric((), stats.streams_full)
        for settlement, count in sorted(stats.settled.items()):
            settled.add_metric((settlement,), count)
        source_in_flight.add_metric((), stats.source_in_flight)
        return families


def _code(key: int | type) -> str:
    return str(key) if isinstance(key, int) else error_kind(key)


def _code_order(item: tuple[int | type, int]) -> tuple[int, str]:
    key = item[0]
    return (key, "") if isinstance(key, int) else (1000, error_kind(key))
