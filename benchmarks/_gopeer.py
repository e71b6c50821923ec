"""The Go peer: ``github.com/openfaas/connector-sdk`` as one more client of scenarios a, b and f.

``benchmarks/go/`` builds the binary (see benchmarks/README.md); ``--go-peer PATH`` or
``AIOCONNECTOR_GO_PEER`` hands it to ``bench.py``. A job of this client is a child like any
other (pinned to the clients' CPUs, which the binary inherits): it runs the binary once per C
against the same stub, with the same budget, caps and 100-byte body, and turns each JSON line
it prints into a row. CPU per invocation (getrusage) and peak RSS (VmHWM) are the binary's own.
In scenario f it runs the binary once with ``-idle``: no invocation, only its RSS (VmRSS) once
the topic map is built and it has been idle as long as aioconnector's idle child.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import _common
from _common import BODY, FANOUT_FUNCTIONS, HOST, RESULT_PREFIX, TOPIC_FANOUT, TOPIC_ONE

CLIENT: Final = "go-connector-sdk"
ENV: Final = "AIOCONNECTOR_GO_PEER"
#: Throughput (a, b), where the SDK's Invoke from goroutines compares, and idle memory (f).
SCENARIOS: Final = ("a", "b", "f")
_KIB_PER_MIB: Final = 1024


def command(job: dict[str, Any], concurrency: int) -> list[str]:
    """The binary's command line for one C of ``job`` (budgets in Invoke calls, i.e. messages)."""
    if job["scenario"] == "f":
        gateway, topic = f"-gateway=http://{HOST}:{job['port']}", f"-topic={TOPIC_ONE}"
        return [job["go_peer"], gateway, topic, f"-idle={job['idle']}s"]
    fanout = job["scenario"] == "b"
    units = len(FANOUT_FUNCTIONS) if fanout else 1
    return [
        job["go_peer"],
        f"-gateway=http://{HOST}:{job['port']}",
        f"-topic={TOPIC_FANOUT if fanout else TOPIC_ONE}",
        f"-c={concurrency}",
        f"-n={max(1, job['requests'] // units)}",
        f"-body={len(BODY)}",
        f"-cap={job['cap']}s",
        f"-warmup-cap={job['warmup_cap']}s",
    ]


def to_row(job: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """One of the binary's JSON lines as a row of the report."""
    units = len(FANOUT_FUNCTIONS) if job["scenario"] == "b" else 1
    rate = line["inv_per_s"]
    return {
        "scenario": job["scenario"],
        "case": TOPIC_FANOUT if job["scenario"] == "b" else TOPIC_ONE,
        "backend": job["backend"],  # the block it was measured in (Go has no backend)
        "client": CLIENT,
        "mode": job["mode"],
        "concurrency": line["concurrency"],
        "invocations": line["invocations"],
        "messages": line["invocations"] // units,
        "failed": line.get("failed", 0),
        "elapsed_s": line.get("elapsed_s"),
        "inv_per_s": rate,
        "msg_per_s": None if rate is None else rate / units,
        "cpu_us_per_inv": line.get("cpu_us_per_inv"),
        "rss_mib": line["peak_rss_kib"] / _KIB_PER_MIB,  # peak, where the others show VmRSS
        "stub_cpu": None,
        "capped": line.get("capped", False),
        "cut": 0,
        "error": None,
        "invoker": line.get("go_version", "go"),
    }


def idle_row(job: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """The binary's JSON line in ``-idle`` mode as a row of scenario f."""
    return _common.idle_row(
        job,
        client=CLIENT,
        rss_mib=line["rss_kib"] / _KIB_PER_MIB,  # VmRSS, as aioconnector's row
        rss_peak_mib=line["peak_rss_kib"] / _KIB_PER_MIB,
        rss_imported_mib=None,
        idle_s=line.get("idle_s", job["idle"]),
        invoker=line.get("go_version", "go"),
    )


def run(job: dict[str, Any]) -> None:
    """Run the binary for every C of ``job`` and print its rows; exit 1 when it fails."""
    idle = job["scenario"] == "f"
    for concurrency in [job["concurrency"]] if idle else job["concurrency"]:
        completed = subprocess.run(  # noqa: S603  (the binary the user named; 127.0.0.1 only)
            command(job, concurrency),
            capture_output=True,
            text=True,
            timeout=job["timeout"],
            check=False,
        )
        lines = [text for text in completed.stdout.splitlines() if text.startswith("{")]
        if completed.returncode != 0 or not lines:
            sys.stderr.write(completed.stderr)
            print(f"{job['go_peer']}: exit status {completed.returncode}", file=sys.stderr)
            sys.exit(1)
        line = json.loads(lines[-1])
        row = idle_row(job, line) if idle else to_row(job, line)
        print(RESULT_PREFIX + json.dumps(row), flush=True)


def check(path: str) -> Path:
    """The peer's path, resolved (an argparse type: the error names the option)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file (benchmarks/README.md: build it)")
    return resolved
