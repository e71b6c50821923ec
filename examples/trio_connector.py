"""A connector on trio: a producer submits messages while a consumer task reads the results.

The producer stands for a real event source (a queue, a socket...): every --interval seconds
it submits a JSON message on --topic, and submit() returns as soon as the message is admitted.
A consumer task in the same nursery reads the controller's results stream and prints each
function's answer. Ctrl-C or SIGTERM (or --count) stops the producer; the controller then
waits for the invocations in flight (up to drain_timeout), ends the results stream, the
consumer prints the last results and returns, and the nursery closes. A second Ctrl-C while
draining interrupts at once.

The gateway and the rest come from the OpenFaaS connector environment variables (gateway_url,
upstream_timeout, max_concurrency, basic_auth...):

    gateway_url=http://127.0.0.1:8080 python examples/trio_connector.py --topic orders --count 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import uuid
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import trio

from aioconnector import AsyncController, ConnectorError, ControllerConfig, ResultStream

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


async def run(
    config: ControllerConfig, *, topic: str, interval: float, count: int | None = None
) -> Counter[str]:
    """Submit ``count`` messages (None: until SIGINT/SIGTERM); count the outcomes by kind."""
    outcomes: Counter[str] = Counter()
    # The nursery encloses the controller: leaving the controller waits for the invocations
    # in flight (up to drain_timeout) and ends the results stream, so consume() sees every
    # result, returns, and the nursery closes.
    async with trio.open_nursery() as nursery, AsyncController(config) as controller:
        nursery.start_soon(consume, controller.results(), outcomes)  # before any message
        async with trio.open_nursery() as source:
            await source.start(cancel_on_signal, source.cancel_scope)
            await produce(controller, topic=topic, interval=interval, count=count)
            source.cancel_scope.cancel()  # done producing: stop listening for signals
    return outcomes


async def produce(
    controller: AsyncController, *, topic: str, interval: float, count: int | None
) -> None:
    ticks: Iterable[int] = itertools.count() if count is None else range(count)
    start = trio.current_time()
    for tick in ticks:
        await trio.sleep_until(start + tick * interval)
        message_id = str(uuid.uuid4())
        matched = await controller.submit(
            topic,
            json.dumps({"n": tick + 1}),
            headers={"X-Message-Id": message_id, "Content-Type": "application/json"},
            context=message_id,  # comes back on every result of this message
        )
        if not matched:
            print(f"{message_id}: no function subscribes to {topic!r}")


async def consume(results: ResultStream, outcomes: Counter[str]) -> None:
    async with results:
        async for result in results:
            outcome = f"HTTP {result.status}" if result.ok else f"FAILED ({result.error})"
            print(f"{result.context} -> {result.function}: {outcome}, {result.body[:80]!r}")
            outcomes["ok" if result.ok else type(result.error).__name__] += 1


async def cancel_on_signal(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            print(f"{signal.Signals(signum).name}: finishing the messages in flight")
            scope.cancel()
            return  # the receiver closes: a second Ctrl-C is a KeyboardInterrupt again


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topic", default="payment.received", help="default: %(default)s")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between messages (%(default)s)"
    )
    parser.add_argument("--count", type=int, help="stop after this many messages")
    args = parser.parse_args(argv)
    if args.interval < 0 or (args.count is not None and args.count < 1):
        parser.error("--interval must be >= 0 and --count >= 1")
    try:
        config = ControllerConfig.from_env()
    except (ValueError, OSError) as exc:  # a bad variable, or missing basic-auth secrets
        parser.error(str(exc))
    try:
        outcomes = trio.run(
            partial(run, config, topic=args.topic, interval=args.interval, count=args.count)
        )
    except BaseExceptionGroup as group:  # what a nursery raises comes wrapped in a group
        if group.subgroup(KeyboardInterrupt) is not None:  # a second Ctrl-C while draining
            return 130
        failed = group.subgroup(ConnectorError)  # e.g. the gateway is down or rejects us
        if failed is None:
            raise
        print(f"error: {failed.exceptions[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print("results:", dict(outcomes) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
