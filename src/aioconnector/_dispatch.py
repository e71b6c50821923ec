"""`Dispatcher`: the data path, from an accepted message to its functions' results.

A message is accepted (`Dispatcher.accept`: topic checked, headers merged, body made bytes,
routed and counted); each of its functions is then invoked holding a concurrency slot and a
turn of the function's `Lane` (its own limit, gate and retry budget), with retries
(`Dispatcher.run`), and each result is published to the `ResultHub`. A message with several
functions fans out (`Dispatcher.fan_out`) over the runtime's task group.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

import anyio
import attrs

from ._errors import ControllerStateError
from ._invoke import Invocation, cancelled
from ._lanes import Lane
from ._message import (
    IDEMPOTENCY_KEY,
    base_headers,
    check_topic,
    coerce_body,
    idempotency_key,
    keyed_message_id,
    merge_headers,
    rekeyed,
)
from ._observe import FunctionRecorder
from ._policy import FunctionPolicy, policy_from_annotations
from ._topics import TopicMap
from ._waiters import WaiterQueue

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._config import ControllerConfig
    from ._drain import Drain
    from ._invoke import Invoker
    from ._message import Body
    from ._results import InvocationResult, ResultHub
    from ._runtime import Runtime
    from ._slots import Slots
    from ._stats import Counts, FunctionState

__all__ = ["Dispatcher", "Job", "for_function"]

# An accepted message: the invocation of its first function, and every function's address.
Job = tuple[Invocation, tuple[str, ...]]

_TOPIC_HEADERS_CACHE = 1024  # routed topics whose merged headers are kept (all dropped when full)

logger = logging.getLogger("aioconnector")


@final
class Dispatcher:
    """Accepts messages and invokes their functions within the controller's ``slots``.

    Every message that gets past `accept` with functions to invoke must `enter` the ``drain``
    first; `fan_out` leaves it, and so must a caller that uses `run` directly.
    """

    __slots__ = (
        "_base_headers",
        "_clock",
        "_config",
        "_counts",
        "_drain",
        "_hub",
        "_lanes",
        "_policies",
        "_problems",
        "_recorders",
        "_room",
        "_runtime",
        "_slots",
        "_topic_headers",
        "_waiting",
        "invoker",
        "per_topic",
        "refusal",
        "topic_map",
    )

    def __init__(
        self, config: ControllerConfig, slots: Slots, hub: ResultHub, drain: Drain, counts: Counts
    ) -> None:
        self._config = config
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
        self.topic_map = TopicMap.EMPTY  # replaced whole by `install`
        # Policies of the functions that declare one (the others: the config's), and the
        # invalid annotations last reported for each.
        self._policies: dict[str, FunctionPolicy] = {}
        self._problems: dict[str, tuple[str, ...]] = {}
        self._lanes: dict[str, Lane] = {}  # made at a function's first invocation
        # While metrics are on (`enable_metrics`): matched messages by topic, and each
        # function's recorder (kept when its lane is dropped: a counter never goes back).
        self.per_topic: dict[str, int] | None = None
        self._recorders: dict[str, FunctionRecorder] | None = None
        self._waiting = 0  # invocations waiting for their function's turn, without a slot
        # Producers waiting while too many do (see wait_for_room). A woken producer looks
        # again, so a turn lost to its cancellation needs nothing passed on.
        self._room = WaiterQueue(lost_turn=lambda: None)
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
        invoker.set_timeouts(self._timeouts())

    def enable_metrics(self) -> None:
        """Record what only metrics need (by topic, by function and status, durations)."""
        if self._recorders is None:
            self.per_topic, self._recorders = {}, {}
            for address, lane in self._lanes.items():
                lane.recorder = self._recorders[address] = FunctionRecorder()

    def recorders(self) -> dict[str, FunctionRecorder]:
        """Each function's recorder (empty while metrics are off), by address."""
        return dict(self._recorders or {})

    def lanes(self) -> dict[str, Lane]:
        """The lanes of the functions invoked lately, by address (for metrics)."""
        return dict(self._lanes)

    def stop(self) -> None:
        """The controller is closing: no gate timer may outlive it."""
        for lane in self._lanes.values():
            lane.close()

    # -- policy --------------------------------------------------------------------------

    def install(self, topic_map: TopicMap) -> None:
        """Route by ``topic_map`` from now on, with its functions' policies."""
        config = self._config
        policies: dict[str, FunctionPolicy] = {}
        problems: dict[str, tuple[str, ...]] = {}
        addresses = topic_map.addresses()
        for address in sorted(addresses):
            declared = topic_map.annotations_of(address)
            if not declared:
                continue
            policy, invalid = policy_from_annotations(
                address, declared, retry=config.retry, timeout=config.upstream_timeout
            )
            policies[address] = policy
            if invalid:
                problems[address] = invalid
                if self._problems.get(address) != invalid:  # once per change, not per refresh
                    logger.warning(
                        "function %s: ignoring invalid annotation(s), using the config's "
                        "values instead: %s",
                        address,
                        "; ".join(invalid),
                    )
        self._policies, self._problems = policies, problems
        # One assignment: an invocation sees the old map or the new one.
        self.topic_map = topic_map
        for address, lane in tuple(self._lanes.items()):
            # A function still routed keeps its lane (its limit, gate and budget), annotated
            # or not; one gone from the map keeps it only while it is busy.
            if address in addresses or lane.in_flight or lane.waiters:
                lane.update(self.policy_for(address), config.max_concurrency)
            else:
                lane.close()
                del self._lanes[address]  # made again, with what it learnt lost, if needed
        if self.invoker is not None:
            self.invoker.set_timeouts(self._timeouts())

    def policy_for(self, function: str) -> FunctionPolicy:
        """The function's effective policy: its annotations over the config."""
        policy = self._policies.get(function)
        if policy is None:
            config = self._config
            policy = FunctionPolicy(
                function=function,
                retry=config.retry,
                max_concurrency=None,
                timeout=config.upstream_timeout,
                idempotent=False,
            )
        return policy

    def function_states(self) -> dict[str, FunctionState]:
        now = self._clock()
        return {address: lane.stats(now) for address, lane in sorted(self._lanes.items())}

    def _timeouts(self) -> dict[str, float | None]:
        default = self._config.upstream_timeout
        return {f: p.timeout for f, p in self._policies.items() if p.timeout != default}

    def _lane(self, function: str) -> Lane:
        assert self._runtime is not None  # noqa: S101 - set by start()
        config = self._config
        lane = self._lanes[function] = Lane(
            self.policy_for(function),
            max_concurrency=config.max_concurrency,
            adaptive=config.adaptive_concurrency,
            budget=config.retry_budget,
            call_later=self._runtime.call_later,
            now=self._clock(),
        )
        if self._recorders is not None:
            recorder = self._recorders.get(function)
            if recorder is None:
                recorder = self._recorders[function] = FunctionRecorder()
            lane.recorder = recorder
        return lane

    # -- the data path -------------------------------------------------------------------

    def accept(
        self, topic: str, body: Body, headers: Mapping[str, str] | None, context: object
    ) -> Job:
        """Check and route a message; its functions are not invoked yet. Raises for an invalid
        topic, body or headers, and while `refusal` is set."""
        # A topic seen before without extra headers: checked then, its headers merged then.
        merged = self._topic_headers.get(topic) if headers is None and type(topic) is str else None
        cache = False
        try:
            if merged is None:
                topic = check_topic(topic)
                merged = merge_headers(self._base_headers, topic, headers)
                cache = headers is None
            payload = body if type(body) is bytes else coerce_body(body)
        except (ValueError, TypeError):
            self._counts.invalid += 1
            raise
        if self.refusal is not None:
            raise ControllerStateError(self.refusal)
        functions = self.topic_map.functions_for(topic)
        self._counts.messages += 1
        if not functions:
            self._counts.unmatched += 1
        else:
            if cache:
                # Only routed topics are kept: they come from the gateway, not from the message
                # source (with wildcard topics, any topic a pattern matches: the bound holds).
                if len(self._topic_headers) >= _TOPIC_HEADERS_CACHE:
                    self._topic_headers.clear()
                self._topic_headers[topic] = merged
            per_topic = self.per_topic
            if per_topic is not None:  # metrics on; routed topics only, as the cache
                per_topic[topic] = per_topic.get(topic, 0) + 1
        # The invocation of the first function; `for_function` makes the others from it.
        function = functions[0] if functions else ""
        message_id = None if headers is None else keyed_message_id(headers)
        if message_id is not None:
            merged = (*merged, (IDEMPOTENCY_KEY, idempotency_key(message_id, function)))
        first = Invocation(
            topic=topic,
            function=function,
            body=payload,
            headers=merged,
            context=context,
            message_id=message_id,
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
                    invocation = first if index == 0 else for_function(first, function)
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

    async def run(self, invocation: Invocation) -> InvocationResult:  # noqa: PLR0915 - one frame
        """Invoke one function with a slot already taken; always gives back the slot it holds.

        Each request waits for a turn of the function's lane first; a wait gives back the
        slot, so a saturated function never holds up others.
        """
        holding = True
        clock = self._clock
        lane = self._lanes.get(invocation.function) or self._lane(invocation.function)
        drain = self._drain
        try:
            self._counts.started += 1
            started = sent = clock()
            if started >= lane.budget_end:  # Lane.first_attempt, inlined: counted for the
                lane.turn_buckets(started)  # function's retry budget
            lane.firsts_now += 1
            attempt = 0  # requests made so far
            while True:
                invoker = self.invoker
                if invoker is None or drain.cancelling:  # shutdown, before the request
                    result = cancelled(invocation, clock() - started, attempts=attempt)
                    ok = False
                    break
                if lane.in_flight < lane.cap and not lane.waiters:
                    lane.in_flight += 1  # the usual case: the function has room
                else:
                    turn, holding = await self._wait_turn(lane, holding)
                    if not turn:  # shutdown while waiting
                        result = cancelled(invocation, clock() - started, attempts=attempt)
                        ok = False
                        break
                    sent = clock()
                attempt += 1
                try:
                    result = await invoker.invoke(invocation)  # shutdown during it: cancelled
                except BaseException:
                    lane.in_flight -= 1
                    lane.wake()
                    raise
                ok = result.ok
                if ok and lane.fixed:  # the usual case: Lane.done's work, inlined
                    lane.in_flight -= 1
                    if lane.waiters:
                        lane.wake()
                    break
                lane.done(result, sent)
                if ok:
                    break
                delay = self._retry_delay(lane, result, attempt, started)
                if delay is None:
                    break
                # Wait without a slot, so a retrying invocation never blocks others.
                self._counts.retries += 1
                if lane.recorder is not None:
                    lane.recorder.retries += 1
                self._slots.release()
                holding = False
                if not await drain.pause(delay):
                    break  # shutdown: keep the last answer
                await self._slots.acquire()
                holding = True
                sent = clock()
            if attempt > 1 and result.attempts != attempt:
                result = attrs.evolve(result, attempts=attempt, duration=clock() - started)
            if ok:
                self._counts.succeeded += 1
            else:
                self._counts.failed += 1
            recorder = lane.recorder
            if recorder is not None:  # metrics on
                recorder.record(result)
            if self._hub.subscribed:  # else no checkpoint: nothing to hand over
                await self._hub.publish(result)
            return result
        finally:
            if holding:
                self._slots.release()

    def _retry_delay(
        self, lane: Lane, result: InvocationResult, attempt: int, started: float
    ) -> float | None:
        """Seconds to wait before trying again, or None to keep ``result``: the function's
        retry policy says no, the controller is shutting down, or the retry budget is spent
        (then the failure is the result at once)."""
        now = self._clock()
        delay = lane.policy.retry.delay_before_retry(result, attempt=attempt, elapsed=now - started)
        if delay is None or self._drain.cancelling or not lane.may_retry(now):
            return None
        return delay

    async def _wait_turn(self, lane: Lane, holding: bool) -> tuple[bool, bool]:
        """Wait for a turn of ``lane`` without a slot, then take a slot again. Returns (got
        the turn, holding a slot).

        Never holding a slot while waiting for a turn is what makes this deadlock-free: every
        slot is held by a request in flight, or by an invocation about to start one or to
        wait here, so slots always come back. `submit` stops admitting while ``max_waiting``
        invocations wait here (`wait_for_room`), so waiting cannot grow without bound.
        """
        slots = self._slots
        if holding:
            slots.release()
        self._waiting += 1
        try:
            turn = await self._drain.suspend(lane.wait_turn)
        finally:
            self._waiting -= 1
            if self._room:
                self._room.wake()
        if not turn:
            return False, False
        try:
            await slots.acquire()
        except BaseException:
            lane.in_flight -= 1  # the turn was taken: give it on
            lane.wake()
            raise
        return True, True

    @property
    def waiting_full(self) -> bool:
        """Whether ``max_waiting`` invocations wait for their function's turn."""
        return self._waiting >= self._config.max_waiting

    async def wait_for_room(self) -> None:
        """Wait while ``max_waiting`` invocations wait for their function's turn."""
        while self._waiting >= self._config.max_waiting:
            await self._room.wait()


def for_function(first: Invocation, function: str) -> Invocation:
    """The message's invocation of another of its functions (``attrs.evolve`` costs ten
    times more), with that function's own ``Idempotency-Key`` when it has one."""
    if type(first) is not Invocation:  # traced (`_tracing.TracedInvocation`): its own state
        return first.for_function(function)  # type: ignore[attr-defined, no-any-return]
    headers = first.headers
    message_id = first.message_id
    if message_id is not None:
        headers = rekeyed(headers, message_id, function)
    return Invocation(
        topic=first.topic,
        function=function,
        body=first.body,
        headers=headers,
        context=first.context,
        message_id=message_id,
    )
