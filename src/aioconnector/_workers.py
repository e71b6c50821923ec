"""`WorkerPool`: runs submitted jobs on reused long-lived tasks instead of a task per job.

Starting a task through an anyio task group costs about as much as the rest of a submitted
invocation (a task, its cancel scope, its bookkeeping). A job goes to an idle worker when one
is waiting, else a new worker starts for it at once: a job never waits for a busy worker.
That matters for correctness, not speed: the controller's jobs hold a concurrency slot while
queued, and a busy worker may itself be waiting for a slot (a message's next function, a
retry), so a job left for it could wait forever. Up to ``limit`` workers stay for the pool's
life when idle; the others end when they find no job.

On asyncio the workers are plain asyncio tasks: an anyio task holds about 4.4 KiB against
0.4 KiB for an asyncio task, and with 10,000 invocations in flight there are 10,000 workers.
One anyio task, the supervisor, stands for them in the task group: it raises the first error
a worker raises, and cancels and awaits every worker when it is cancelled or the pool ends.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, final

import anyio

from ._backend import running_asyncio
from ._waiters import WaiterQueue

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskGroup

__all__ = ["WorkerPool"]

T = TypeVar("T")


@final
class WorkerPool(Generic[T]):
    """Calls ``handler(job)`` for each `put` job at once, on an idle worker task or a new one.

    `put` never waits: the caller bounds how many jobs are pending (the controller holds a
    concurrency slot for each). At most ``limit`` idle workers are kept for the next jobs.
    After `close`, workers finish the jobs already put, then end.
    An exception from ``handler`` ends its worker and propagates through ``task_group``.
    """

    def __init__(
        self, task_group: TaskGroup, handler: Callable[[T], Awaitable[object]], limit: int
    ) -> None:
        self._task_group = task_group
        self._handler = handler
        self._limit = limit
        self._jobs: deque[T] = deque()  # unbounded: the callers' own bound applies
        self._closed = False
        self.workers = 0
        # Workers started or woken that have not yet looked at the queue: each will take a
        # job, so a job put while there are at least as many of them needs no new worker.
        self._coming = 0
        self._idle = WaiterQueue(lost_turn=self._not_coming)  # workers waiting for a job
        # asyncio: the workers' tasks, and what ends their supervisor (see the module's doc).
        self._loop = asyncio.get_running_loop() if running_asyncio() else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended = anyio.Event()
        self._error: BaseException | None = None
        if self._loop is not None:
            task_group.start_soon(self._supervise)

    def put(self, job: T) -> None:
        if self._closed:
            raise RuntimeError("this WorkerPool is closed")
        self._jobs.append(job)
        if self._idle:
            self._coming += 1
            self._idle.wake()
        elif len(self._jobs) > self._coming:
            # Never left for a busy worker: that one may be waiting for this job's slot.
            self._coming += 1
            self.workers += 1
            if self._loop is None:
                self._task_group.start_soon(self._work)
            else:
                task = self._loop.create_task(self._work())
                self._tasks.add(task)
                task.add_done_callback(self._worker_ended)

    def close(self) -> None:
        """No more jobs: idle workers end now, busy ones after the jobs already put."""
        self._closed = True
        while self._idle:
            self._coming += 1
            self._idle.wake()
        if not self.workers:
            self._ended.set()

    def _not_coming(self) -> None:
        """A worker woken for a job was cancelled before it looked at the queue."""
        self._coming -= 1

    async def _supervise(self) -> None:
        try:
            await self._ended.wait()
            if self._error is not None:
                raise self._error
        finally:
            tasks = tuple(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            if self._error is None:
                self._error = error
            self._ended.set()

    async def _work(self) -> None:
        jobs, handler = self._jobs, self._handler
        self._coming -= 1  # started: at the queue now
        try:
            while True:
                if jobs:
                    await handler(jobs.popleft())
                elif self._closed or self.workers > self._limit:
                    return  # no more jobs, or more idle workers than are kept
                else:
                    # Woken by put() or close(); another worker may have taken the job first.
                    await self._idle.wait()
                    self._coming -= 1  # woken: at the queue now
        finally:
            self.workers -= 1
            if self._closed and not self.workers:
                self._ended.set()
