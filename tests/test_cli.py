"""The command line, run in-process (``main([...])``) and as ``python -m aioconnector``.

``main`` runs its own event loop, so these tests are sync; a FakeGateway serves on 127.0.0.1
from a blocking portal's thread.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import anyio
import attrs
import httpx
import pytest
from anyio.from_thread import start_blocking_portal

import aioconnector
from aioconnector import ControllerConfig
from aioconnector._cli import main
from aioconnector.testing import FakeGateway, FakeResponse

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])
# Every variable ControllerConfig.from_env may read (field names, plus the env-only ones).
ENV_VARS = frozenset(
    [f.name for f in attrs.fields(ControllerConfig)]
    + ["asynchronous_invocation", "basic_auth", "secret_mount_path"]
)
RESULT_LINE = re.compile(r"^(\S+) -> (\S+)  (\d{3}|FAIL \S+)  (\d+\.\d) ms")
SUMMARY = re.compile(
    r"^summary: (\d+) events sent, (\d+) invocations, (\d+) ok, (\d+) failed, "
    r"duration mean (\d+\.\d) ms, max (\d+\.\d) ms$",
    re.MULTILINE,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets reaches ``ControllerConfig.from_env``."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("startup_timeout", "5")


class Serve:
    """Serves FakeGateways on 127.0.0.1 from a blocking portal's thread: ``url = serve(gw)``."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._portal = stack.enter_context(start_blocking_portal())

    def __call__(self, gateway: FakeGateway) -> str:
        served = self._portal.wrap_async_context_manager(gateway.serve())
        return self._stack.enter_context(served)

    def wait_idle(self, gateway: FakeGateway, timeout: float = 10) -> None:
        """Wait for the gateway's async work (callbacks included) to finish."""

        async def wait() -> None:
            with anyio.fail_after(timeout):
                await gateway.wait_idle()

        self._portal.call(wait)


@pytest.fixture
def serve() -> Iterator[Serve]:
    with ExitStack() as stack:
        yield Serve(stack)


@pytest.fixture
def shop(serve: Serve) -> tuple[FakeGateway, str]:
    """``echo`` on orders, ``ledger`` on orders and billing, ``broken`` (500) on refunds."""
    gateway = FakeGateway()
    gateway.add_function("echo", topics=["orders"])
    gateway.add_function("ledger", topics=["orders", "billing"], handler=FakeResponse(body="ok"))
    gateway.add_function("broken", topics=["refunds"], handler=FakeResponse(status=500))
    return gateway, serve(gateway)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def result_lines(out: str) -> list[re.Match[str]]:
    return [m for m in map(RESULT_LINE.match, out.splitlines()) if m is not None]


def summary(out: str) -> tuple[int, int, int, int, float, float]:
    match = SUMMARY.search(out)
    assert match is not None, out
    sent, invocations, ok, failed = (int(match[i]) for i in range(1, 5))
    return sent, invocations, ok, failed, float(match[5]), float(match[6])


ATTEMPT_LINE = re.compile(
    r"^aioconnector: gateway not ready \(attempt (\d+)\): (.+); retrying in (\d+\.\d)s$"
)


def startup_failure(err: str) -> tuple[list[int], str]:
    """The attempt numbers reported while startup retried, and the one error line after them."""
    *attempts, last = err.splitlines() or [""]
    matches = [ATTEMPT_LINE.match(line) for line in attempts]
    assert all(matches), err
    return [int(m[1]) for m in matches if m], single_error_line(last)


def single_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aioconnector: error: ")
    return lines[0]


# -- demo ---------------------------------------------------------------------------------------


