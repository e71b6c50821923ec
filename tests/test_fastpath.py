"""FastInvoker: the lean HTTP/1.1 pool gives HttpxInvoker's results, and keeps its connections
clean. Against FakeGateway, and against raw loopback servers that misbehave on purpose."""

from __future__ import annotations

import base64
import gc
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import attrs
import h11
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aioconnector import BasicAuth, ControllerConfig
from aioconnector._errors import (
    ResponseTooLargeError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aioconnector._fastpath import FastInvoker
from aioconnector._fastpath import _invoker as invoker_module
from aioconnector._fastpath._connection import MAX_RESPONSE_HEAD_BYTES, Connection
from aioconnector._fastpath._parse import (
    BLANK_LINE,
    Framing,
    MalformedResponseError,
    parse_head,
)
from aioconnector._http import open_client
from aioconnector._invoke import HttpxInvoker, Invocation, _flatten
from aioconnector._results import InvocationResult
from aioconnector.testing import FakeGateway, FakeResponse

HEADERS = (("User-Agent", "aioconnector-test"), ("X-Connector", "tests"), ("X-Topic", "t"))
WAIT = 10  # seconds: the bound on every wait in these tests


def invocation(function: str = "echo", body: bytes = b"hello", **changes: Any) -> Invocation:
    return Invocation(topic="t", function=function, body=body, headers=HEADERS, **changes)


async def result_of(invoker: FastInvoker | HttpxInvoker, call: Invocation) -> InvocationResult:
    """``invoker.invoke(call)``, which is ``None`` only after ``abort()`` (see test_abort.py)."""
    result = await invoker.invoke(call)
    assert result is not None
    return result


@asynccontextmanager
async def fast(url: str, **config: Any) -> AsyncIterator[FastInvoker]:
    invoker = FastInvoker(ControllerConfig(gateway_url=url, **config))
    try:
        yield invoker
    finally:
        await invoker.aclose()


# -- a raw loopback server ---------------------------------------------------------------------


@attrs.define(eq=False)
class Peer:
    """The server's end of one connection, with a read buffer."""

    stream: SocketStream
    index: int
    buffer: bytes = b""

    async def request(self) -> bytes | None:
        """The next request (head and Content-Length body), or None at EOF."""
        while b"\r\n\r\n" not in self.buffer:
            try:
                self.buffer += await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = int(httpx.Headers(_raw_headers(head)).get("content-length", "0"))
        while len(rest) < length:
            rest += await self.stream.receive()
        self.buffer = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def wait_closed(self) -> None:
        """Wait until the client closes its end."""
        try:
            while True:
                await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return


def _raw_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(n.strip(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]


Handler = Callable[[Peer], Awaitable[None]]


@attrs.define(eq=False)
class RawServer:
    url: str
    connections: int = 0
    """Connections accepted so far."""
    closed: int = 0
    """Connections whose handler has ended (and which the server then closed)."""
    requests: list[bytes] = attrs.field(factory=list)


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server = RawServer(url=f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}")

    async def serve(stream: SocketStream) -> None:
        server.connections += 1
        async with stream:
            with suppress(anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
                await handler(Peer(stream, server.connections))
        server.closed += 1

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def answering(*responses: bytes, close: bool = False, record: list[bytes] | None = None) -> Handler:
    """A handler sending ``responses`` in turn to the requests on each connection."""

    async def handle(peer: Peer) -> None:
        for response in responses:
            request = await peer.request()
            if request is None:
                return
            if record is not None:
                record.append(request)
            await peer.send(response)
        if not close:
            await peer.wait_closed()

    return handle


def keep_answering(response: bytes) -> Handler:
    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    return handle


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Call-Id: abc\r\n\r\nok"


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT):
        while not condition():
            await anyio.sleep(0.005)


# -- parity with HttpxInvoker --------------------------------------------------------------------


async def both(url: str, call: Invocation | None = None, **config: Any) -> list[InvocationResult]:
    """The results of HttpxInvoker and FastInvoker for the same invocation, in that order."""
    settings = ControllerConfig(gateway_url=url, **config)
    call = call or invocation()
    async with open_client(settings, None) as client:
        slow = await result_of(HttpxInvoker(client, settings), call)
    async with fast(url, **config) as invoker:
        quick = await result_of(invoker, call)
    return [slow, quick]


VOLATILE = frozenset({"x-call-id", "x-start-time", "x-duration-seconds"})


def outcome(result: InvocationResult, *, volatile: bool = False) -> dict[str, Any]:
    """What must agree between the two invokers (per-request gateway values left out)."""
    error = result.error
    headers = dict(result.headers)
    if volatile:
        headers = {k: v for k, v in headers.items() if k not in VOLATILE}
    return {
        "status": result.status,
        "body": result.body,
        "headers": headers,
        "ok": result.ok,
        "call_id": result.call_id if not volatile else result.call_id is not None,
        "error": type(error),
        "request_sent": getattr(error, "request_sent", None),
        "error_status": getattr(error, "status", None),
        "topic": result.topic,
        "function": result.function,
    }


RAW_RESPONSES = {
    "plain": OK,
    "no reason phrase": b"HTTP/1.1 201\r\nContent-Length: 0\r\n\r\n",
    "repeated headers": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-A: 1\r\nset-cookie: b=2\r\n"
    b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "lf line ends": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-B:  spaced value \t\n\nok",
    "folded header": b"HTTP/1.1 200 OK\r\nX-Long: one\r\n  two\r\nContent-Length: 0\r\n\r\n",
    "utf-8 header": "HTTP/1.1 200 OK\r\nX-Name: Grüße\r\nContent-Length: 0\r\n\r\n".encode(),
    "latin-1 header": b"HTTP/1.1 200 OK\r\nX-Name: Gr\xfc\xdfe\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n5 \r\nworld\r\n0\r\nX-Trailer: yes\r\n\r\n",
    "until close": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nall of this",
    "http/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "informational first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX-P: 1\r\n\r\n"
    + OK,
    "no content on 204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "server error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    "too large by content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n"
    b"hello world, hello",
    "garbage": b"this is not http\r\n\r\n",
    "bad header line": b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    "conflicting lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
    "unknown transfer-encoding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "truncated body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "truncated chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    "truncated head": b"HTTP/1.1 200 OK\r\nContent-Le",
    "nothing": b"",
}


@pytest.mark.parametrize("response", RAW_RESPONSES.values(), ids=RAW_RESPONSES.keys())
async def test_same_results_as_httpx_invoker(response: bytes) -> None:
    # The server answers, then closes the connection: truncations become EOFs.
    async with raw_server(answering(response, close=True)) as server:
        with anyio.fail_after(WAIT):
            slow, quick = await both(server.url, max_response_bytes=16)
    assert outcome(quick) == outcome(slow)


TOO_LARGE_MIDWAY = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    "until close": b"HTTP/1.1 200 OK\r\n\r\nhello world",
}


# HttpxInvoker leaves httpx's body iterator unclosed when it stops reading midway; trio warns
# about that when the generator is collected. Not FastInvoker's doing.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("response", TOO_LARGE_MIDWAY.values(), ids=TOO_LARGE_MIDWAY.keys())
async def test_same_results_as_httpx_invoker_too_large_midway(response: bytes) -> None:
    async with raw_server(answering(response, close=True)) as server:
        with anyio.fail_after(WAIT):
            slow, quick = await both(server.url, max_response_bytes=10)
    assert isinstance(quick.error, ResponseTooLargeError)
    assert outcome(quick) == outcome(slow)


@pytest.mark.parametrize(
    "fault",
    [
        {},
        {"status": 503, "body": "busy", "headers": {"Retry-After": "1"}},
        {"drop_connection": True},
        {"latency": 2.0},
    ],
    ids=["ok", "status", "drop", "late"],
)
async def test_same_results_as_httpx_invoker_against_fake_gateway(fault: dict[str, Any]) -> None:
    gateway = FakeGateway()
    gateway.add_function("echo", handler=FakeResponse(body="hi", headers={"X-Fn": "1"}))
    if fault:
        gateway.set_fault("echo", **fault)
    async with gateway.serve() as url:
        with anyio.fail_after(WAIT):
            slow, quick = await both(url, upstream_timeout=0.2)
    assert outcome(quick, volatile=True) == outcome(slow, volatile=True)


# -- against FakeGateway -----------------------------------------------------------------------


async def test_ok_result() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo")
    context = object()
    async with gateway.serve() as url, fast(url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation("echo.openfaas-fn", context=context))
    assert result.ok
    assert (result.status, result.body, result.error) == (200, b"hello", None)
    assert (result.topic, result.function, result.context) == ("t", "echo.openfaas-fn", context)
    assert result.call_id == result.headers["x-call-id"]
    assert result.call_id
    assert all(name == name.lower() for name in result.headers)
    assert result.duration > 0


async def test_request_on_the_wire() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo")
    async with gateway.serve() as url, fast(url) as invoker:
        with anyio.fail_after(WAIT):
            await result_of(invoker, invocation(body=b"x" * 1000))
            await result_of(invoker, invocation(body=b""))
    first, empty = gateway.invocations("echo")
    assert (first.method, first.path, first.body) == ("POST", "/function/echo", b"x" * 1000)
    assert list(first.headers.items()) == [
        ("host", url.removeprefix("http://")),
        *((name.lower(), value) for name, value in HEADERS),
        ("content-length", "1000"),
    ]
    assert (empty.body, empty.headers["content-length"]) == (b"", "0")


async def test_status_error_keeps_the_body() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo", handler=FakeResponse(status=500, body="it broke"))
    async with gateway.serve() as url, fast(url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
            unknown = await result_of(invoker, invocation("nobody"))
    assert isinstance(result.error, UpstreamStatusError)
    assert (result.error.status, result.status, result.body) == (500, 500, b"it broke")
    assert not result.ok
    assert unknown.status == 404
    assert isinstance(unknown.error, UpstreamStatusError)


async def test_latency_past_the_timeout() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo")
    gateway.set_fault("echo", latency=5)
    async with gateway.serve() as url, fast(url, upstream_timeout=0.2) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamTimeoutError)
    assert (result.status, result.body) == (None, b"")
    assert 0.2 <= result.duration < 2


async def test_dropped_connection() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo")
    gateway.set_fault("echo", drop_connection=True)
    async with gateway.serve() as url, fast(url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert result.status is None
    assert len(gateway.invocations()) == 1  # a new connection: no second attempt


async def test_base_path_and_quoted_address() -> None:
    gateway = FakeGateway(base_path="/gw")
    gateway.add_function("echo")
    async with gateway.serve() as url, fast(url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
            await result_of(invoker, invocation("a/b c?d#é"))
    assert result.ok
    ok, odd = gateway.requests
    assert ok.path == "/gw/function/echo"
    config = ControllerConfig(gateway_url=url)
    async with open_client(config, None) as client:
        expected = httpx.URL(HttpxInvoker(client, config).url_for("a/b c?d#é")).raw_path
    assert odd.path.encode() == expected
    assert odd.path == "/gw/function/a%2Fb%20c%3Fd%23%C3%A9"


async def test_async_route() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo")
    async with gateway.serve() as url, fast(url, async_invocation=True) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
            await gateway.wait_idle()
    assert (result.status, result.ok) == (202, True)
    assert result.call_id
    (request,) = gateway.invocations()
    assert request.path == "/async-function/echo"
    assert request.is_async


async def test_credentials_only_when_auth_invocations() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo")
    creds = BasicAuth("admin", "pä:ss")
    theirs = Invocation(
        topic="t", function="echo", body=b"", headers=(*HEADERS, ("authorization", "Bearer x"))
    )
    async with gateway.serve() as url:
        async with fast(url, credentials=creds) as invoker:
            await result_of(invoker, invocation())
            await result_of(invoker, theirs)
        async with fast(url, credentials=creds, auth_invocations=True) as invoker:
            await result_of(invoker, invocation())
            await result_of(invoker, theirs)
    plain, kept, protected, replaced = gateway.invocations()
    token = "Basic " + base64.b64encode("admin:pä:ss".encode()).decode()
    assert token == httpx.BasicAuth("admin", "pä:ss")._auth_header
    assert "authorization" not in plain.headers
    assert kept.headers["authorization"] == "Bearer x"
    assert protected.headers["authorization"] == token
    assert replaced.headers.get_list("authorization") == [token]


async def test_keep_alive_reuses_few_connections() -> None:
    async with (
        raw_server(keep_answering(OK)) as server,
        fast(server.url, max_concurrency=4) as invoker,
    ):
        with anyio.fail_after(WAIT):
            for _ in range(20):
                assert (await result_of(invoker, invocation())).ok
            assert server.connections == 1

            async def worker() -> None:
                for _ in range(10):
                    assert (await result_of(invoker, invocation())).ok

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(worker)
        assert server.connections <= 4


async def test_never_more_connections_than_max_concurrency() -> None:
    async def slow(peer: Peer) -> None:
        while await peer.request() is not None:
            await anyio.sleep(0.01)
            await peer.send(OK)

    async with raw_server(slow) as server, fast(server.url, max_concurrency=3) as invoker:
        results: list[InvocationResult] = []

        async def one() -> None:
            results.append(await result_of(invoker, invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
    assert server.connections == 3
    assert all(result.ok for result in results)
    assert len(results) == 20


async def test_a_closed_connection_wakes_a_waiting_call() -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    async with (
        raw_server(answering(closing, close=True)) as server,
        fast(server.url, max_concurrency=1) as invoker,
    ):
        results: list[InvocationResult] = []

        async def one() -> None:
            results.append(await result_of(invoker, invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(one)
    assert [result.ok for result in results] == [True] * 5
    assert server.connections == 5


async def test_waiting_for_a_connection_can_be_cancelled() -> None:
    started = anyio.Event()

    async def stuck(peer: Peer) -> None:
        await peer.request()
        started.set()
        await peer.wait_closed()

    async with raw_server(stuck) as server, fast(server.url, max_concurrency=1) as invoker:
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(invoker.invoke, invocation())
                await started.wait()
                with anyio.move_on_after(0.05) as waiting:
                    await result_of(invoker, invocation())  # waits for the only connection
                assert waiting.cancelled_caught
                tg.cancel_scope.cancel()
    assert server.connections == 1


# -- framing and connection reuse against raw servers -------------------------------------------


async def test_chunked_response_then_reuse() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Call-Id: c1\r\n\r\n"
        b"3\r\none\r\n4;name=value\r\n two\r\n6\r\n three\r\n0\r\nX-Sum: 11\r\nX-More: 1\r\n\r\n"
    )
    async with raw_server(keep_answering(chunked)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            first = await result_of(invoker, invocation())
            second = await result_of(invoker, invocation())
    assert first.ok
    assert (first.body, first.call_id) == (b"one two three", "c1")
    assert first.headers["transfer-encoding"] == "chunked"
    assert "x-sum" not in first.headers  # trailers are not headers, as with httpx
    assert second.body == first.body
    assert server.connections == 1


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: keep-alive, Close\r\n\r\n"
        b"until the end",
        b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\nuntil the end",
        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nuntil the endHTTP/1.1",
    ],
    ids=["no length", "connection close", "http/1.0", "bytes beyond the body"],
)
async def test_response_that_ends_the_connection(response: bytes) -> None:
    async with raw_server(answering(response, close=True)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            first = await result_of(invoker, invocation())
            second = await result_of(invoker, invocation())
    assert (first.ok, first.body) == (True, b"until the end")
    assert second.body == first.body
    assert server.connections == 2


async def test_idle_connection_closed_by_the_server_is_retried_once() -> None:
    requests: list[bytes] = []
    async with (
        raw_server(answering(OK, close=True, record=requests)) as server,
        fast(server.url) as invoker,
    ):
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, invocation())).ok
            await wait_until(lambda: server.closed == 1)  # closed while idle in the pool
            await anyio.sleep(0.05)  # the client's loop takes in the FIN on its next turn
            result = await result_of(invoker, invocation())
    assert result.ok
    assert result.attempts == 1
    assert server.connections == 2
    assert len(requests) == 2  # each request was processed once, on an intact connection


async def test_request_dropped_after_reaching_the_server_is_not_sent_again() -> None:
    """The server read the request, then closed without answering: it may have processed it,
    so the request is not sent again by the pool (as Go's net/http: a POST is retried only
    when nothing of it was written)."""
    requests: list[bytes] = []

    async def once_then_drop(peer: Peer) -> None:
        requests.append(await peer.request() or b"")
        if peer.index == 1:
            await peer.send(OK)
            requests.append(await peer.request() or b"")  # arrives on the pooled connection

    async with raw_server(once_then_drop) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, invocation())).ok
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert server.connections == 1  # no second connection: nothing was sent twice
    assert len(requests) == 2


async def test_no_retry_once_a_byte_of_the_answer_arrived() -> None:
    async def half(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await peer.send(b"HTTP/1.1 200")

    async with raw_server(half) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, invocation())).ok
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert server.connections == 1


async def test_dropped_mid_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Call-Id: m\r\n\r\n"
    async with (
        raw_server(answering(head + b"partial", close=True)) as server,
        fast(server.url) as invoker,
    ):
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert (result.status, result.body, result.call_id) == (200, b"", "m")


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        # A chunk that announces too much fails once more than the limit has arrived.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n" + b"x" * 20,
    ],
    ids=["content-length", "chunked", "huge chunk"],
)
async def test_response_too_large_discards_the_connection(response: bytes) -> None:
    async with (
        raw_server(keep_answering(response)) as server,
        fast(server.url, max_response_bytes=10) as invoker,
    ):
        with anyio.fail_after(WAIT):
            first = await result_of(invoker, invocation())
            second = await result_of(invoker, invocation())
    assert isinstance(first.error, ResponseTooLargeError)
    assert (first.status, first.body) == (200, b"")
    assert isinstance(second.error, ResponseTooLargeError)
    assert server.connections == 2


