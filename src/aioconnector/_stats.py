"""The controller's counters (`Counts`) and their public snapshot (`ControllerStats`)."""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - at run time: ControllerStats' hints resolve
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._topics import TopicMap

__all__ = ["ControllerStats", "Counts", "FunctionState"]


@attrs.frozen(kw_only=True)
class FunctionState:
    """One function's delivery state, in :attr:`ControllerStats.per_function`."""

    limit: float | None
    """How many of its requests may be in flight at once: its adaptive limit, or its
    ``com.aioconnector.max_concurrency``; ``None`` when only ``max_concurrency`` bounds it."""
    in_flight: int
    """Its requests on the wire now."""
    waiting: int
    """Its invocations waiting for a turn (the limit reached, or its gate closed)."""
    gate_closed_for: float
    """Seconds until its ``Retry-After`` gate opens; 0 when open."""
    overloads: int
    """Overload signals it gave (429, 502, 503, 504, timeouts, refused connections)."""
    denied_retries: int
    """Retries its retry budget refused: those failures were returned as they were."""


@attrs.frozen(kw_only=True)
class ControllerStats:
    """A snapshot of the controller's counters, from :meth:`AsyncController.stats`."""

    messages: int
    """Messages accepted by ``invoke``/``submit`` (matched or not)."""
    unmatched_messages: int
    """Accepted messages whose topic matched no function (no invocation was made)."""
    invocations_started: int
    invocations_succeeded: int
    invocations_failed: int
    """Invocations whose result was not ok (error statuses, timeouts, cancellations...)."""
    retries: int
    """Requests made again after a retryable failure (see ``RetryPolicy``)."""
    in_flight: int
    """Invocations holding a concurrency slot right now (at most ``max_concurrency``); an
    invocation keeps its slot until its result was handed to every results stream."""
    streams_full: int
    """Results streams that are full while invocations wait to hand them a result (holding
    their slots). The other streams are not held back: they get every result at once."""
    topics: int
    functions: int
    refreshes: int
    """Successful topic-map builds, the first one included."""
    refresh_failures: int
    last_refresh: datetime | None
    """When the topic map was last built successfully (UTC)."""
    last_refresh_error: str | None
    """The last refresh failure's message; ``None`` once a refresh succeeds again."""
    per_function: Mapping[str, FunctionState] = attrs.field(factory=dict)
    """Each function invoked so far, by address: its limit, in flight, waiting, gate."""
    invalid_messages: int = 0
    """Messages ``invoke``/``submit`` refused as invalid (``ValueError``/``TypeError``: a bad
    topic, body or headers); not counted in ``messages``."""
    settled: Mapping[str, int] = attrs.field(factory=dict)
    """Messages `run_source` settled, by settlement (``"ack"``, ``"retry"``, ``"unmatched"``,
    ``"invalid"``), over every run on this controller."""
    source_in_flight: int = 0
    """Messages `run_source` took from its source and has not settled yet."""

    def as_dict(self) -> dict[str, object]:
        """The counters as a JSON-ready dict (``last_refresh`` as an ISO 8601 string)."""
        values: dict[str, object] = attrs.asdict(self)
        if self.last_refresh is not None:
            values["last_refresh"] = self.last_refresh.isoformat()
        return values


@attrs.define
class Counts:
    """What the data path (`Dispatcher`) and the refresh (`Refresher`) count, as they go."""

    messages: int = 0
    unmatched: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    last_refresh: datetime | None = None
    last_refresh_error: str | None = None
    invalid: int = 0
    # run_source's, over every run on the controller: settled by settlement, and in flight.
    settled: dict[str, int] = attrs.Factory(dict)
    source_in_flight: int = 0

    def snapshot(
        self,
        *,
        in_flight: int,
        streams_full: int,
        topic_map: TopicMap,
        per_function: Mapping[str, FunctionState],
    ) -> ControllerStats:
        """The counters with the gauges only the controller knows, as a `ControllerStats`."""
        return ControllerStats(
            messages=self.messages,
            unmatched_messages=self.unmatched,
            invocations_started=self.started,
            invocations_succeeded=self.succeeded,
            invocations_failed=self.failed,
            retries=self.retries,
            in_flight=in_flight,
            streams_full=streams_full,
            topics=len(topic_map.topics()),
            functions=topic_map.function_count,
            refreshes=self.refreshes,
            refresh_failures=self.refresh_failures,
            last_refresh=self.last_refresh,
            last_refresh_error=self.last_refresh_error,
            per_function=per_function,
            invalid_messages=self.invalid,
            settled=dict(self.settled),
            source_in_flight=self.source_in_flight,
        )
