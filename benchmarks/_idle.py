"""Scenario f's aioconnector child: the resident memory of a connector waiting for messages.

``bench.py`` runs ``python _idle.py JOB`` (JOB as JSON) in a fresh process, as it runs the other
children with ``bench.py --child JOB``, but this one imports no more than a connector would:
aioconnector, anyio and ``_common`` (the config every controller of the benchmarks uses), not
the bench's argument parsing, report and clients, which would add 2-3 MiB to both figures. It
prints one row:

- ``rss_start_mib``: VmRSS right after the imports, before the event loop starts;
- ``rss_imported_mib``: VmRSS in the running event loop, before the controller is entered
  (the "library imported" figure: the loop is there, uvloop imported on uvloop);
- ``rss_mib``: VmRSS once ``async with AsyncController(config)`` has entered (the controller is
  running: its topic map is built) and it has sat idle for ``job["idle"]`` seconds;
- ``rss_peak_mib``: VmHWM then (what the Go peer's ``peak_rss_kib`` reports).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Final

SRC: Final = Path(__file__).resolve().parent.parent / "src"
if importlib.util.find_spec("aioconnector") is None and (SRC / "aioconnector").is_dir():
    sys.path.insert(0, str(SRC))  # run from a checkout without installing (as bench.py does)

import anyio  # noqa: E402
from _common import (  # noqa: E402
    RESULT_PREFIX,
    TOPIC_ONE,
    controller_config,
    idle_row,
    invoker_name,
    peak_rss_bytes,
    rss_bytes,
)

from aioconnector import AsyncController  # noqa: E402

_MIB: Final = 1024 * 1024
START: Final = rss_bytes()  # the imports done, no event loop yet


async def run_idle(job: dict[str, Any]) -> None:
    imported = rss_bytes()
    concurrency = job["concurrency"]
    config = controller_config(job["port"], concurrency, max(256, concurrency))
    async with AsyncController(config) as controller:
        functions = len(controller.functions_for(TOPIC_ONE))
        if not functions:
            raise RuntimeError(f"the stub gateway lists no function for topic {TOPIC_ONE!r}")
        await anyio.sleep(job["idle"])
        running, peak = rss_bytes(), peak_rss_bytes()
        row = idle_row(
            job,
            client=job["client"],
            rss_mib=running / _MIB,
            rss_peak_mib=peak / _MIB,
            rss_imported_mib=imported / _MIB,
            rss_start_mib=START / _MIB,
            idle_s=job["idle"],
            topic_functions=functions,
            invoker=invoker_name(controller),
        )
        print(RESULT_PREFIX + json.dumps(row), flush=True)


def main(job: dict[str, Any]) -> None:
    if job["backend"] == "trio":
        anyio.run(run_idle, job, backend="trio")
    else:
        options = {"use_uvloop": job["backend"] == "uvloop"}
        anyio.run(run_idle, job, backend="asyncio", backend_options=options)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
