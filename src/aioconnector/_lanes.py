"""`Lane`: one function's delivery state, between the global bound and the wire.

Each function the controller invokes has a lane: how many of its requests may be in flight
(its ``cap``: a fixed limit from its annotations, the adaptive limit, or no limit), the
invocations waiting for a turn, its ``Retry-After`` gate, and its retry budget. The
`Dispatcher` asks the lane before each request and tells it every answer.

A lane is not a task and holds no lock: ``in_flight`` and ``cap`` are plain counters that the
data path reads inline (one comparison per request when nothing limits the function).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, final

from ._errors import UpstreamConnectionError, UpstreamTimeoutError
from ._retry import parse_retry_after
from ._stats import FunctionState
from ._waiters import WaiterQueue

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._observe import FunctionRecorder
    from ._policy import AdaptiveConcurrency, FunctionPolicy, RetryBudget
    from ._results import InvocationResult
    from ._runtime import Timer

__all__ = ["OVERLOAD_STATUSES", "Lane"]

#: Answers that mean "too much for me now": the adaptive limit decreases on them.
OVERLOAD_STATUSES = frozenset({429, 502, 503, 504})
_NO_LIMIT = sys.maxsize
_BUCKETS = 10  # the retry budget's window, in this many steps


@final
class Lane:
    """One function's concurrency limit, waiters, ``Retry-After`` gate and retry budget.

    The data path takes a turn with ``if lane.in_flight < lane.cap and not lane.waiters:
    lane.in_flight += 1`` (else `wait_turn`), and gives it back with `done`.
    """

    __slots__ = (
        "_adaptive",
        "_b_firsts",
        "_b_index",
        "_b_retries",
        "_b_width",
        "_budget",
        "_call_later",
        "_ceiling",
        "_gate_timer",
        "_high",
        "_hold",
        "_hold_next",
        "_last_decrease",
        "_low",
        "_slow_start",
        "budget_end",
        "cap",
        "denied_retries",
        "firsts_now",
        "fixed",
        "gate_until",
        "in_flight",
        "limit",
        "overloads",
        "policy",
        "recorder",
        "waiters",
    )

    def __init__(
        self,
        policy: FunctionPolicy,
        *,
        max_concurrency: int,
        adaptive: AdaptiveConcurrency | None,
        budget: RetryBudget | None,
        call_later: Callable[[float, Callable[[], None]], Timer],
        now: float,
    ) -> None:
        self._call_later = call_later
        self._adaptive = adaptive
        self.fixed = adaptive is None  # no limit to learn: a success needs no bookkeeping
        self.in_flight = 0  # requests of this function on the wire (or about to be)
        self.waiters = WaiterQueue(lost_turn=self._lost_turn)
        self.gate_until = -math.inf  # Retry-After: no request starts before then
        self._gate_timer: Timer | None = None
        self.overloads = 0  # overload signals seen
        self.recorder: FunctionRecorder | None = None  # set by the dispatcher: metrics on
        self.denied_retries = 0  # retries the budget refused
        # Adaptive state (see AdaptiveConcurrency).
        self._slow_start = True
        self._last_decrease = -math.inf
        self._ceiling = _NO_LIMIT  # the cap (whole requests) last refused
        self._hold = 0  # successes to wait before probing above the limit
        self._hold_next = 0 if adaptive is None else adaptive.hold
        self.policy = policy
        self.limit = self._low = self._high = 0.0
        self.cap = 0
        self._set_policy(policy, max_concurrency, initial=True)
        # Retry budget: first attempts and retries per bucket of a sliding window. The data
        # path counts a first attempt inline (`first_attempt`'s two lines): ``firsts_now`` is
        # the current bucket's count until the bucket is turned at ``budget_end``.
        self._budget = budget
        self.firsts_now = 0
        self._b_firsts = [0] * _BUCKETS
        self._b_retries = [0] * _BUCKETS
        self._b_index = 0
        self._b_width = math.inf if budget is None else budget.window / _BUCKETS
        self.budget_end = now + self._b_width

    # -- policy --------------------------------------------------------------------------

    def _set_policy(self, policy: FunctionPolicy, max_concurrency: int, *, initial: bool) -> None:
        self.policy = policy
        own = policy.max_concurrency
        adaptive = self._adaptive
        if adaptive is None:
            self._low, self._high = 1.0, float(own) if own is not None else math.inf
            self.limit = self._high
        else:
            self._high = float(min(adaptive.max or max_concurrency, own or _NO_LIMIT))
            self._low = float(min(adaptive.min, self._high))
            start = float(adaptive.initial) if initial else self.limit
            self.limit = min(max(start, self._low), self._high)
        self._limit_changed()
        self.wake()

    def _limit_changed(self) -> None:
        """The cap follows the limit, except while the gate is closed (then it is 0, and
        `_open_gate` sets it from the limit)."""
        if self.gate_until == -math.inf:
            self.cap = _as_cap(self.limit)

    def update(self, policy: FunctionPolicy, max_concurrency: int) -> None:
        """A new topic map: the function's policy may have changed; what was learnt stays."""
        self._set_policy(policy, max_concurrency, initial=False)

    # -- turns ---------------------------------------------------------------------------

    async def wait_turn(self) -> None:
        """Wait until a request of this function may start; ``in_flight`` counts it then."""
        await self.waiters.wait()

    def wake(self) -> None:
        """Give turns to waiters while the function has room."""
        waiters = self.waiters
        while waiters and self.in_flight < self.cap:
            self.in_flight += 1  # taken on the woken waiter's behalf
            waiters.wake()

    def _lost_turn(self) -> None:
        """A waiter given a turn was cancelled before it took it."""
        self.in_flight -= 1
        self.wake()

    def done(self, result: InvocationResult, sent_at: float) -> None:
        """A request of this function ended with ``result``; it was sent at ``sent_at``."""
        in_flight = self.in_flight
        self.in_flight = in_flight - 1
        if result.ok:
            if self._adaptive is not None:
                self._succeeded(in_flight)
        else:
            self._failed(result, sent_at, sent_at + result.duration)
        if self.waiters:
            self.wake()

    def _succeeded(self, in_flight: int) -> None:
        if in_flight * 2 < self.limit or self.limit >= self._high:
            return  # the limit did not hold the function back, or cannot grow: nothing learnt
        adaptive = self._adaptive
        assert adaptive is not None  # noqa: S101 - only called when adaptive
        if self._slow_start:
            limit = self.limit + 1
        else:
            limit = self.limit + 1 / self.limit
            if int(limit) >= self._ceiling:
                if self._hold > 0:
                    self._hold -= 1  # back at the refused cap: probe only after a while
                    return
                if int(limit) > self._ceiling:  # a probe above the refused cap succeeded
                    self._ceiling = _NO_LIMIT
                    self._hold_next = adaptive.hold
        self.limit = min(limit, self._high)
        self._limit_changed()

    def _failed(self, result: InvocationResult, sent_at: float, now: float) -> None:
        status = result.status
        if status is not None:
            overload = status in OVERLOAD_STATUSES
            if status in (429, 503):
                self._gate(result, now)
        else:
            error = result.error
            overload = isinstance(error, UpstreamTimeoutError) or (
                isinstance(error, UpstreamConnectionError) and not error.request_sent
            )
        if not overload:
            return  # e.g. a 4xx caused by the payload: no signal about capacity
        self.overloads += 1
        adaptive = self._adaptive
        if adaptive is None or sent_at < self._last_decrease:
            return  # sent before the last decrease: that one already accounted for it
        self._last_decrease = now
        # Slow start overshoots by up to twice the capacity (the limit doubles per round trip):
        # its first refusal halves the limit, as TCP's slow start ends, so a function is not
        # flooded for the several round trips that decrease alone would take.
        factor = 0.5 if self._slow_start else adaptive.decrease
        self._slow_start = False
        refused = int(self.limit)
        if self._low < refused >= self._ceiling:
            # A probe refused again: probe this cap less and less often. (Not at the lowest
            # limit: refusals there mean an outage, and recovery must not wait for it.)
            self._hold = self._hold_next
            self._hold_next = min(adaptive.max_hold, self._hold_next * 2)
        else:
            # Refused below the last refused cap: the function's capacity shrank (or another
            # client took some); find the new one without waiting long.
            self._hold = adaptive.hold
        self._ceiling = refused
        self.limit = max(self.limit * factor, self._low)
        self._limit_changed()

    # -- Retry-After gate ------------------------------------------------------------------

    def _gate(self, result: InvocationResult, now: float) -> None:
        """Close the gate for the ``Retry-After`` the function asked (at most the retry
        policy's ``max_delay``): no request of this function starts until then."""
        seconds = parse_retry_after(result.headers.get("retry-after"))
        if not seconds:
            return
        until = now + min(seconds, self.policy.retry.max_delay)
        if until <= self.gate_until:
            return
        if self._gate_timer is not None:
            self._gate_timer.cancel()
        self.gate_until = until
        self.cap = 0
        self._gate_timer = self._call_later(until - now, self._open_gate)

    def _open_gate(self) -> None:
        self._gate_timer = None
        self.gate_until = -math.inf
        self.cap = _as_cap(self.limit)
        self.wake()

    def close(self) -> None:
        """Cancel the gate's timer (the controller is closing)."""
        if self._gate_timer is not None:
            self._gate_timer.cancel()
            self._gate_timer = None

    # -- retry budget ----------------------------------------------------------------------

    def first_attempt(self, now: float) -> None:
        """Count a first attempt: it adds to the retry budget. (The data path inlines this.)"""
        if now >= self.budget_end:
            self.turn_buckets(now)
        self.firsts_now += 1

    def may_retry(self, now: float) -> bool:
        """Whether the budget allows one more retry now; if so, it is counted."""
        budget = self._budget
        if budget is None:
            return True
        if now >= self.budget_end:
            self.turn_buckets(now)
        firsts = sum(self._b_firsts) - self._b_firsts[self._b_index] + self.firsts_now
        if sum(self._b_retries) < budget.ratio * firsts + budget.minimum:
            self._b_retries[self._b_index] += 1
            return True
        self.denied_retries += 1
        return False

    def turn_buckets(self, now: float) -> None:
        """Move the window on to ``now``, forgetting the buckets that fell out of it."""
        width = self._b_width
        steps = int((now - self.budget_end) // width) + 1
        self._b_firsts[self._b_index] = self.firsts_now
        for _ in range(min(steps, _BUCKETS)):
            self._b_index = (self._b_index + 1) % _BUCKETS
            self._b_firsts[self._b_index] = 0
            self._b_retries[self._b_index] = 0
        self.firsts_now = 0
        self.budget_end += steps * width

    # -- what stats() shows ------------------------------------------------------------------

    def stats(self, now: float) -> FunctionState:
        return FunctionState(
            limit=None if self.limit == math.inf else self.limit,
            in_flight=self.in_flight,
            waiting=len(self.waiters),
            gate_closed_for=max(0.0, self.gate_until - now),
            overloads=self.overloads,
            denied_retries=self.denied_retries,
        )


def _as_cap(limit: float) -> int:
    return _NO_LIMIT if limit == math.inf else max(1, int(limit))
