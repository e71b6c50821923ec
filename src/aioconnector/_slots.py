"""`Slots`: the controller's concurrency bound, first come first served, free when uncontended.

anyio's ``CapacityLimiter`` checkpoints twice per acquisition (two cancel scopes and a task
switch even when a token is free): a tenth of an invocation's cost on the fast path. Taking a
free slot here is a counter increment; only a call that must wait uses an event (asyncio's
own under asyncio, see `event_factory`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, final

from ._backend import event_factory

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import Waitable

__all__ = ["Slots"]


@final
class Slots:
    """``total`` slots. A released slot goes straight to the longest waiter, if any."""

    __slots__ = ("_new_event", "_waiters", "borrowed", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.borrowed = 0
        self._waiters: deque[Waitable] = deque()
        self._new_event: Callable[[], Waitable] | None = None  # chosen in the event loop

    def try_acquire(self) -> bool:
        """Take a free slot if there is one and nobody waits for it, without waiting."""
        if self.borrowed < self.total and not self._waiters:
            self.borrowed += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting for one when all are taken. Cancellable while waiting."""
        if self.borrowed < self.total and not self._waiters:
            self.borrowed += 1
            return
        if self._new_event is None:
            self._new_event = event_factory()
        event = self._new_event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self.release()  # handed a slot as the wait was cancelled: pass it on
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the slot changes hands; ``borrowed`` stays
        else:
            self.borrowed -= 1
