"""The runtime seam: everything that differs between asyncio (uvloop included) and trio.

A controller picks its `Runtime` once, when it starts in an event loop (`current_runtime`), and
hands it to what needs one; no other module asks which event loop runs it. What differs:

- the clock: the loop's own (``anyio.current_time()`` looks the backend up on every call, which
  costs as much as parsing a response head);
- events that one task waits for: a future on asyncio (an ``asyncio.Event`` costs 816 bytes;
  anyio's looks the backend up each time one is created), anyio's on trio;
- connections: an `AsyncioWire` protocol on asyncio, a `TrioWire` socket on trio;
- timers, for the invoker's deadline sweep: ``loop.call_later`` on asyncio, a system task that
  sleeps on trio;
- task groups: plain asyncio tasks on asyncio (0.4 KiB and a few microseconds each, where an
  anyio task costs 4.4 KiB and about 25 us), trio's own nursery on trio (anyio's task group
  adds 1.5 KB of bookkeeping per task).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, Protocol, final

import anyio

from ._errors import only_exception

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Coroutine
    from types import TracebackType

    from ._fastpath._wire import Wire

__all__ = [
    "Runtime",
    "TaskGroup",
    "Timer",
    "Waitable",
    "current_runtime",
    "event_factory",
    "running_asyncio",
]


def running_asyncio() -> bool:
    """True inside asyncio (uvloop included), False inside trio (as anyio tells them apart)."""
    try:
        import sniffio  # noqa: PLC0415 - trio's dependency: absent means no trio
    except ModuleNotFoundError:
        return True
    return sniffio.current_async_library() == "asyncio"


class Waitable(Protocol):
    """What `anyio.Event` and `asyncio.Event` have in common, as the library uses them."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


def event_factory() -> Callable[[], Waitable]:
    """The running loop's cheapest event for one waiting task (for objects made before a
    runtime is known)."""
    return _FutureEvent if running_asyncio() else anyio.Event


@final
class _FutureEvent:
    """An event that one task waits for, on asyncio: a future. An ``asyncio.Event`` costs
    816 bytes (its empty deque of waiters reserves 760), ten times a future; with 10,000
    tasks waiting for a slot, a worker or a connection, that is 8 MB."""

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._set = False  # the future alone cannot tell: cancelling its waiter cancels it

    def set(self) -> None:
        self._set = True
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        await self._future


class Timer(Protocol):
    """A callback scheduled by `Runtime.call_later`."""

    def cancel(self) -> None:
        """Do not call it (nothing happens if it ran already)."""


class TaskGroup(Protocol):
    """Tasks started by one owner: leaving the ``async with`` waits for all of them; the first
    error (or the owner's cancellation) cancels the others, and is raised once all ended."""

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, object]], *args: object
    ) -> None: ...
    async def __aenter__(self) -> TaskGroup: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class Runtime(Protocol):
    """What differs between event loops, for one controller."""

    name: str
    """``"asyncio"`` or ``"trio"``."""
    clock: Callable[[], float]
    """The loop's clock: what ``anyio.current_time()`` reads, without the lookup."""
    new_event: Callable[[], Waitable]
    """An event that one task waits for."""

    async def connect(self, host: str, port: int, tls: ssl.SSLContext | None) -> Wire:
        """A new connection (TLS when ``tls`` is given); OSError when it cannot be made."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` (which must not raise) in ``delay`` seconds."""
        ...

    def task_group(self) -> TaskGroup: ...


def current_runtime() -> Runtime:
    """The runtime of the running event loop."""
    if running_asyncio():
        return AsyncioRuntime(asyncio.get_running_loop())
    return TrioRuntime()


@final
class AsyncioRuntime:
    name = "asyncio"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.clock: Callable[[], float] = loop.time
        self.new_event: Callable[[], Waitable] = _FutureEvent

    async def connect(self, host: str, port: int, tls: ssl.SSLContext | None) -> Wire:
        from ._fastpath._wire import open_asyncio_wire  # noqa: PLC0415 - imports this module

        return await open_asyncio_wire(host, port, tls)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_later(delay, callback)

    def task_group(self) -> TaskGroup:
        return _AsyncioTaskGroup(self._loop)


@final
class TrioRuntime:
    name = "trio"

    def __init__(self) -> None:
        import trio  # noqa: PLC0415 - only under trio, where it is installed

        self.clock: Callable[[], float] = trio.current_time
        self.new_event: Callable[[], Waitable] = anyio.Event

    async def connect(self, host: str, port: int, tls: ssl.SSLContext | None) -> Wire:
        from ._fastpath._triowire import open_trio_wire  # noqa: PLC0415 - trio only

        return await open_trio_wire(host, port, tls)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return _TrioTimer(delay, callback)

    def task_group(self) -> TaskGroup:
        return _TrioTaskGroup()


@final
class _TrioTimer:
    """A system task that sleeps, then calls back: trio has no ``call_later``. A system task,
    so that a timer outliving its owner never keeps a task group open; ``callback`` must not
    raise (an error in a system task ends the run)."""

    __slots__ = ("_scope",)

    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        import trio  # noqa: PLC0415 - only under trio

        self._scope = trio.CancelScope()
        trio.lowlevel.spawn_system_task(self._run, delay, callback, name="aioconnector timer")

    async def _run(self, delay: float, callback: Callable[[], None]) -> None:
        with self._scope:
            await anyio.sleep(delay)
            callback()

    def cancel(self) -> None:
        self._scope.cancel()


@final
class _TrioTaskGroup:
    """A trio nursery, raising a lone error as itself rather than in an ExceptionGroup (as
    `_AsyncioTaskGroup` raises it). trio's own: anyio's task group wraps each task in 1.5 KB
    of bookkeeping (a handle, two cancel scopes, two events), as much as the rest of a call
    in flight."""

    __slots__ = ("_manager", "_nursery")

    def __init__(self) -> None:
        import trio  # noqa: PLC0415 - only under trio

        self._manager = trio.open_nursery()
        self._nursery: trio.Nursery | None = None

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
        assert self._nursery is not None  # noqa: S101 - inside `async with`
        self._nursery.start_soon(func, *args)

    async def __aenter__(self) -> _TrioTaskGroup:
        self._nursery = await self._manager.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        error: BaseException | None = None
        try:
            return await self._manager.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            error = only_exception(group)
            if error is None:
                raise
        raise error  # outside `except`: its own __cause__ and __context__ stay


@final
class _AsyncioTaskGroup:
    """A task group of plain asyncio tasks, with anyio's guarantees: leaving waits for every
    task; an error in one (raised when the group is left) or the owner's cancellation cancels
    and awaits the others. The owner is not interrupted by a task's error (anyio would cancel
    it): it learns of it when it leaves the group."""

    __slots__ = ("_errors", "_loop", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: set[asyncio.Task[object]] = set()
        self._errors: list[BaseException] = []

    def start_soon(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
        task = self._loop.create_task(func(*args))
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._errors.append(error)
            for other in self._tasks:
                other.cancel()

    async def __aenter__(self) -> _AsyncioTaskGroup:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                while self._tasks and not self._errors:
                    await asyncio.wait(tuple(self._tasks), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # Left by an error, a cancellation or a task's error: cancel and await the rest.
            tasks = tuple(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
        if exc is None and self._errors:
            raise self._errors[0]
