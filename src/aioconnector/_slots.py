"""`Slots`: the controller's concurrency bound, first come first served, free when uncontended.

anyio's ``CapacityLimiter`` checkpoints twice per acquisition (two cancel scopes and a task
switch even when a token is free): a tenth of an invocation's cost on the fast path. Taking a
free slot here is a counter increment; only a call that must wait joins a `WaiterQueue`.
"""

from __future__ import annotations

from typing import final

from ._waiters import WaiterQueue

__all__ = ["Slots"]


@final
class Slots:
    """``total`` slots. A released slot goes straight to the longest waiter, if any."""

    __slots__ = ("_waiters", "borrowed", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.borrowed = 0
        # A waiter handed a slot and cancelled before it resumed gives the slot back.
        self._waiters = WaiterQueue(lost_turn=self.release)

    def try_acquire(self) -> bool:
        """Take a free slot if there is one and nobody waits for it, without waiting."""
        if self.borrowed < self.total and not self._waiters:
            self.borrowed += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting for one when all are taken. Cancellable while waiting."""
        if not self.try_acquire():
            await self._waiters.wait()  # woken by release(), which hands its slot over

    def release(self) -> None:
        if self._waiters:
            self._waiters.wake()  # the slot changes hands; ``borrowed`` stays
        else:
            self.borrowed -= 1
