"""`Dispatcher`: the data path, from an accepted message to its functions' results.

A message is accepted (`Dispatcher.accept`: topic checked, headers merged, body made bytes,
routed and counted); each of its functions is then invoked holding a concurrency slot, with
retries (`Dispatcher.run`), and each result is published to the `ResultHub`. A message with
several functions fans out (`Dispatcher.fan_out`) over the runtime's task group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import anyio
import attrs

from ._errors import ControllerStateError
from ._invoke import Invocation, cancelled
from ._message import base_headers, check_topic, coerce_body, merge_headers
from ._topics import TopicMap

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._config import ControllerConfig
    from ._drain import Drain
    from ._invoke import Invoker
    from ._message import Body
    from ._results import InvocationResult, ResultHub
    from ._runtime import Runtime
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
        "_retry",
        "_runtime",
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
        self._runtime: Runtime | None = None  # set by start()
        self.invoker: Invoker | None = None  # set by start()
        self.topic_map = TopicMap.EMPTY  # replaced whole by the refresher
        # None while messages are accepted; otherwise why not (the ControllerStateError's
        # message). Set by the controller as its state changes: one attribute to check for
        # each message, instead of the state and the wording that goes with it.
        self.refusal: str | None = "not started"

    def start(self, invoker: Invoker, runtime: Runtime) -> None:
        """Bind to the running event loop's runtime, and invoke through ``invoker`` from now
        on."""
        self.invoker = invoker
        self._runtime = runtime
        self._clock = runtime.clock

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
        slots = self._slots
        try:
            if len(functions) == 1:
                if not holding:
                    await slots.acquire()
                holding = False
                return (await self.run(first),)
            held, holding = holding, False
            return await self._fan_out(first, functions, held)
        finally:
            if holding:
                slots.release()
            drain = self._drain  # Drain.leave(), inlined: a method call costs 0.3% here
            drain.busy -= 1
            if drain.busy == 0 and drain.idle is not None:
                drain.idle.set()

    async def _fan_out(
        self, first: Invocation, functions: tuple[str, ...], holding: bool
    ) -> tuple[InvocationResult, ...]:
        """Every function but the last in a task, the last in this one. Each takes a slot
        *before* its task starts, so waiting for a slot costs no task; a task cancelled before
        it began (the group's error, or this call's cancellation) gives its slot back here."""
        assert self._runtime is not None  # noqa: S101 - set by start()
        slots = self._slots
        count = len(functions)
        results: list[InvocationResult | None] = [None] * count
        began = [False] * count
        spawned = 0
        try:
            async with self._runtime.task_group() as tasks:
                for index, function in enumerate(functions):
                    if not holding:
                        await slots.acquire()
                    holding = False
                    invocation = first if index == 0 else _for_function(first, function)
                    if index < count - 1:
                        tasks.start_soon(self._run_into, results, began, index, invocation)
                        spawned += 1
                    else:
                        results[index] = await self.run(invocation)
        except BaseException:
            for index in range(spawned):
                if not began[index]:
                    slots.release()
            raise
        return tuple(result for result in results if result is not None)

    async def _run_into(
        self,
        results: list[InvocationResult | None],
        began: list[bool],
        index: int,
        invocation: Invocation,
    ) -> None:
        began[index] = True  # from here on, run() gives the slot back
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
                if invoker is None or self._drain.cancelling:  # shutdown, before the request
                    result = cancelled(invocation, clock() - started, attempts=attempt)
                    ok = False
                    break
                attempt += 1
                result = await invoker.invoke(invocation)  # shutdown during it: cancelled
                ok = result.ok
                if ok:
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
            if ok:
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
