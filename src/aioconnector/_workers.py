"""`WorkerPool`: runs submitted jobs on reused long-lived tasks instead of a task per job.

Starting a task through an anyio task group costs about as much as the rest of a submitted
invocation (a task, its cancel scope, its bookkeeping). A job goes to an idle worker when one
is waiting, else a new worker starts for it at once: a job never waits for a busy worker.
That matters for correctness, not speed: the controller's jobs hold a concurrency slot while
queued, and a busy worker may itself be waiting for a slot (a message's next function, a
retry), so a job left for it could wait forever. Up to ``limit`` workers stay for the pool's
life when idle; the others end when they find no job.

The workers run in the runtime's task group (plain asyncio tasks on asyncio: with 10,000
invocations in flight there are 10,000 workers, at 0.4 KiB each instead of anyio's 4.4 KiB),
which `run` holds open in the controller's task group until the pool is closed and idle.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar, final

from ._waiters import WaiterQueue

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import TaskStatus

    from ._runtime import Runtime, TaskGroup

__all__ = ["WorkerPool"]

T = TypeVar("T")


@final
class WorkerPool(Generic[T]):
    """Calls ``handler(job)`` for each `put` job at once, on an idle worker task or a new one.

    Start it with ``await task_group.start(pool.run)``. `put` never waits: the caller bounds
    how many jobs are pending (the controller holds a concurrency slot for each). At most
    ``limit`` idle workers are kept for the next jobs. After `close`, workers finish the jobs
    already put, then end, and so does `run`. An exception from ``handler`` ends every worker
    and is raised by `run`.
    """

    def __init__(
        self, runtime: Runtime, handler: Callable[[T], Awaitable[object]], limit: int
    ) -> None:
        self._runtime = runtime
        self._handler = handler
        self._limit = limit
        self._jobs: deque[T] = deque()  # unbounded: the callers' own bound applies
        self._closed = False
        self.workers = 0
        # Workers started or woken that have not yet looked at the queue: each will take a
        # job, so a job put while there are at least as many of them needs no new worker.
        self._coming = 0
        self._idle = WaiterQueue(lost_turn=self._not_coming)  # workers waiting for a job
        self._tasks: TaskGroup | None = None  # while `run` runs
        self._ended = runtime.new_event()  # closed and idle, or a worker failed

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Hold the workers' task group open until the pool is closed and idle."""
        async with self._runtime.task_group() as tasks:
            self._tasks = tasks
            task_status.started()
            await self._ended.wait()
        self._tasks = None

    def put(self, job: T) -> None:
        if self._closed or self._tasks is None:
            raise RuntimeError("this WorkerPool is closed or not running")
        self._jobs.append(job)
        if self._idle:
            self._coming += 1
            self._idle.wake()
        elif len(self._jobs) > self._coming:
            # Never left for a busy worker: that one may be waiting for this job's slot.
            self._coming += 1
            self.workers += 1
            self._tasks.start_soon(self._work)

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
        except Exception:
            self._ended.set()  # `run` leaves its group, which raises this error
            raise
        finally:
            self.workers -= 1
            if self._closed and not self.workers:
                self._ended.set()