@BACKENDS
def test_demo_with_the_built_in_gateway(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--count", "8", "--interval", "0.01", "--backend", backend])
    out = capsys.readouterr().out
    assert status == 0
    lines = result_lines(out)
    # orders (3 functions) gets events 1, 4, 7; payments (2) 2, 5, 8; reports (1) 3, 6.
    assert len(lines) == 3 * 3 + 3 * 2 + 2 * 1
    functions = {m[2] for m in lines}
    assert functions == {
        f"{name}.openfaas-fn"
        for name in ("order-store", "audit", "payment-processor", "slow-report", "flaky-mailer")
    }
    # flaky-mailer fails its 3rd call, deterministically.
    assert [m[2] for m in lines if m[3] == "FAIL 500"] == ["flaky-mailer.openfaas-fn"]
    sent, invocations, ok, failed, mean, maximum = summary(out)
    assert (sent, invocations, ok, failed) == (8, 17, 16, 1)
    assert maximum >= 300.0  # slow-report takes ~300 ms
    assert 0 < mean <= maximum
    assert out.index("summary:") > out.rindex(" -> ")  # the summary comes last
    assert "\r" not in out  # not a terminal: plain lines, no progress line
    assert "progress:" not in out


@BACKENDS
def test_demo_prints_stats_periodically(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--count", "10", "--interval", "0.05", "--stats-interval", "0.1"]
    assert main([*argv, "--backend", backend]) == 0
    stats = re.findall(
        r"^stats: (\d+\.\d) invocations/s, (\d+) in flight, (\d+) failed, (\d+) events sent$",
        capsys.readouterr().out,
        re.MULTILINE,
    )
    assert stats, "no stats line"
    assert all(0 < int(sent) <= 10 for *_, sent in stats)
    assert any(float(rate) > 0 for rate, *_ in stats)


@BACKENDS
def test_demo_against_a_gateway(
    backend: str, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = FakeGateway()
    gateway.add_function("alpha", topics=["t1"])
    gateway.add_function("beta", topics=["t1", "t2"])
    url = serve(gateway)
    argv = ["demo", "--gateway", url, "--count", "4", "--interval", "0.01", "--backend", backend]
    assert main([*argv, "--max-concurrency", "1"]) == 0
    out = capsys.readouterr().out
    assert "fake OpenFaaS gateway" not in out
    assert summary(out)[:4] == (4, 6, 6, 0)  # t1 (2 functions) gets events 1, 3; t2 gets 2, 4
    calls = gateway.invocations()
    assert sorted((c.function, c.headers["x-message-id"]) for c in calls) == [
        ("alpha.openfaas-fn", "1"), ("alpha.openfaas-fn", "3"),
        ("beta.openfaas-fn", "1"), ("beta.openfaas-fn", "2"),
        ("beta.openfaas-fn", "3"), ("beta.openfaas-fn", "4"),
    ]  # fmt: skip
    for call in calls:
        event = json.loads(call.body)
        assert event["id"] == int(call.headers["x-message-id"])
        assert event["topic"] == call.headers["x-topic"]
        assert call.headers["content-type"] == "application/json"
    assert gateway.peak_in_flight == 1  # --max-concurrency 1


def test_demo_against_a_gateway_without_topics(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = FakeGateway()
    gateway.add_function("untagged")
    assert main(["demo", "--gateway", serve(gateway), "--count", "2"]) == 1
    captured = capsys.readouterr()
    assert "no topics" in single_error_line(captured.err)
    assert "summary" not in captured.out
    assert gateway.invocations() == []


# -- topics -------------------------------------------------------------------------------------


@BACKENDS
def test_topics_table(
    backend: str, shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topics", "--gateway", shop[1], "--backend", backend]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["TOPIC", "billing", "orders", "refunds"]
    assert lines[2].split(maxsplit=1)[1] == "echo.openfaas-fn, ledger.openfaas-fn"
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # one aligned column


def test_topics_json(shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "--json", "--gateway", shop[1]]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "billing": ["ledger.openfaas-fn"],
        "orders": ["echo.openfaas-fn", "ledger.openfaas-fn"],
        "refunds": ["broken.openfaas-fn"],
    }


def test_topics_of_a_gateway_without_topics(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topics", "--gateway", serve(FakeGateway())]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no function" in captured.err


def test_gateway_url_comes_from_the_environment_unless_flagged(
    shop: tuple[FakeGateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("gateway_url", shop[1])
    assert main(["topics"]) == 0
    monkeypatch.setenv("gateway_url", closed_port_url())
    assert main(["topics", "--gateway", shop[1]]) == 0


# -- invoke -------------------------------------------------------------------------------------


@BACKENDS
def test_invoke_data(
    backend: str, shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = shop
    argv = ["invoke", "orders", "--data", "héllo", "--gateway", url, "--backend", backend]
    assert main([*argv, "--header", "X-Message-Id: 42", "--header", "X-Trace:a:b"]) == 0
    out = capsys.readouterr().out
    assert {(m[2], m[3]) for m in result_lines(out)} == {
        ("echo.openfaas-fn", "200"),
        ("ledger.openfaas-fn", "200"),
    }
    assert "héllo" in out.splitlines()  # the echoed body
    calls = gateway.invocations()
    assert len(calls) == 2
    for call in calls:
        assert call.body == "héllo".encode()
        assert call.headers["x-message-id"] == "42"
        assert call.headers["x-trace"] == "a:b"
        assert "content-type" not in call.headers  # only demo and tester default to JSON


def test_invoke_data_file_and_json_output(
    shop: tuple[FakeGateway, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = shop
    message = tmp_path / "message.bin"
    message.write_bytes(b'{"amount": 3}\xff')
    argv = ["invoke", "orders", "--data-file", str(message), "--gateway", url, "--json"]
    assert main([*argv, "--content-type", "application/octet-stream"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["function"] for r in results] == ["echo.openfaas-fn", "ledger.openfaas-fn"]
    echo, ledger = results
    assert set(echo) == {
        "topic",
        "function",
        "status",
        "ok",
        "duration",
        "call_id",
        "error",
        "body",
    }
    assert echo["body"] == '{"amount": 3}\ufffd'  # undecodable bytes replaced
    assert ledger["body"] == "ok"
    for result in results:
        assert (result["topic"], result["status"], result["ok"], result["error"]) == (
            "orders", 200, True, None
        )  # fmt: skip
        assert isinstance(result["call_id"], str)
        assert result["call_id"]
        assert 0 < result["duration"] < 10
    for call in gateway.invocations():
        assert call.body == b'{"amount": 3}\xff'
        assert call.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "stdin",
    [
        pytest.param(lambda: io.TextIOWrapper(io.BytesIO(b"from stdin\xfe")), id="buffer"),
        pytest.param(lambda: io.StringIO("from stdin"), id="text"),
    ],
)
def test_invoke_reads_stdin(
    stdin: Callable[[], io.TextIOBase],
    shop: tuple[FakeGateway, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = stdin()
    monkeypatch.setattr(sys, "stdin", stream)
    assert main(["invoke", "billing", "--gateway", shop[1]]) == 0
    expected = b"from stdin\xfe" if isinstance(stream, io.TextIOWrapper) else b"from stdin"
    assert [call.body for call in shop[0].invocations()] == [expected]


def test_invoke_failure_exits_1(
    shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["invoke", "refunds", "--data", "x", "--gateway", shop[1]]) == 1
    assert [(m[2], m[3]) for m in result_lines(capsys.readouterr().out)] == [
        ("broken.openfaas-fn", "FAIL 500")
    ]
    assert main(["invoke", "refunds", "--data", "x", "--gateway", shop[1], "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["status"], result["ok"]) == (500, False)
    assert "500" in result["error"]


def test_invoke_timeout(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = FakeGateway()
    gateway.add_function("sleepy", topics=["t"])
    gateway.set_fault("sleepy", latency=5)
    url = serve(gateway)
    assert main(["invoke", "t", "--data", "x", "--gateway", url, "--upstream-timeout", "0.2"]) == 1
    (line,) = result_lines(capsys.readouterr().out)
    assert line[3] == "FAIL UpstreamTimeoutError"
    assert float(line[4]) < 2000


def test_upstream_timeout_0_means_none_and_beats_the_environment(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = FakeGateway()
    gateway.add_function("sleepy", topics=["t"])
    gateway.set_fault("sleepy", latency=0.5)
    url = serve(gateway)
    monkeypatch.setenv("upstream_timeout", "0.1")
    argv = ["invoke", "t", "--data", "x", "--gateway", url]
    assert main(argv) == 1  # the environment's 0.1 s
    assert main([*argv, "--upstream-timeout", "0"]) == 0


class TtyStdin(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_invoke_from_a_terminal_says_it_reads_stdin(
    shop: tuple[FakeGateway, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", TtyStdin("typed"))
    assert main(["invoke", "billing", "--gateway", shop[1]]) == 0
    assert "reading the message from stdin" in capsys.readouterr().err
    assert [call.body for call in shop[0].invocations()] == [b"typed"]


def test_invoke_unmatched_topic_exits_2(
    shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["invoke", "nobody", "--data", "x", "--gateway", shop[1], "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "no function subscribes to 'nobody'" in captured.err
    assert "orders" in captured.err  # the topics that do exist
    assert shop[0].invocations() == []


def test_invoke_async_with_callback(
    serve: Serve, shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = shop
    argv = ["invoke", "billing", "--data", "x", "--gateway", url, "--async", "--json"]
    assert main([*argv, "--callback-url", f"{url}/callback"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["status"], result["ok"]) == (202, True)
    (call,) = gateway.invocations()
    assert call.is_async
    assert call.headers["x-callback-url"] == f"{url}/callback"
    # The gateway POSTs the function's answer to itself; let it finish before it shuts down.
    serve.wait_idle(gateway)
    (callback,) = [r for r in gateway.requests if r.path == "/callback"]
    assert callback.headers["x-call-id"] == result["call_id"]
    assert (callback.headers["x-function-status"], callback.body) == ("200", b"ok")


# -- invoke --async --wait: the callbacks' results ---------------------------------------------

WAIT = ["--async", "--wait", "--callback-listen", "127.0.0.1:0"]


@BACKENDS
def test_invoke_async_wait_prints_the_results_of_the_callbacks(
    backend: str, shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = shop
    argv = ["invoke", "orders", "--data", "hi", "--gateway", url, *WAIT, "--backend", backend]
    assert main(argv) == 0
    captured = capsys.readouterr()
    # The functions' own statuses, from the callbacks, not the gateway's 202s.
    assert [(m[2], m[3]) for m in result_lines(captured.out)] == [
        ("echo.openfaas-fn", "200"),
        ("ledger.openfaas-fn", "200"),
    ]
    assert captured.out.splitlines()[1] == "hi"  # echo's body, under its line
    assert "2 invocation(s) sent; waiting for their callbacks at 127.0.0.1:" in captured.err
    calls = gateway.invocations()
    assert [call.is_async for call in calls] == [True, True]
    for call in calls:  # each call has its own callback URL, to the CLI's receiver
        assert call.headers["x-callback-url"].startswith("http://127.0.0.1:")
        assert call.headers["x-callback-url"].split("/")[3] == call.headers["x-call-id"]


def test_invoke_async_wait_json_and_a_failure_exits_1(
    shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = shop
    gateway.add_function("refund-audit", topics=["refunds"], handler=FakeResponse(body="seen"))
    argv = ["invoke", "refunds", "--data", "x", "--gateway", url, *WAIT, "--json"]
    assert main(argv) == 1
    results = json.loads(capsys.readouterr().out)
    assert [(r["function"], r["status"], r["ok"], r["body"]) for r in results] == [
        ("broken.openfaas-fn", 500, False, ""),
        ("refund-audit.openfaas-fn", 200, True, "seen"),
    ]
    assert "500" in results[0]["error"]
    ids = {call.headers["x-call-id"] for call in gateway.invocations()}
    assert {r["call_id"] for r in results} == ids


def test_invoke_async_wait_unmatched_exits_2(
    shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["invoke", "nobody", "--data", "x", "--gateway", shop[1], *WAIT, "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "no function subscribes to 'nobody'" in captured.err
    assert "waiting" not in captured.err
    assert shop[0].invocations() == []


def test_invoke_async_wait_timeout_ends_the_missing_ones_as_timeouts(
    shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, url = shop
    gateway.set_callbacks("ledger", lose=True)  # the queue-worker never calls back for it
    argv = ["invoke", "orders", "--data", "x", "--gateway", url, *WAIT]
    assert main([*argv, "--wait-timeout", "500ms"]) == 1
    captured = capsys.readouterr()
    assert [(m[2], m[3]) for m in result_lines(captured.out)] == [
        ("echo.openfaas-fn", "200"),
        ("ledger.openfaas-fn", "FAIL UpstreamTimeoutError"),
    ]
    assert "--wait-timeout 0.5s passed with 1 invocation(s) awaiting their callback" in (
        captured.err
    )


def test_invoke_async_wait_reads_the_receiver_from_the_environment(
    shop: tuple[FakeGateway, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway, url = shop
    with socket.socket() as sock:  # a free port, given as callback_listen
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("callback_listen", f"127.0.0.1:{port}")
    monkeypatch.setenv("asynchronous_invocation", "true")  # --async by the environment
    assert main(["invoke", "billing", "--data", "x", "--gateway", url, "--wait"]) == 0
    assert [(m[2], m[3]) for m in result_lines(capsys.readouterr().out)] == [
        ("ledger.openfaas-fn", "200")
    ]
    (call,) = gateway.invocations()
    assert call.headers["x-callback-url"].startswith(f"http://127.0.0.1:{port}/")


def test_invoke_async_wait_public_url_is_the_one_the_gateway_gets(
    serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    # The gateway is told the public URL (here: the receiver behind a path prefix, as an
    # Ingress would route it); the receiver routes by the end of the path.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = FakeGateway()
    gateway.add_function("report", topics=["reports"], handler=FakeResponse(body="done"))
    url = serve(gateway)
    argv = ["invoke", "reports", "--data", "x", "--gateway", url, "--async", "--wait"]
    argv += ["--callback-listen", f"127.0.0.1:{port}"]
    argv += ["--callback-public-url", f"http://127.0.0.1:{port}/ingress/cb/"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert [(m[2], m[3]) for m in result_lines(captured.out)] == [("report.openfaas-fn", "200")]
    assert f"waiting for their callbacks at http://127.0.0.1:{port}/ingress/cb" in captured.err
    (call,) = gateway.invocations()
    assert call.headers["x-callback-url"].startswith(f"http://127.0.0.1:{port}/ingress/cb/")


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--wait", "--callback-listen", "127.0.0.1:0"], {}, "--wait waits for the callbacks "
         "of async invocations: add --async"),
        (["--async", "--wait"], {}, "--wait needs a callback receiver: --callback-listen"),
        (["--async", "--wait", "--callback-public-url", "http://h:1"], {},
         "--wait needs a callback receiver"),
        ([*WAIT, "--callback-url", "http://127.0.0.1:1/cb"], {},
         "--wait receives the callbacks itself: leave out --callback-url"),
        (["--async", "--wait-timeout", "5s"], {}, "--wait-timeout go with --async --wait"),
        (["--callback-listen", "127.0.0.1:0", "--callback-public-url", "http://h:1"], {},
         "--callback-listen and --callback-public-url go with --async --wait"),
        (["--async", "--wait", "--callback-listen", "0.0.0.0:0"], {}, "listens on every "
         "interface: set callback_public_url"),
        (["--async", "--wait", "--callback-listen", "nowhere"], {}, "callback_listen"),
        (["--async", "--wait"], {"callback_listen": "127.0.0.1:x"}, "callback_listen"),
    ],
)  # fmt: skip
def test_invoke_async_wait_errors(
    flags: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # An unreachable gateway: each mistake is reported before anything is sent.
    argv = ["invoke", "orders", "--data", "x", "--gateway", "http://127.0.0.1:1", *flags]
    assert main(argv) == 1
    assert message in single_error_line(capsys.readouterr().err)


# -- tester -------------------------------------------------------------------------------------


@BACKENDS
def test_tester(backend: str, serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = FakeGateway()
    gateway.add_function("payments", topics=["payment.received"])
    url = serve(gateway)
    argv = ["tester", "--count", "3", "--interval", "0.01", "--gateway", url, "--backend", backend]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = result_lines(out)
    assert [(m[1], m[2], m[3]) for m in lines] == [
        ("payment.received", "payments.openfaas-fn", "200")
    ] * 3
    assert '"id": 2' in out.splitlines()[1]  # the echoed body, shortened to one line
    calls = gateway.invocations()
    assert [c.headers["x-message-id"] for c in calls] == ["1", "2", "3"]
    for number, call in enumerate(calls, 1):
        payload = json.loads(call.body)
        assert payload["id"] == number
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", payload["sent_at"])
        assert call.headers["content-type"] == "application/json"
    assert summary(out)[:4] == (3, 3, 3, 0)
    assert "\r" not in out  # not a terminal: plain lines, no progress line
    assert "progress:" not in out


class TtyOut(io.StringIO):
    def isatty(self) -> bool:
        return True


PROGRESS = re.compile(
    r"progress: (\d+) of (\d+) events sent, (\d+) invocations done, (\d+) failed, "
    r"\d+\.\d invocations/s"
)


@BACKENDS
@pytest.mark.parametrize("command", ["demo", "tester"])
def test_progress_on_a_terminal(
    command: str, backend: str, shop: tuple[FakeGateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = TtyOut()
    monkeypatch.setattr(sys, "stdout", terminal)
    argv = [command, "--count", "4", "--interval", "0", "--gateway", shop[1]]
    # tester: refunds (broken, 500) on every event; demo: orders, billing, refunds in turn.
    extra = ["--topic", "refunds"] if command == "tester" else ["--stats-interval", "60"]
    status = main([*argv, *extra, "--backend", backend])
    out = terminal.getvalue()
    assert status == (1 if command == "tester" else 0)
    drawn = [PROGRESS.search(part) for part in out.split("\r")]
    counts = [tuple(int(m[i]) for i in range(1, 5)) for m in drawn if m is not None]
    assert counts, out
    assert all(total == 4 for _, total, _, _ in counts)
    assert counts == sorted(counts)  # redrawn as things get done, never backwards
    sent, invocations, ok, failed, _, _ = summary(out)
    assert counts[-1] == (sent, 4, invocations, failed) == (4, 4, ok + failed, failed)
    assert failed >= 1
    # The last progress line stays, ended by a newline, and the summary follows it.
    assert re.search(r"progress: [^\r\n]*\n" + SUMMARY.pattern.lstrip("^"), out, re.MULTILINE)
    # Every result line was printed whole, on a line of its own, above the progress line.
    lines = [line.rpartition("\x1b[K")[2] for line in out.split("\n")]
    assert len(result_lines("\n".join(lines))) == invocations


def test_tester_long_bodies_are_shortened(serve: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = FakeGateway()
    gateway.add_function("big", topics=["t"], handler=FakeResponse(body="word\n" * 100))
    assert main(["tester", "--topic", "t", "--count", "1", "--gateway", serve(gateway)]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if " -> " in line]
    body = line.split(" ms  ", 1)[1]
    assert body == ("word " * 16)[:77] + "..."


@BACKENDS
def test_tester_exits_2_when_nothing_matches(
    backend: str, shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tester", "--count", "2", "--interval", "0", "--gateway", shop[1]]
    assert main([*argv, "--backend", backend]) == 2  # as invoke does
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert "payment.received" in warnings[0]
    assert summary(captured.out)[:4] == (2, 0, 0, 0)


def test_tester_exits_1_when_an_invocation_failed(shop: tuple[FakeGateway, str]) -> None:
    assert main(["tester", "--topic", "refunds", "--count", "1", "--gateway", shop[1]]) == 1


# -- credentials --------------------------------------------------------------------------------


@pytest.fixture
def locked(serve: Serve) -> str:
    gateway = FakeGateway(auth=("admin", "s3cret"))
    gateway.add_function("vault", topics=["secrets"])
    return serve(gateway)


def test_gateway_requires_credentials(locked: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "--gateway", locked]) == 1
    line = single_error_line(capsys.readouterr().err)
    assert "credentials" in line
    assert "--username" in line


def test_wrong_credentials(locked: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw").write_text("guess\n")
    argv = ["topics", "--gateway", locked, "--username", "admin"]
    assert main([*argv, "--password-file", str(tmp_path / "pw")]) == 1
    assert "credentials were rejected" in single_error_line(capsys.readouterr().err)


@BACKENDS
def test_username_and_password_file(
    backend: str, locked: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    argv = ["topics", "--json", "--gateway", locked, "--username", "admin", "--backend", backend]
    assert main([*argv, "--password-file", str(tmp_path / "pw")]) == 0
    assert json.loads(capsys.readouterr().out) == {"secrets": ["vault.openfaas-fn"]}


def test_credentials_from_the_environment_convention(
    locked: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "basic-auth-user").write_text("admin\n")
    (tmp_path / "basic-auth-password").write_text("s3cret\n")
    monkeypatch.setenv("basic_auth", "true")
    monkeypatch.setenv("secret_mount_path", str(tmp_path))
    assert main(["topics", "--gateway", locked]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "--username", "admin"],
        ["invoke", "t", "--password-file", "pw"],
        ["demo", "--username", "admin"],
        ["tester", "--password-file", "pw"],
    ],
)
def test_username_without_password_file_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: aioconnector {argv[0]} ")  # the subcommand's usage
    assert f"aioconnector {argv[0]}: error: --username and --password-file go together" in err


# -- errors -------------------------------------------------------------------------------------


@BACKENDS
def test_unreachable_gateway(
    backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("startup_timeout", "0.3")
    started = time.monotonic()
    argv = ["invoke", "t", "--data", "x", "--gateway", closed_port_url(), "--backend", backend]
    assert main(argv) == 1
    assert time.monotonic() - started < 10
    captured = capsys.readouterr()
    assert "could not build the topic map" in startup_failure(captured.err)[1]
    assert captured.out == ""


@BACKENDS
@pytest.mark.parametrize("command", [["topics"], ["invoke", "t", "--data", "x"], ["tester"]])
def test_startup_retries_are_reported_until_the_startup_timeout(
    command: list[str], backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*command, "--gateway", "http://127.0.0.1:1", "--startup-timeout", "700ms"]
    assert main([*argv, "--backend", backend]) == 1
    captured = capsys.readouterr()
    attempts, error = startup_failure(captured.err)
    assert attempts[:2] == [1, 2]  # one line per failed attempt, numbered in order
    assert attempts == list(range(1, len(attempts) + 1))
    first = ATTEMPT_LINE.match(captured.err.splitlines()[0])
    assert first is not None
    assert "GET /system/namespaces failed" in first[2]
    assert "could not build the topic map from http://127.0.0.1:1" in error
    assert "startup_timeout=0.7s" in error  # the flag won over the environment's 5
    assert "--startup-timeout DURATION" in error
    assert captured.out == ""


class NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """Some web server that is not an OpenFaaS gateway: 404 for everything."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@pytest.fixture
def not_a_gateway() -> Iterator[tuple[str, list[str]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/base", server.paths  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@BACKENDS
def test_a_server_answering_404_is_not_a_gateway(
    backend: str, not_a_gateway: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, paths = not_a_gateway
    argv = ["topics", "--gateway", url, "--startup-timeout", "1m", "--backend", backend]
    assert main(argv) == 1
    captured = capsys.readouterr()
    line = single_error_line(captured.err)  # no retries, so no attempt lines
    assert "GET /system/functions answered HTTP 404" in line
    assert f"{url} is not an OpenFaaS gateway, or gateway_url has a wrong base path" in line
    # /system/namespaces answering 404 is an older gateway; /system/functions is not: no retry.
    assert paths == ["/base/system/namespaces", "/base/system/functions"]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-concurrency", "3"], {"upstream_timeout": "soon"}, "upstream_timeout: invalid"),
        (["--password-file", "/nonexistent/pw", "--username", "u"], {}, "/nonexistent/pw"),
        (["--gateway", "ftp://127.0.0.1"], {}, "gateway_url must be an http"),
        (["--content-type", "t\u00e9xt"], {}, "content_type must be printable ASCII"),
    ],
)
def test_configuration_errors(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["topics", *argv]) == 1
    assert message in single_error_line(capsys.readouterr().err)


def test_a_flag_spares_its_environment_variable(
    shop: tuple[FakeGateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("upstream_timeout", "soon")  # invalid, but --upstream-timeout wins
    assert main(["topics", "--gateway", shop[1], "--upstream-timeout", "5"]) == 0


def test_missing_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["invoke", "t", "--data-file", str(tmp_path / "absent")]) == 1
    assert "absent" in single_error_line(capsys.readouterr().err)


def test_invalid_header_is_reported(
    shop: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["invoke", "orders", "--data", "x", "--gateway", shop[1]]
    assert main([*argv, "--header", "Content-Length: 3"]) == 1
    assert "Content-Length" in single_error_line(capsys.readouterr().err)
    assert shop[0].invocations() == []


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--no-such-flag"],
        [],
        ["demo", "--count", "0"],
        ["demo", "--interval", "-1"],
        ["demo", "--stats-interval", "0"],
        ["tester", "--interval", "nan"],
        ["tester", "--interval", "soon"],
        ["topics", "--backend", "curio"],
        ["topics", "--max-concurrency", "many"],
        ["topics", "--startup-timeout", "0"],
        ["invoke", "t", "--startup-timeout", "soon"],
        ["demo", "--startup-timeout", "-1s"],
        ["invoke", "t", "--header", "no colon"],
        ["invoke", "t", "--data", "x", "--data-file", "y"],
        ["invoke", "t", "--async", "--wait", "--wait-timeout", "0"],
        ["invoke", "t", "--async", "--wait", "--wait-timeout", "soon"],
        ["topics", "--wait"],
        ["invoke"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: aioconnector")
    assert "Traceback" not in err


def test_missing_trio(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "trio", None)  # what find_spec reports when not installed
    assert main(["topics", "--backend", "trio"]) == 1
    assert "pip install 'aioconnector[trio]'" in single_error_line(capsys.readouterr().err)


def test_main_works_outside_the_main_thread(shop: tuple[FakeGateway, str]) -> None:
    # No SIGINT watcher there (signals go to the main thread); the command still runs.
    statuses: list[int] = []
    worker = threading.Thread(
        target=lambda: statuses.append(main(["topics", "--gateway", shop[1]]))
    )
    worker.start()
    worker.join(timeout=30)
    assert statuses == [0]


def test_keyboard_interrupt_exits_130_and_bugs_propagate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(anyio, "run", interrupted)
    assert main(["topics"]) == 130

    def buggy(*args: object, **kwargs: object) -> int:
        raise ExceptionGroup("unhandled", [LookupError("a bug")])

    monkeypatch.setattr(anyio, "run", buggy)
    with pytest.raises(ExceptionGroup):  # not a one-line error: a bug shows its traceback
        main(["topics"])
    assert capsys.readouterr().err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"aioconnector {aioconnector.__version__}"


@pytest.mark.parametrize("command", ["demo", "tester", "topics", "invoke"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main([command, "--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: aioconnector {command}" in out
    assert "--gateway URL" in out
    assert "--backend {asyncio,trio}" in out


# -- as a program -------------------------------------------------------------------------------


def program_env() -> dict[str, str]:
    """The environment minus config variables, importing the aioconnector under test."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    src = str(Path(aioconnector.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def test_python_dash_m_demo() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "aioconnector", "demo", "--count", "5", "--interval", "0.01"],
        capture_output=True,
        text=True,
        timeout=60,
        env=program_env(),
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    # orders (3 functions) gets events 1 and 4, payments (2) 2 and 5, reports (1) 3.
    assert summary(completed.stdout)[:4] == (5, 11, 11, 0)
    assert completed.stderr == ""


def signal_after_first_result(argv: list[str], signum: int, tmp_path: Path) -> tuple[int, str, str]:
    """Run the program, send ``signum`` to it once it printed a result line; its exit status,
    stdout and stderr."""
    command = [sys.executable, "-m", "aioconnector", *argv]
    with (
        (tmp_path / "stderr").open("w+") as stderr,
        subprocess.Popen(  # noqa: S603  (this interpreter, fixed arguments)
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=program_env()
        ) as process,
    ):
        assert process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def read(stdout: IO[str] = process.stdout) -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            seen: list[str] = []
            while not result_lines("".join(seen)):
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                assert line is not None, f"{argv[0]} ended early: {seen}"
                seen.append(line)
            process.send_signal(signum)  # this subprocess only, by its pid
            status = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        reader.join(timeout=10)
        while (line := lines.get_nowait()) is not None:
            seen.append(line)
        stderr.seek(0)
        return status, "".join(seen), stderr.read()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT and SIGTERM are POSIX")
@BACKENDS
@pytest.mark.parametrize(
    ("command", "signum"),
    [
        ("demo", signal.SIGINT),
        ("demo", signal.SIGTERM),
        ("tester", signal.SIGTERM),
        ("tester", signal.SIGINT),
    ],
)
def test_a_signal_stops_the_command_with_a_summary(
    command: str, signum: int, backend: str, serve: Serve, tmp_path: Path
) -> None:
    argv = [command, "--interval", "0.02", "--backend", backend]
    if command == "tester":
        gateway = FakeGateway()
        gateway.add_function("payments", topics=["payment.received"])
        argv += ["--gateway", serve(gateway)]
    status, out, err = signal_after_first_result(argv, signum, tmp_path)
    assert status == 128 + signum, err  # 130 for SIGINT, 143 for SIGTERM, as a shell reports
    sent, invocations, ok, failed, _, _ = summary(out)
    assert sent >= 1
    assert invocations == ok + failed == len(result_lines(out))  # every result was drained
    assert out.rstrip().splitlines()[-1].startswith("summary:")
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is POSIX")
@BACKENDS
def test_ctrl_c_while_waiting_for_callbacks_prints_what_came(backend: str, serve: Serve) -> None:
    gateway = FakeGateway()
    gateway.add_function("quick", topics=["t"], handler=FakeResponse(body="done"))
    gateway.add_function("forever", topics=["t"])
    gateway.set_callbacks("forever", lose=True)
    argv = ["invoke", "t", "--data", "x", "--gateway", serve(gateway), *WAIT]
    command = [sys.executable, "-m", "aioconnector", *argv, "--backend", backend]
    with subprocess.Popen(  # noqa: S603  (this interpreter, fixed arguments)
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=program_env(),
    ) as process:
        assert process.stderr is not None
        try:
            waiting = process.stderr.readline()  # blocks until the CLI waits for callbacks
            assert "2 invocation(s) sent; waiting for their callbacks" in waiting
            # Both were accepted; wait for quick's callback (the gateway posts it at once).
            serve.wait_idle(gateway)
            process.send_signal(signal.SIGINT)  # this subprocess only, by its pid
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert process.returncode == 130, err
    assert [(m[2], m[3]) for m in result_lines(out)] == [
        ("forever.openfaas-fn", "FAIL UpstreamTimeoutError"),
        ("quick.openfaas-fn", "200"),
    ]
    assert "interrupted with 1 invocation(s) awaiting their callback" in err
    assert "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="pty is POSIX")
@BACKENDS
def test_progress_on_a_real_terminal(backend: str) -> None:
    import pty  # POSIX only

    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "aioconnector", "demo", "--count", "3", "--interval", "0"]
    with subprocess.Popen(  # noqa: S603  (this interpreter, fixed arguments)
        [*command, "--backend", backend], stdout=follower, stderr=subprocess.PIPE, env=program_env()
    ) as process:
        os.close(follower)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the program closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert process.wait(timeout=30) == 0
    out = b"".join(chunks).decode()
    # The terminal shows "\r\n" line ends; the progress line is redrawn after a "\r".
    assert "\r\x1b[Kprogress: 3 of 3 events sent, 6 invocations done, 0 failed" in out
    assert summary(out.replace("\r\n", "\n"))[:4] == (3, 6, 6, 0)


def test_main_module_runs_main() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "aioconnector", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=program_env(),
        check=False,
    )
    assert completed.returncode == 0
    assert completed.stdout.strip() == f"aioconnector {aioconnector.__version__}"


async def test_demo_serves_health_and_metrics_on_its_health_port() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "aioconnector", "demo", "--interval", "0.01"]
    env = {**program_env(), "health_port": str(port)}
    quiet = subprocess.DEVNULL  # its result lines: not read here, so never a full pipe
    async with await anyio.open_process(command, env=env, stdout=quiet, stderr=quiet) as process:
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                with anyio.fail_after(30):
                    while True:
                        try:
                            ready = await client.get("/readyz")
                            break
                        except httpx.ConnectError:
                            await anyio.sleep(0.05)
                    metrics = await client.get("/metrics")
                    while "aioconnector_invocations_total{" not in metrics.text:
                        await anyio.sleep(0.05)
                        metrics = await client.get("/metrics")
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                await process.wait()
    assert process.returncode == 130  # SIGINT, as a shell reports it
    assert (ready.status_code, ready.text) == (200, "ready\n")
    names = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert {"aioconnector_invocations", "aioconnector_messages"} <= names
