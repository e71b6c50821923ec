"""`Refresher`: keeps the data path's topic map up to date, in the background and on demand."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, final

import anyio

from ._errors import DiscoveryError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ._discovery import Discovery
    from ._dispatch import Dispatcher
    from ._stats import Counts
    from ._topics import TopicMap

__all__ = ["Refresher"]

logger = logging.getLogger("aioconnector")

_REFRESH_RETRY_FIRST = 1.0


@final
class Refresher:
    """The background refresh loop, and on-demand refreshes serialised with it.

    Each map built goes to ``dispatcher`` (`install`); successes and failures are counted in
    ``counts``.
    """

    def __init__(
        self, discovery: Discovery, dispatcher: Dispatcher, counts: Counts, *, interval: float
    ) -> None:
        self._discovery = discovery
        self._dispatcher = dispatcher
        self._counts = counts
        self._interval = interval
        self._lock = anyio.Lock()

    def install(self, topic_map: TopicMap) -> None:
        """Route by ``topic_map`` from now on (the first map too, built at startup)."""
        self._dispatcher.install(topic_map)
        counts = self._counts
        counts.refreshes += 1
        counts.last_refresh = datetime.now(timezone.utc)
        counts.last_refresh_error = None

    async def refresh(self) -> None:
        async with self._lock:
            try:
                topic_map = await self._discovery.fetch()
            except DiscoveryError as exc:
                self._counts.refresh_failures += 1
                self._counts.last_refresh_error = str(exc)
                logger.warning("topic map refresh failed; keeping the last map: %s", exc)
                raise
            self.install(topic_map)
        logger.debug(
            "topic map rebuilt: %d topic(s), %d function(s)",
            len(topic_map.topics()),
            topic_map.function_count,
        )

    async def run_forever(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        interval = self._interval
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            delay = interval
            retry = min(_REFRESH_RETRY_FIRST, interval)
            while True:
                await anyio.sleep(delay)
                try:
                    await self.refresh()
                except DiscoveryError:
                    delay, retry = retry, min(retry * 2, interval)  # sooner than usual, backing off
                else:
                    delay, retry = interval, min(_REFRESH_RETRY_FIRST, interval)
