"""`WaiterQueue`: tasks waiting for their turn, first come first served.

One queue serves the three places where a task waits for something another task frees: a
concurrency slot (`Slots`), a job for an idle worker (`WorkerPool`) and a pooled connection
(`FastInvoker`). A task given its turn and cancelled before it could take it must not lose the
turn for everyone: the owner's ``lost_turn`` passes it on.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, final

from ._runtime import event_factory

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._runtime import Waitable

__all__ = ["WaiterQueue"]


@final
class WaiterQueue(deque["Waitable"]):
    """Waiting tasks (their events), woken one at a time in the order they came.

    A deque, so that asking whether anyone waits (``if queue:``) costs no Python call: the hot
    path asks on every slot it takes and gives back. ``lost_turn()`` runs when a task that
    `wake` chose is cancelled before it resumed: the owner gives the turn to the next waiter,
    or back to where it came from.
    """

    __slots__ = ("_lost_turn", "_new_event")

    def __init__(self, lost_turn: Callable[[], None]) -> None:
        super().__init__()
        self._new_event: Callable[[], Waitable] | None = None  # chosen in the event loop
        self._lost_turn = lost_turn

    async def wait(self) -> None:
        """Wait until `wake` gives this task its turn. Cancellable."""
        if self._new_event is None:
            self._new_event = event_factory()
        event = self._new_event()
        self.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self._lost_turn()  # chosen, then cancelled: the turn goes on
            else:
                self.remove(event)
            raise

    def wake(self) -> None:
        """Give the longest-waiting task its turn; there must be one (check ``if queue``)."""
        self.popleft().set()
