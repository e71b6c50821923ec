"""What the parent and the measuring children share: the request, the wire names, the
controller's config, and gauges.

Gauges read ``/proc`` where there is one (Linux) and fall back on ``resource``: no extra
dependency.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from aioconnector import AsyncController, ControllerConfig

HOST: Final = "127.0.0.1"  # the only address the benchmarks ever talk to
NAMESPACE: Final = "openfaas-fn"
TOPIC_ONE: Final = "bench"  # fn0 only
TOPIC_FANOUT: Final = "fanout"  # fn0 .. fn3
FANOUT_FUNCTIONS: Final = ("fn0", "fn1", "fn2", "fn3")
#: The message every client sends: 100 bytes, as in the reference measurements.
BODY: Final = b'{"event":"bench","payload":"' + b"x" * 70 + b'"}'
assert len(BODY) == 100
#: Headers a connector adds to each invocation (the controller sends these and a User-Agent).
USER_AGENT: Final = "aioconnector-bench"
RESULT_PREFIX: Final = "RESULT "  # a child's stdout line carrying one measurement as JSON
TIMEOUT: Final = 60.0  # no request should get near it; a stuck run is cut by the time caps

_STATUS: Final = Path("/proc/self/status")
_CLEAR_REFS: Final = Path("/proc/self/clear_refs")
_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def function_path(function: str) -> str:
    return f"/function/{function}.{NAMESPACE}"


def controller_config(port: int, concurrency: int, result_buffer: int = 256) -> ControllerConfig:
    """The config every ``AsyncController`` of the benchmarks runs with (the stub at ``port``).

    aioconnector is imported here, not at the top: the parent never needs it.
    """
    from aioconnector import ControllerConfig, RetryPolicy  # noqa: PLC0415

    return ControllerConfig(
        gateway_url=f"http://{HOST}:{port}",
        max_concurrency=concurrency,
        upstream_timeout=TIMEOUT,
        retry=RetryPolicy.disabled(),
        result_buffer=max(result_buffer, 1),
        user_agent=USER_AGENT,
        namespaces=(NAMESPACE,),  # one lookup fewer at start (the stub delays lookups too)
        startup_timeout=30.0,
        drain_timeout=TIMEOUT,
    )


def idle_row(
    job: dict[str, Any], *, client: str, rss_mib: float, rss_peak_mib: float, **extra: object
) -> dict[str, Any]:
    """A row of scenario f (idle RSS), for aioconnector's child and the Go peer alike."""
    return {
        "scenario": "f",
        "case": "idle",
        "backend": job["backend"],
        "client": client,
        "mode": job["mode"],
        "concurrency": job["concurrency"],  # the key that pairs the two rows
        "invocations": 0,
        "messages": 0,
        "failed": 0,
        "elapsed_s": None,
        "inv_per_s": None,
        "msg_per_s": None,
        "cpu_us_per_inv": None,
        "rss_mib": rss_mib,
        "rss_peak_mib": rss_peak_mib,
        "stub_cpu": None,
        "capped": False,
        "cut": 0,
        "error": None,
        **extra,
    }


def invoker_name(controller: AsyncController) -> str:
    """Which invoker the controller picked (for the report only; not a public attribute)."""
    invoker = getattr(getattr(controller, "_session", None), "invoker", None)
    return "?" if invoker is None else type(invoker).__name__


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_bytes() -> int:
    """Resident set size now (VmRSS); the peak so far where /proc is missing."""
    kib = _proc_status_kib("VmRSS:")
    return _maxrss_bytes() if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """The high-water mark of the resident set (VmHWM, or ru_maxrss)."""
    kib = _proc_status_kib("VmHWM:")
    return _maxrss_bytes() if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds() -> float:
    """CPU time of this process (user + system, every thread)."""
    return time.process_time()


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU time of another process (the stub) from /proc/<pid>/stat; None when unknown."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted list."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (10,000 sockets in flight need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard
