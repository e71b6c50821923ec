"""WorkerPool: submitted jobs run on a few long-lived tasks, none lost, none left running."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from aioconnector._runtime import current_runtime
from aioconnector._workers import WorkerPool

WAIT = 10


async def test_one_job_one_worker_and_the_worker_is_reused() -> None:
    done: list[int] = []

    async def handler(job: int) -> None:
        done.append(job)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            pool = WorkerPool(current_runtime(), handler, limit=8)
            await tg.start(pool.run)
            pool.put(1)
            assert pool.workers == 1
            await anyio.wait_all_tasks_blocked()
            pool.put(2)  # the first worker is idle: no second one
            await anyio.wait_all_tasks_blocked()
            assert pool.workers == 1
            pool.close()
    assert done == [1, 2]
    assert pool.workers == 0


async def test_a_job_never_waits_for_a_busy_worker_and_only_limit_workers_stay() -> None:
    """Busy workers may be waiting for what a queued job holds (the controller's slots), so
    every job starts at once; once the burst is over, only ``limit`` idle workers remain."""
    running = 0
    done: list[int] = []
    release = anyio.Event()

    async def handler(job: int) -> None:
        nonlocal running
        running += 1
        await release.wait()
        running -= 1
        done.append(job)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            pool = WorkerPool(current_runtime(), handler, limit=3)
            await tg.start(pool.run)
            for job in range(10):
                pool.put(job)
            await anyio.wait_all_tasks_blocked()
            assert (pool.workers, running) == (10, 10)  # none of the ten waits for another
            release.set()
            await anyio.wait_all_tasks_blocked()
            assert (pool.workers, len(pool._idle)) == (3, 3)  # the seven extra ones ended
            pool.put(10)  # an idle worker takes it: no new worker
            assert pool.workers == 3
            await anyio.wait_all_tasks_blocked()
            pool.close()
    assert sorted(done) == list(range(11))
    assert pool.workers == 0


async def test_close_ends_idle_workers_and_refuses_new_jobs() -> None:
    async def handler(job: int) -> None:
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            pool = WorkerPool(current_runtime(), handler, limit=4)
            await tg.start(pool.run)
            pool.put(1)
            pool.put(2)
            await anyio.wait_all_tasks_blocked()
            assert pool.workers == 2
            pool.close()
        # Leaving the task group proves the workers ended.
    assert pool.workers == 0
    with pytest.raises(RuntimeError, match="closed"):
        pool.put(3)


async def test_a_handler_error_propagates_through_the_task_group() -> None:
    async def handler(job: int) -> None:
        raise ValueError(f"job {job}")

    with anyio.fail_after(WAIT), pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="job 7")):
        async with anyio.create_task_group() as tg:
            pool = WorkerPool(current_runtime(), handler, limit=2)
            await tg.start(pool.run)
            pool.put(7)


async def test_a_cancelled_idle_worker_leaves_no_stale_waiter() -> None:
    done: list[int] = []

    async def handler(job: int) -> None:
        done.append(job)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as outer:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    pool = WorkerPool(current_runtime(), handler, limit=1)
                    await tg.start(pool.run)
                    pool.put(1)
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()  # the idle worker is cancelled while waiting
            assert pool.workers == 0
            # A put now starts a new worker in another group: the cancelled one's waiter is gone.
            await outer.start(pool.run)
            pool.put(2)
            await anyio.wait_all_tasks_blocked()
            pool.close()
    assert done == [1, 2]
