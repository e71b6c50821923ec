"""`Drain`: what the controller's shutdown waits for, and how it ends what is left."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, final

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["Drain"]

logger = logging.getLogger("aioconnector")

# After drain_timeout, cancelled invocations get this long to hand their results to subscribers.
_CANCEL_GRACE = 5.0


@final
class Drain:
    """Counts the messages whose invocations are in progress; at shutdown, waits for them.

    A message enters (`enter`) when it is admitted and leaves (`leave`) once all its
    invocations ended. `drain` waits until none is left, up to a timeout, then cancels the
    rest: requests in progress through the ``abort`` it is given (the invoker's: one call
    instead of a cancel scope around every request), retry pauses and waits for a function's
    turn (`pause`, `suspend`) through their own scopes.
    """

    __slots__ = ("_pausing", "busy", "cancelling", "idle")

    def __init__(self) -> None:
        # Messages that entered and have not left: changed by `enter` and `leave` only, which
        # the hot paths inline (AsyncController.invoke and submit, Dispatcher.fan_out).
        self.busy = 0
        self.idle: anyio.Event | None = None  # made when drain() begins; set by the last leave
        self._pausing: set[anyio.CancelScope] = set()
        # True once `drain` gave up waiting: no request may start and no retry may wait.
        # Set by `drain` only; a plain attribute, as the hot path reads it for every request.
        self.cancelling = False

    def enter(self) -> None:
        """A message's invocations begin (or are queued for a worker)."""
        self.busy += 1

    def leave(self) -> None:
        """A message's invocations have all ended."""
        self.busy -= 1
        if self.busy == 0 and self.idle is not None:
            self.idle.set()

    async def pause(self, delay: float) -> bool:
        """Sleep before a retry; False when `drain` cut the sleep short."""
        return await self.suspend(functools.partial(anyio.sleep, delay))

    async def suspend(self, wait: Callable[[], Awaitable[object]]) -> bool:
        """``await wait()`` (a pause, a wait for a turn); False when `drain` gave up waiting
        for the messages in progress, before or during it."""
        if self.cancelling:
            return False
        with anyio.CancelScope() as scope:
            self._pausing.add(scope)
            try:
                await wait()
            finally:
                self._pausing.discard(scope)
        return not scope.cancelled_caught

    async def drain(self, drain_timeout: float, abort: Callable[[], None]) -> None:
        """Wait until every message that entered has left, up to ``drain_timeout`` seconds; then
        cancel the rest and give them `_CANCEL_GRACE` seconds to hand over their results.
        Called once, at shutdown, by a caller that shields it from cancellation."""
        idle = self.idle = anyio.Event()
        if self.busy:
            with anyio.move_on_after(drain_timeout):
                await idle.wait()
        if self.busy:
            logger.warning(
                "drain_timeout=%ss passed with %d message(s) in flight; cancelling them",
                drain_timeout,
                self.busy,
            )
            self.cancelling = True
            abort()
            for scope in tuple(self._pausing):
                scope.cancel()
            with anyio.move_on_after(_CANCEL_GRACE):
                await idle.wait()