async def test_garbage_response() -> None:
    async with (
        raw_server(keep_answering(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as server,
        fast(server.url) as invoker,
    ):
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert result.status is None


def head_of(size: int) -> bytes:
    """A response head of exactly ``size`` bytes, its closing blank line included."""
    start, end = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Filler: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("piece", [10**6, 65537, 4096], ids=["at once", "64k+1", "4k"])
@pytest.mark.parametrize("spare", [1, 0, -1], ids=["limit-1", "limit", "limit+1"])
async def test_head_limit_is_exact(spare: int, piece: int) -> None:
    """Whatever the reads, the limit counts the head's bytes through its blank line."""
    response = head_of(MAX_RESPONSE_HEAD_BYTES - spare) + b"ok"

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            for start in range(0, len(response), piece):
                await peer.send(response[start : start + piece])

    async with raw_server(handle) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    if spare >= 0:
        assert (result.ok, result.body) == (True, b"ok")
    else:
        assert isinstance(result.error, ResponseTooLargeError)
        assert f"over the limit of {MAX_RESPONSE_HEAD_BYTES} bytes" in str(result.error)
        assert result.status is None


async def test_head_too_large_discards_the_connection() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 200_000 + b"\r\n\r\n"
    async with raw_server(keep_answering(huge)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            first = await result_of(invoker, invocation())
            second = await result_of(invoker, invocation())
    assert isinstance(first.error, ResponseTooLargeError)
    assert isinstance(second.error, ResponseTooLargeError)
    assert server.connections == 2


async def test_head_too_large_is_the_same_error_through_httpx() -> None:
    # httpcore has the same limit but checks it between reads: exact only on the fast path.
    huge = head_of(2 * MAX_RESPONSE_HEAD_BYTES) + b"ok"
    async with raw_server(keep_answering(huge)) as server:
        with anyio.fail_after(WAIT):
            slow, quick = await both(server.url)
    assert isinstance(slow.error, ResponseTooLargeError)
    assert str(slow.error) == str(quick.error)
    assert outcome(quick) == outcome(slow)


async def test_unexpected_switching_protocols() -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"
    async with raw_server(keep_answering(switch)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.status is None


async def test_informational_responses_are_skipped() -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with raw_server(keep_answering(response)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            first = await result_of(invoker, invocation())
            second = await result_of(invoker, invocation())
    assert (first.status, first.body, first.call_id) == (200, b"ok", "abc")
    assert "link" not in first.headers
    assert second.ok
    assert server.connections == 1


SLOW = b"HTTP/1.1 200 OK\r\nX-Call-Id: slow\r\n"
DRIBBLED = {
    "chunked with trailers": SLOW + b"Transfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    "chunked ending in lf": SLOW + b"Transfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\n",
    "content-length": SLOW + b"Content-Length: 11\r\n\r\nhello world",
    "until close": SLOW + b"\r\nhello world",
}


@pytest.mark.parametrize("name", DRIBBLED)
async def test_bytes_received_one_at_a_time(name: str) -> None:
    response = DRIBBLED[name]
    keep_alive = name != "until close"

    async def dribble(peer: Peer) -> None:
        while await peer.request() is not None:
            for index in range(len(response)):
                await peer.send(response[index : index + 1])
                await anyio.sleep(0.0005)
            if not keep_alive:
                return

    async with raw_server(dribble) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            first = await result_of(invoker, invocation())
            second = await result_of(invoker, invocation())
    assert (first.body, first.call_id) == (b"hello world", "slow")
    assert second.body == b"hello world"
    assert server.connections == (1 if keep_alive else 2)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"x" * 200_000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
    ],
    ids=["chunk line too long", "chunk without crlf", "bad trailer"],
)
async def test_malformed_chunked_body(response: bytes) -> None:
    async with raw_server(keep_answering(response)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert result.error.request_sent
    assert result.status == 200


# -- cancellation, closing and connecting -------------------------------------------------------


async def test_cancelled_mid_request_discards_the_connection() -> None:
    arrived = anyio.Event()
    eof_seen = anyio.Event()

    async def first_hangs(peer: Peer) -> None:
        if peer.index == 1:
            await peer.request()
            arrived.set()
            await peer.wait_closed()
            eof_seen.set()
        else:
            await keep_answering(OK)(peer)

    async with raw_server(first_hangs) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(invoker.invoke, invocation())
                    await arrived.wait()
                    scope.cancel()
            await eof_seen.wait()  # the client closed the cancelled connection
            result = await result_of(invoker, invocation())
    assert result.ok
    assert server.connections == 2
    gc.collect()  # an unclosed stream would warn (and filterwarnings=error fail the test)


async def test_timeout_mid_body_discards_the_connection() -> None:
    async def slow_body(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
            if peer.index == 1:
                await anyio.sleep(5)
            await peer.send(b"ok")

    async with (
        raw_server(slow_body) as server,
        fast(server.url, upstream_timeout=0.2) as invoker,
    ):
        with anyio.fail_after(WAIT):
            late = await result_of(invoker, invocation())
            again = await result_of(invoker, invocation())
    assert isinstance(late.error, UpstreamTimeoutError)
    assert (late.status, late.body) == (200, b"")
    assert again.ok
    assert server.connections == 2


async def test_aclose_closes_idle_connections() -> None:
    async with raw_server(keep_answering(OK)) as server:
        invoker = FastInvoker(ControllerConfig(gateway_url=server.url))
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, invocation())).ok
            assert server.closed == 0
            await invoker.aclose()
            await wait_until(lambda: server.closed == 1)  # the server saw EOF
            await invoker.aclose()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await result_of(invoker, invocation())


async def test_connection_in_use_during_aclose_is_closed_after_its_call() -> None:
    arrived = anyio.Event()
    go = anyio.Event()

    async def held(peer: Peer) -> None:
        await peer.request()
        arrived.set()
        await go.wait()
        await peer.send(OK)
        await peer.wait_closed()

    async with raw_server(held) as server:
        invoker = FastInvoker(ControllerConfig(gateway_url=server.url))
        results: list[InvocationResult] = []

        async def call() -> None:
            results.append(await result_of(invoker, invocation()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await arrived.wait()
                await invoker.aclose()
                go.set()
            await wait_until(lambda: server.closed == 1)
    assert results[0].ok


async def test_keep_alive_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invoker_module, "_KEEPALIVE_EXPIRY", 0.0)
    async with raw_server(keep_answering(OK)) as server, fast(server.url) as invoker:
        with anyio.fail_after(WAIT):
            assert (await result_of(invoker, invocation())).ok
            assert (await result_of(invoker, invocation())).ok
            await wait_until(lambda: server.closed == 1)  # the expired one was closed
    assert server.connections == 2


async def test_connection_refused() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()  # nobody listens there now
    async with fast(f"http://127.0.0.1:{port}") as invoker:
        with anyio.fail_after(WAIT):
            result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert not result.error.request_sent
    assert result.status is None


async def test_tls_handshake_failure_is_not_sent() -> None:
    # A plain-http server behind an https URL: the handshake fails, the request never left.
    async def plain(peer: Peer) -> None:
        await peer.stream.receive()  # the ClientHello
        await peer.send(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")

    async with raw_server(plain) as server:
        url = server.url.replace("http://", "https://")
        async with fast(url) as invoker:
            with anyio.fail_after(WAIT):
                result = await result_of(invoker, invocation())
    assert isinstance(result.error, UpstreamConnectionError)
    assert not result.error.request_sent


def test_request_head_cache_is_bounded() -> None:
    invoker = FastInvoker(ControllerConfig(gateway_url="http://127.0.0.1:8080/base"))
    for index in range(invoker_module._HEAD_CACHE + 50):
        invoker._prepare((f"fn{index}", HEADERS))
    assert len(invoker._heads) == invoker_module._HEAD_CACHE
    head = invoker._prepare(("fn", (("X-A", "1"),)))
    assert head == (
        b"POST /base/function/fn HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-A: 1\r\nContent-Length: "
    )


def test_host_header_leaves_out_the_default_port() -> None:
    invoker = FastInvoker(ControllerConfig(gateway_url="http://gateway:80"))
    assert invoker._prepare(("f", ())).startswith(b"POST /function/f HTTP/1.1\r\nHost: gateway\r\n")


# -- the head parser against h11 ----------------------------------------------------------------


def h11_reading(data: bytes) -> tuple[int, dict[str, str], int | str | None, bool] | None:
    """What h11 (and httpx on top of it) makes of a response head; None when it rejects it."""
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="POST", target="/", headers=[("Host", "h")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, (h11.Response, h11.InformationalResponse))
    headers = _flatten(httpx.Headers(list(event.headers.raw_items())))
    if isinstance(event, h11.InformationalResponse):
        return event.status_code, headers, None, False
    kind, args = h11._connection._body_framing(b"POST", event)
    framing: int | str = {"content-length": args[0] if args else 0}.get(kind, kind)
    keep_alive = h11._connection._keep_alive(event) and framing != "http/1.0"
    return event.status_code, headers, framing, keep_alive


def our_reading(data: bytes) -> tuple[int, dict[str, str], int | str | None, bool] | None:
    """As `h11_reading` puts it: the framing as h11 names it, or the Content-Length."""
    match = BLANK_LINE.search(data)
    assert match is not None
    try:
        status, headers, framing, length, keep_alive = parse_head(data[: match.start() + 1])
    except MalformedResponseError:
        return None
    if status < 200:
        return status, headers, None, False
    named: dict[Framing, int | str] = {
        Framing.LENGTH: length,
        Framing.CHUNKED: "chunked",
        Framing.UNTIL_CLOSE: "http/1.0",
    }
    return status, headers, named[framing], keep_alive


NAMES = st.sampled_from(
    [
        *(b"Content-Type", b"content-length", b"Content-Length", b"Transfer-Encoding"),
        *(b"connection", b"X-Call-Id", b"X-A", b"x-a", b"Set-Cookie", b"~!#$%&'*+.^_`|"),
        *(b"Bad Name", b"", b"\xc3\xa9"),
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            *(b"5", b"0", b"5, 5", b"5,6", b" 7 ", b"", b"chunked", b"Chunked", b"gzip"),
            *(b"close", b"keep-alive, Close", b"a\tb", b"  sp  aced \t", b"-1", b"0x10"),
            *(b"123456789012345678901", "\u00b2".encode(), "Gr\u00fc\u00dfe".encode()),
            *(b"Gr\xfc\xdfe", b"a\x00b", b"a\rb", b"\x0b"),
        ]
    ),
    st.binary(max_size=8),
)
LINES = st.one_of(
    st.tuples(NAMES, st.sampled_from([b":", b": ", b":\t", b" :"]), VALUES).map(b"".join),
    VALUES.map(lambda value: b" " + value),  # obsolete line folding
    st.binary(max_size=10),
)
STATUS_LINES = st.one_of(
    st.builds(
        lambda version, status, reason: b"HTTP/%b %b%b" % (version, status, reason),
        st.sampled_from([b"1.1", b"1.0", b"2.0", b"1.x", b"11"]),
        st.sampled_from([b"200", b"204", b"304", b"100", b"101", b"199", b"099", b"999", b"20"]),
        st.sampled_from([b"", b" ", b" OK", b" Not\tOK", b" \xff", b"OK", b" a\rb"]),
    ),
    st.binary(max_size=16),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    STATUS_LINES,
    st.lists(st.tuples(LINES, st.sampled_from([b"\r\n", b"\n"])), max_size=6),
    st.sampled_from([b"\r\n", b"\n"]),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_head_parser_agrees_with_h11(
    status_line: bytes, lines: list[tuple[bytes, bytes]], first_end: bytes, last_end: bytes
) -> None:
    data = status_line + first_end + b"".join(line + end for line, end in lines) + last_end
    ours = our_reading(data)
    assume(ours is None or ours[0] != 101)  # h11 only accepts a 101 it asked for
    assert ours == h11_reading(data)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 05\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n\t b\r\n \r\n\r\n",
        b"HTTP/1.1 200 OK\r\n continued\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 099 Too Early\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
    ],
)
def test_head_parser_agrees_with_h11_on_edge_cases(data: bytes) -> None:
    assert our_reading(data) == h11_reading(data)


# -- whole responses, split anywhere, read as h11 reads them ---------------------------------


class _Pieces:
    """A wire that hands out a response in the given pieces, then EOF."""

    deadline = math.inf

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> bool:
        self.sent.append(data)
        return False

    async def drain(self) -> None:  # pragma: no cover - write never asks for it
        raise NotImplementedError

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pieces:
            raise anyio.EndOfStream
        return self._pieces.pop(0)

    def intact(self) -> bool:  # pragma: no cover - never pooled here
        return True

    def arm(self, deadline: float) -> None:  # pragma: no cover
        self.deadline = deadline

    def expire(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover
        self._pieces = []


@st.composite
def _responses(draw: st.DrawFn) -> tuple[bytes, int, bytes]:
    status = draw(st.sampled_from([200, 201, 202, 400, 404, 429, 500, 503]))
    body = draw(st.binary(max_size=300))
    names = draw(st.lists(st.sampled_from(["X-Call-Id", "X-A", "x-b", "Server"]), max_size=4))
    head = [f"HTTP/1.1 {status} Whatever".encode()]
    head += [f"{name}: v{i}".encode() for i, name in enumerate(names)]
    if draw(st.booleans()):
        head.append(f"Content-Length: {len(body)}".encode())
        payload = body
    else:
        head.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    raw = b"\r\n".join(head) + b"\r\n\r\n" + payload
    return raw, status, body


@given(response=_responses(), data=st.data())
async def test_any_split_of_a_response_reads_as_h11_reads_it(
    response: tuple[bytes, int, bytes], data: st.DataObject
) -> None:
    raw, status, body = response
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=8)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if b > a]
    connection = Connection(_Pieces(pieces))
    got_status, headers, got_body, in_step = await connection.exchange(b"request", 1 << 20)

    reference = h11.Connection(h11.CLIENT)
    reference.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
    reference.receive_data(raw)
    head = reference.next_event()
    assert isinstance(head, h11.Response)
    h11_body = b""
    while not isinstance(event := reference.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        h11_body += event.data
    assert (got_status, got_body) == (head.status_code, h11_body) == (status, body)
    h11_call_ids = [v.decode() for k, v in head.headers if k == b"x-call-id"]
    assert headers.get("x-call-id") == (", ".join(h11_call_ids) or None)
    assert in_step
    assert connection.wire.sent == [b"request"]  # type: ignore[attr-defined]
