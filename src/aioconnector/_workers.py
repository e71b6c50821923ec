"""`WorkerPool`: runs submitted jobs on a pool of long-lived tasks instead of a task per job.

Starting a task through an anyio task group costs about as much as the rest of a submitted
invocation (a task, its cancel scope, its bookkeeping). Workers start only when no idle one is
waiting (up to ``limit``), then stay for the pool's life, taking jobs from a queue.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, final

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

__all__ = ["WorkerPool"]

T = TypeVar("T")


@final
class WorkerPool(Generic[T]):
    """Calls ``handler(job)`` for each `put` job, on at most ``limit`` worker tasks.

    `put` never waits: the caller bounds how many jobs are pending (the controller holds a
    concurrency slot for each). After `close`, workers finish the jobs already put, then end.
    An exception from ``handler`` ends its worker and propagates through ``task_group``.
    """

    def __init__(
        self, task_group: TaskGroup, handler: Callable[[T], Awaitable[object]], limit: int
    ) -> None:
        self._task_group = task_group
        self._handler = handler
        self._limit = limit
        self._jobs: deque[T] = deque()  # unbounded: the callers' own bound applies
        self._idle: deque[anyio.Event] = deque()  # one per worker waiting for a job
        self._closed = False
        self.workers = 0

    def put(self, job: T) -> None:
        if self._closed:
            raise RuntimeError("this WorkerPool is closed")
        self._jobs.append(job)
        if self._idle:
            self._idle.popleft().set()
        elif self.workers < self._limit:
            self.workers += 1
            self._task_group.start_soon(self._work)

    def close(self) -> None:
        """No more jobs: idle workers end now, busy ones after the jobs already put."""
        self._closed = True
        while self._idle:
            self._idle.popleft().set()

    async def _work(self) -> None:
        jobs, handler = self._jobs, self._handler
        try:
            while True:
                if jobs:
                    await handler(jobs.popleft())
                elif self._closed:
                    return
                else:
                    # Woken by put() or close(); another worker may have taken the job first.
                    event = anyio.Event()
                    self._idle.append(event)
                    try:
                        await event.wait()
                    except BaseException:
                        if not event.is_set():
                            self._idle.remove(event)
                        raise
        finally:
            self.workers -= 1
