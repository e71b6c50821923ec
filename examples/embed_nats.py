"""Embed a packaged connector: NATS JetStream consumed inside your own program.

``aioconnector connect nats`` is a whole process; ``aioconnector.connectors.nats.run`` is the
same connector as a coroutine that consumes into an ``AsyncController`` you own. So one program
can watch the controller's results (here: a count per function and a log line per failure),
serve its stats, or run several sources on one controller. Needs
``pip install 'aioconnector[nats]'``; the gateway settings come from the OpenFaaS variables
(gateway_url, basic_auth, secret_mount_path, upstream_timeout, max_concurrency...):

    gateway_url=http://127.0.0.1:8080 python examples/embed_nats.py \\
        --stream EVENTS --subjects 'events.>' --strip-prefix events.

SIGTERM or SIGINT: fetch no more, finish what is in flight, print the counts.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aioconnector import AsyncController, ConnectorError, ControllerConfig, SourceStats
from aioconnector.connectors import nats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aioconnector import ResultStream

log = logging.getLogger("embed_nats")


async def count_results(results: ResultStream, counts: Counter[str]) -> None:
    """Every invocation's result, as the controller publishes it: count, log failures."""
    async with results:
        async for result in results:
            counts[result.function] += 1
            if not result.ok:
                log.warning("%s failed on %s: %s", result.function, result.topic, result.error)


async def run(
    config: ControllerConfig,
    options: nats.Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
) -> tuple[SourceStats, Counter[str]]:
    """Consume until stopped; return the connector's stats and the invocations per function."""
    counts: Counter[str] = Counter()
    # The controller is left first: that ends its results stream, so count_results returns
    # and the task group can close.
    async with anyio.create_task_group() as tg, AsyncController(config) as controller:
        tg.start_soon(count_results, controller.results(), counts)
        stats = await nats.run(controller, options, stop=stop, stop_signals=stop_signals)
    return stats, counts


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module's docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="EVENTS")
    parser.add_argument("--subjects", default="events.>", help="comma-separated")
    parser.add_argument("--strip-prefix", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    options = nats.Options(
        url=args.url,
        stream=args.stream,
        subjects=tuple(args.subjects.split(",")),
        strip_prefix=args.strip_prefix,
    )
    try:
        config = ControllerConfig.from_env()
        consume = partial(run, config, options, stop_signals=(signal.SIGTERM, signal.SIGINT))
        stats, counts = anyio.run(consume, backend="asyncio")  # nats-py is asyncio-only
    except (ConnectorError, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 1
    print(f"received {stats.received}; invocations per function: {dict(counts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
