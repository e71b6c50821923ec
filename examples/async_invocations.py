"""Asynchronous invocations: fire long-running functions, then await their results.

Publishes --count JSON messages on --topic through the gateway's /async-function/ route: the
gateway answers 202 at once and its queue-worker runs each function later, then POSTs the
function's answer back to this program's built-in callback receiver. Each message prints when
it is accepted, and each function's result when its callback arrives.

The receiver listens on callback_listen (here 127.0.0.1:0, any free port, unless the variable
or --callback-listen says otherwise). When the gateway reaches this program by another address
(a Kubernetes Service, an Ingress), set callback_public_url to it. The gateway and the rest
come from the variables every OpenFaaS connector reads (gateway_url, upstream_timeout,
basic_auth...); callback_timeout bounds the wait for a callback (default 10 minutes):

    gateway_url=http://127.0.0.1:8080 python examples/async_invocations.py --topic reports

In a cluster: callback_listen=0.0.0.0:8000 callback_public_url=http://reports-connector:8000
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aioconnector import AsyncController, ConnectorError, ControllerConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aioconnector import PendingInvocation


async def run(config: ControllerConfig, *, topic: str, count: int) -> int:
    """Publish ``count`` messages on ``topic`` asynchronously and print every result.

    Returns how many results were ok.
    """
    async with AsyncController(config) as controller:
        print(f"callbacks to {controller.callback_address} (host, port)")
        ok = 0

        async def wait(pending: PendingInvocation) -> None:
            nonlocal ok
            # The callback's result: the function's status, body, headers and duration; a
            # timeout (no callback within callback_timeout) or a refusal is a failed result.
            result = await pending.result()
            ok += result.ok
            outcome = f"HTTP {result.status}" if result.ok else f"FAILED ({result.error})"
            print(f"{pending.call_id} {result.function}: {outcome}, {result.body[:80]!r}")

        async with anyio.create_task_group() as tg:
            for number in range(1, count + 1):
                body = json.dumps({"n": number})
                # Returns once the gateway accepted the message for every subscribed function.
                accepted = await controller.invoke_async(
                    topic, body, headers={"Content-Type": "application/json"}
                )
                if not accepted:
                    print(f"message {number}: no function subscribes to {topic!r}")
                for pending in accepted:
                    print(f"message {number} -> {pending.function}: accepted, {pending.call_id}")
                    tg.start_soon(wait, pending)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topic", default="reports", help="default: %(default)s")
    parser.add_argument("--count", type=int, default=3, help="messages (%(default)s)")
    parser.add_argument("--callback-listen", help="HOST:PORT (default: 127.0.0.1:0)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    try:
        config = ControllerConfig.from_env(callback_listen=args.callback_listen)
        if config.callback_listen is None and config.callback_public_url is None:
            config = ControllerConfig.from_env(callback_listen="127.0.0.1:0")
        AsyncController(config)  # checks the receiver settings before anything runs
    except (ValueError, OSError) as exc:  # a bad variable, or missing basic-auth secrets
        parser.error(str(exc))
    try:
        anyio.run(partial(run, config, topic=args.topic, count=args.count), backend=args.backend)
    except KeyboardInterrupt:
        return 130
    except ConnectorError as exc:  # e.g. the gateway cannot be reached
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
