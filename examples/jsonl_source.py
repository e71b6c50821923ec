"""Write your own connector on `run_source`: JSON lines from a file to OpenFaaS functions.

A connector is three decisions, and `run_source` does the rest (a bounded number of messages
in flight, one verdict per message after all its invocations, a graceful stop on SIGTERM):

- the source: any async iterable of your broker's messages (here: the lines of a file);
- ``convert``: what a message means, as a ``SourceMessage`` (topic, body, headers, id); a
  ``ValueError`` settles it INVALID;
- ``settle``: what to tell the broker from the verdict (ACK, RETRY, UNMATCHED, INVALID): ack,
  nak, dead-letter... Here: count it, and append what failed to a dead-letter file.

Each line is ``{"topic": "orders", "body": ..., "id": "42"}``. The packaged connectors
(``aioconnector connect nats|redis|rabbitmq|mqtt|postgres``) are built the same way; see
``src/aioconnector/connectors/``. The gateway settings come from the OpenFaaS variables
(gateway_url, basic_auth, secret_mount_path, upstream_timeout, max_concurrency...):

    gateway_url=http://127.0.0.1:8080 python examples/jsonl_source.py events.jsonl

Runs on asyncio; --backend trio runs the same code on trio.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aioconnector import (
    AsyncController,
    ConnectorError,
    ControllerConfig,
    Settlement,
    SourceMessage,
    run_source,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from aioconnector import InvocationResult


async def read_lines(path: anyio.Path) -> AsyncIterator[str]:
    """The source: the file's non-blank lines, one message each."""
    async with await anyio.open_file(path, encoding="utf-8") as lines:
        async for line in lines:
            if line.strip():
                yield line


def convert(line: str) -> SourceMessage:
    """A line's topic, body (a string as it is, anything else as JSON) and id."""
    event = json.loads(line)  # a ValueError (or TypeError): settled INVALID
    if not isinstance(event, dict) or not isinstance(event.get("topic"), str):
        raise TypeError(f"expected an object with a string 'topic': {line.strip()[:80]!r}")
    body = event.get("body", "")
    return SourceMessage(
        topic=event["topic"],
        body=body if isinstance(body, str) else json.dumps(body),
        message_id=None if event.get("id") is None else str(event["id"]),
    )


async def settle(
    dead_letters: anyio.Path,
    verdicts: Counter[Settlement],
    line: str,
    verdict: Settlement,
    results: Sequence[InvocationResult],
) -> None:
    """Count the verdict; a line that did not reach every function goes to ``dead_letters``."""
    verdicts[verdict] += 1
    if verdict is not Settlement.ACK:
        failed = [r.function for r in results if not r.ok]
        record = {"line": line.strip(), "verdict": verdict.value, "failed": failed}
        async with await anyio.open_file(dead_letters, "a", encoding="utf-8") as file:
            await file.write(json.dumps(record) + "\n")


async def run(
    config: ControllerConfig, path: str, *, stop_signals: Sequence[signal.Signals] = ()
) -> Counter[Settlement]:
    """Invoke the functions of every line of ``path``; return how many got each verdict."""
    verdicts: Counter[Settlement] = Counter()
    dead_letters = anyio.Path(f"{path}.dead")
    async with AsyncController(config) as controller:
        await run_source(
            controller,
            read_lines(anyio.Path(path)),
            convert=convert,
            settle=partial(settle, dead_letters, verdicts),
            stop_signals=stop_signals,
        )
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module's docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="a file of JSON lines")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    try:
        config = ControllerConfig.from_env()
        run_it = partial(run, config, args.path, stop_signals=(signal.SIGTERM, signal.SIGINT))
        verdicts = anyio.run(run_it, backend=args.backend)
    except (ConnectorError, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 1
    print(", ".join(f"{kind.value} {verdicts[kind]}" for kind in Settlement))
    return 0 if verdicts[Settlement.ACK] == sum(verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
