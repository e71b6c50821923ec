"""The smallest connector: a timer that publishes a JSON message on a topic at a fixed rate.

Every --interval seconds it invokes each OpenFaaS function whose `topic` annotation names
--topic, waits for their answers and prints one line per function. The gateway and the rest
come from the environment variables every OpenFaaS connector reads (gateway_url,
upstream_timeout, rebuild_interval, topic_delimiter, basic_auth, secret_mount_path...):

    gateway_url=http://127.0.0.1:8080 python examples/tester.py --topic payment.received

Runs on asyncio; --backend trio runs the same code on trio (pip install 'aioconnector[trio]').
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import uuid
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aioconnector import AsyncController, ConnectorError, ControllerConfig, InvocationResult

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


async def run(
    config: ControllerConfig, *, topic: str, interval: float, count: int | None = None
) -> int:
    """Publish a message on ``topic`` every ``interval`` seconds, ``count`` times (None: forever).

    Returns how many messages were published.
    """
    # Entering builds the topic map (or raises, e.g. GatewayUnavailableError); leaving closes
    # the HTTP client and the background refresh.
    async with AsyncController(config) as controller:
        subscribers = ", ".join(controller.functions_for(topic)) or "none yet"
        print(f"gateway {config.gateway_url}: functions on {topic!r}: {subscribers}")
        ticks: Iterable[int] = itertools.count() if count is None else range(count)
        start = anyio.current_time()
        sent = 0
        for tick in ticks:
            # A fixed rate: a slow answer delays the next message, but adds no drift.
            await anyio.sleep_until(start + tick * interval)
            message_id = str(uuid.uuid4())
            body = json.dumps({"n": tick + 1, "sent_at": datetime.now(timezone.utc).isoformat()})
            # invoke() calls every subscribed function concurrently and returns when all have
            # answered. Failures (timeouts, HTTP 500...) are results, not exceptions.
            results = await controller.invoke(
                topic,
                body,
                headers={"X-Message-Id": message_id, "Content-Type": "application/json"},
            )
            sent += 1
            report(message_id, results)
    return sent


def report(message_id: str, results: Sequence[InvocationResult]) -> None:
    """Print one line per function invoked for the message."""
    if not results:  # the topic map is refreshed every rebuild_interval: it may come later
        print(f"{message_id}: no function subscribes to this topic")
    for result in results:
        outcome = f"HTTP {result.status}" if result.ok else f"FAILED ({result.error})"
        print(
            f"{message_id} -> {result.function}: {outcome} in {result.duration * 1000:.0f} ms,"
            f" {result.body[:80]!r}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topic", default="payment.received", help="default: %(default)s")
    parser.add_argument(
        "--interval", type=float, default=2.0, help="seconds between messages (%(default)s)"
    )
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--gateway-url", help="overrides the gateway_url environment variable")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if args.interval < 0 or (args.count is not None and args.count < 1):
        parser.error("--interval must be >= 0 and --count >= 1")
    try:
        # Overrides that are None (flags not given) leave the environment's value in place.
        config = ControllerConfig.from_env(gateway_url=args.gateway_url)
    except (ValueError, OSError) as exc:  # a bad variable, or missing basic-auth secrets
        parser.error(str(exc))

    job = partial(run, config, topic=args.topic, interval=args.interval, count=args.count)
    try:
        anyio.run(job, backend=args.backend)
    except KeyboardInterrupt:  # Ctrl-C: the controller has already closed on the way out
        return 130
    except ConnectorError as exc:  # e.g. the gateway cannot be reached or rejects credentials
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
