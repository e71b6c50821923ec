"""`Dispatcher`: the data path, from an accepted message to its functions' results.

A message is accepted (`Dispatcher.accept`: topic checked, headers merged, body made bytes,
routed and counted); each of its functions is then invoked holding a concurrency slot, with
retries (`Dispatcher.run`), and each result is published to the `ResultHub`. A message with
several functions fans out (`Dispatcher.fan_out`): on asyncio over plain asyncio tasks, else
over an anyio task group; `Dispatcher.start` is the one place that picks.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, final

import anyio
import attrs

from ._backend import loop_clock, running_asyncio
from ._errors import ControllerStateError, InvocationCancelledError, only_exception
from ._invoke import Invocation
from ._message import base_headers, check_topic, coerce_body, merge_headers
from ._results import InvocationResult
from ._topics import TopicMap

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._config import ControllerConfig
    from ._drain import Drain
    from ._invoke import Invoker
    from ._message import Body
    from ._results import ResultHub
    from ._slots import Slots
    from ._stats import Counts

__all__ = ["Dispatcher", "Job"]

# An accepted message: the invocation of its first function, and every function's address.
Job = tuple[Invocation, tuple[str, ...]]

_TOPIC_HEADERS_CACHE = 1024  # routed topics whose merged headers are kept (all dropped when full)


@final
class Dispatcher:
    """Accepts messages and invokes their functions within the controller's ``slots``.

    Every message that gets past `accept` with functions to invoke must `enter` the ``drain``
    first; `fan_out` leaves it, and so must a caller that uses `run` directly.
    """

    __slots__ = (
        "_base_headers",
        "_clock",
        "_counts",
        "_drain",
        "_hub",
        "_native",
        "_retry",
        "_slots",
        "_topic_headers",
        "invoker",
        "refusal",
        "topic_map",
    )

    def __init__(
        self, config: ControllerConfig, slots: Slots, hub: ResultHub, drain: Drain, counts: Counts
    ) -> None:
        self._retry = config.retry
        self._slots = slots
        self._hub = hub
        self._drain = drain
        self._counts = counts
        self._base_headers = base_headers(
            {
                "User-Agent": config.user_agent,
                "X-Connector": config.connector_name,
                "Content-Type": config.content_type,
                "X-Callback-Url": config.callback_url if config.async_invocation else None,
            }
        )
        self._topic_headers: dict[str, tuple[tuple[str, str], ...]] = {}
        self._clock: Callable[[], float] = anyio.current_time  # the loop's own, once started
        self._native = False  # running on asyncio: fan-outs use plain asyncio tasks
        self.invoker: Invoker | None = None  # set by start()
        self.topic_map = TopicMap.EMPTY  # replaced whole by the refresher
        # None while messages are accepted; otherwise why not (the ControllerStateError's
        # message). Set by the controller as its state changes: one attribute to check for
        # each message, instead of the state and the wording that goes with it.
        self.refusal: str | None = "not started"

    def start(self, invoker: Invoker) -> None:
        """Bind to the running event loop, and invoke through ``invoker`` from now on."""
        self.invoker = invoker
        self._clock = loop_clock()
        self._native = running_asyncio()

    def accept(
        self, topic: str, body: Body, headers: Mapping[str, str] | None, context: object
    ) -> Job:
        """Check and route a message; its functions are not invoked yet. Raises for an invalid
        topic, body or headers, and while `refusal` is set."""
        # A topic seen before without extra headers: checked then, its headers merged then.
        merged = self._topic_headers.get(topic) if headers is None and type(topic) is str else None
        cache = False
        if merged is None:
            topic = check_topic(topic)
            merged = merge_headers(self._base_headers, topic, headers)
            cache = headers is None
        payload = body if type(body) is bytes else coerce_body(body)
        if self.refusal is not None:
            raise ControllerStateError(self.refusal)
        functions = self.topic_map.functions_for(topic)
        self._counts.messages += 1
        if not functions:
            self._counts.unmatched += 1
        elif cache:
            # Only routed topics are kept: they come from the gateway, not from the message
            # source, so a source sending endless distinct topics cannot grow the cache.
            if len(self._topic_headers) >= _TOPIC_HEADERS_CACHE:
                self._topic_headers.clear()
            self._topic_headers[topic] = merged
        # The invocation of the first function; `_for_function` makes the others from it.
        first = Invocation(
            topic=topic,
            function=functions[0] if functions else "",
            body=payload,
            headers=merged,
            context=context,
        )
        return first, functions

    async def fan_out(self, job: Job, *, holding: bool = False) -> tuple[InvocationResult, ...]:
        """Invoke a message's functions (its first invocation, and the functions' addresses);
        ``holding``: a slot for the first is already taken. Leaves the drain at the end."""
        first, functions = job
        # Each invocation takes a slot *before* its task starts, so waiting costs no task.
        error: BaseException | None = None
        slots = self._slots
        try:
            if len(functions) == 1:
                if not holding:
                    await slots.acquire()
                holding = False
                return (await self.run(first),)
            if self._native:
                held, holding = holding, False
                return await self._fan_out_tasks(first, functions, held)
            results: list[InvocationResult | None] = [None] * len(functions)
            try:
                async with anyio.create_task_group() as tg:
                    for index, function in enumerate(functions):
                        if not holding:
                            await slots.acquire()
                        holding = False
                        invocation = first if index == 0 else _for_function(first, function)
                        tg.start_soon(self._run_into, results, index, invocation)
            except BaseExceptionGroup as group:
                error = only_exception(group)
                if error is None:
                    raise
            if error is not None:
                raise error
            return tuple(r for r in results if r is not None)
        finally:
            if holding:
                slots.release()
            drain = self._drain  # Drain.leave(), inlined: a method call costs 0.3% here
            drain.busy -= 1
            if drain.busy == 0 and drain.idle is not None:
                drain.idle.set()

    async def _fan_out_tasks(
        self, first: Invocation, functions: tuple[str, ...], holding: bool
    ) -> tuple[InvocationResult, ...]:
        """On asyncio: every function but the last in a plain asyncio task, the last in this
        one. An anyio task group costs about 25 us per task here, as much as an invocation;
        what it guarantees is kept: an error or a cancellation cancels and awaits the others."""
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[InvocationResult]] = []
        entered: set[int] = set()  # tasks that began: run() gives their slots back itself

        async def run(index: int, invocation: Invocation) -> InvocationResult:
            entered.add(index)
            return await self.run(invocation)

        last = len(functions) - 1
        try:
            for index, function in enumerate(functions):
                if not holding:
                    await self._slots.acquire()
                holding = False
                invocation = first if index == 0 else _for_function(first, function)
                if index < last:
                    tasks.append(loop.create_task(run(index, invocation)))
                else:
                    result = await self.run(invocation)
            return (*[await task for task in tasks], result)
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait(tasks)
            for index, task in enumerate(tasks):
                if index not in entered:
                    self._slots.release()  # cancelled before it began: its slot is ours
                elif not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as lost
            raise

    async def _run_into(
        self, results: list[InvocationResult | None], index: int, invocation: Invocation
    ) -> None:
        results[index] = await self.run(invocation)

    async def run(self, invocation: Invocation) -> InvocationResult:
        """Invoke one function with a slot already taken; always gives back the slot it holds."""
        holding = True
        clock = self._clock
        try:
            self._counts.started += 1
            started = clock()
            attempt = 0  # requests made so far
            while True:
                invoker = self.invoker
                result = None
                if invoker is not None and not self._drain.cancelling:
                    attempt += 1
                    result = await invoker.invoke(invocation)
                if result is None:  # shutdown stopped it, before or during the request
                    result = _cancelled(invocation, clock() - started, attempts=attempt)
                    break
                if result.ok:
                    break  # the usual case, without asking the retry policy
                delay = self._retry.delay_before_retry(
                    result, attempt=attempt, elapsed=clock() - started
                )
                if delay is None or self._drain.cancelling:
                    break
                # Wait without a slot, so a retrying invocation never blocks others.
                self._counts.retries += 1
                self._slots.release()
                holding = False
                if not await self._drain.pause(delay):
                    break  # shutdown: keep the last answer
                await self._slots.acquire()
                holding = True
            if attempt > 1 and result.attempts != attempt:
                result = attrs.evolve(result, attempts=attempt, duration=clock() - started)
            if result.ok:
                self._counts.succeeded += 1
            else:
                self._counts.failed += 1
            if self._hub.subscribed:  # else no checkpoint: nothing to hand over
                await self._hub.publish(result)
            return result
        finally:
            if holding:
                self._slots.release()


def _for_function(first: Invocation, function: str) -> Invocation:
    """The message's invocation of one function (``attrs.evolve`` costs ten times more)."""
    return Invocation(
        topic=first.topic,
        function=function,
        body=first.body,
        headers=first.headers,
        context=first.context,
    )


def _cancelled(invocation: Invocation, duration: float, *, attempts: int) -> InvocationResult:
    return InvocationResult(
        topic=invocation.topic,
        function=invocation.function,
        status=None,
        duration=duration,
        error=InvocationCancelledError(
            f"{invocation.function}: cancelled at shutdown after drain_timeout"
        ),
        attempts=attempts,
        context=invocation.context,
    )
