"""The benchmark suite runs end to end: ``benchmarks/bench.py --quick`` on one scenario."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.mark.timeout(90)  # the subprocess has its own 60 s limit
def test_quick_throughput_run(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    completed = subprocess.run(  # noqa: S603  (our own script, fixed arguments)
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--scenario",
            "a",
            "--backend",
            "asyncio",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    header = next((line for line in lines if line.startswith("backend ")), None)
    assert header is not None, completed.stdout
    for column in ("client", "inv/s", "vs raw", "vs httpx", "cpu us/inv", "RSS MiB"):
        assert column in header
    rows = [line.split() for line in lines if line.startswith("asyncio ")]
    clients = {cells[1] for cells in rows}
    assert {"raw", "httpx", "aioconnector", "aioconnector+httpx"} <= clients, completed.stdout

    document = json.loads(output.read_text())
    measured = [row for row in document["rows"] if row["scenario"] == "a"]
    assert {row["client"] for row in measured} == clients
    assert all(row["inv_per_s"] > 0 for row in measured)
    assert all(row["failed"] == 0 for row in measured)
    assert document["failures"] == []
