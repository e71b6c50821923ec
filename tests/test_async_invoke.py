"""invoke_async: pending invocations completed by the queue-worker's callbacks (asyncio and trio).

The FakeGateway posts each callback as OpenFaaS's queue-worker does; to replay, forge, delay or
lose callbacks, a test gives it a ``callback_transport`` that keeps them (`Kept`) instead.
"""

from __future__ import annotations

import functools
import random
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from aioconnector import (
    AsyncController,
    ControllerConfig,
    ControllerStateError,
    InvocationCancelledError,
    InvocationResult,
    PendingInvocation,
    ResponseTooLargeError,
    RetryPolicy,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

from .helpers import Wire


def make(
    url: str, transport: httpx.AsyncBaseTransport | None = None, **config: Any
) -> AsyncController:
    config.setdefault("callback_listen", "127.0.0.1:0")
    config.setdefault("startup_timeout", 5.0)
    config.setdefault("drain_timeout", 0)  # invocations left pending: cancelled at exit
    return AsyncController(ControllerConfig(gateway_url=url, **config), transport=transport)


class Kept:
    """A callback transport for the FakeGateway that keeps the callbacks instead of delivering
    them (a lost callback), so a test can deliver them later, twice, or altered."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        def keep(request: httpx.Request) -> httpx.Response:
            request.read()
            self.requests.append(request)
            return httpx.Response(200)

        return httpx.MockTransport(keep)

    async def deliver(
        self,
        index: int = 0,
        *,
        url: str | None = None,
        body: bytes | None = None,
        drop: tuple[str, ...] = (),
        **headers: str,
    ) -> httpx.Response:
        """POST the kept callback number ``index`` to the receiver, for real; ``headers``
        (underscores for dashes) replace or add to its own."""
        kept = self.requests[index]
        sent = httpx.Headers(kept.headers)
        for name in ("host", "content-length", *drop):
            sent.pop(name, None)
        for name, value in headers.items():
            sent[name.replace("_", "-")] = value
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.post(
                url or str(kept.url),
                content=kept.content if body is None else body,
                headers=sent,
            )


@asynccontextmanager
async def kept_gateway(**functions: Any) -> AsyncIterator[tuple[FakeGateway, Kept, str]]:
    kept = Kept()
    gateway = FakeGateway(callback_transport=kept.transport())
    for name, handler in functions.items():
        gateway.add_function(name, topics="t", handler=handler)
    async with gateway.serve() as url:
        yield gateway, kept, url


async def settled(gateway: FakeGateway) -> None:
    with anyio.fail_after(10):
        await gateway.wait_idle()


# -- the usual case ------------------------------------------------------------------------


async def test_results_come_by_callback(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    wire.gateway.add_function(
        "bad", topics="t", handler=FakeResponse(status=500, body=b"no", headers={"X-Mine": "1"})
    )
    async with wire.controller(callback_listen="127.0.0.1:0") as controller:
        host, port = controller.callback_address or ("", 0)
        assert host == "127.0.0.1"
        assert port > 0
        async with controller.results() as stream:
            with anyio.fail_after(10):
                pending = await controller.invoke_async("t", b"hello", context="m-1")
                results = [await p.result() for p in pending]
                streamed = [await stream.receive(), await stream.receive()]
        assert controller.stats().in_flight == 0
        stats = controller.callback_stats()
    assert [p.function for p in pending] == ["bad.openfaas-fn", "echo.openfaas-fn"]
    bad, echo = results
    assert echo.ok
    assert (echo.status, echo.body, echo.topic, echo.context) == (200, b"hello", "t", "m-1")
    assert not bad.ok
    assert isinstance(bad.error, UpstreamStatusError)
    assert (bad.status, bad.body, bad.headers["x-mine"]) == (500, b"no", "1")
    assert bad.headers["x-function-name"] == "bad.openfaas-fn"
    assert "user-agent" not in bad.headers  # the callback client's, not the function's
    for p, result in zip(pending, results, strict=True):
        assert result.call_id == p.call_id
        assert uuid.UUID(p.call_id).version == 4
        assert result.duration == float(result.headers["x-duration-seconds"])
        assert result.attempts == 1
        assert p.done()
    assert sorted(streamed, key=lambda r: r.function) == results
    assert (stats.accepted, stats.pending, stats.forged, stats.duplicate) == (2, 0, 0, 0)
    for request in wire.gateway.invocations():
        assert request.is_async
        call_id = request.headers["x-call-id"]
        assert call_id in {p.call_id for p in pending}
        url = f"http://127.0.0.1:{port}/{call_id}/"
        assert request.headers["x-callback-url"].startswith(url)


async def test_nothing_matched_is_an_empty_tuple() -> None:
    async with kept_gateway(echo=None) as (_, _, url), make(url) as controller:
        assert await controller.invoke_async("nobody", b"x") == ()
        assert controller.stats().unmatched_messages == 1


async def test_without_a_receiver_invoke_async_says_what_to_set() -> None:
    async with (
        kept_gateway(echo=None) as (_, _, url),
        make(url, callback_listen=None) as controller,
    ):
        with pytest.raises(ControllerStateError, match="callback_listen"):
            await controller.invoke_async("t", b"x")


@pytest.mark.parametrize("name", ["X-Call-Id", "x-callback-url"])
async def test_reserved_headers_are_refused(name: str) -> None:
    async with kept_gateway(echo=None) as (gateway, _, url), make(url) as controller:
        with pytest.raises(ValueError, match="set by invoke_async"):
            await controller.invoke_async("t", b"x", headers={name: "mine"})
    assert gateway.invocations() == []


async def test_a_refused_request_is_a_failed_result_at_once() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url):
        gateway.set_fault("echo", status=503)
        async with make(url, retry=RetryPolicy.disabled()) as controller:
            (pending,) = await controller.invoke_async("t", b"x")
            assert pending.done()
            result = await pending.result()
            assert controller.callback_stats().pending == 0
    assert isinstance(result.error, UpstreamStatusError)
    assert (result.status, result.call_id) == (503, pending.call_id)
    assert kept.requests == []


async def test_a_refusal_is_retried_with_the_same_call_id() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo", topics="t")
    gateway.set_fault("echo", status=503, headers={"Retry-After": "0"}, times=1)
    async with gateway.serve() as url, make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"x")
        with anyio.fail_after(10):
            result = await pending.result()
        assert controller.stats().retries == 1
    assert result.ok
    first, second = gateway.invocations()
    assert first.headers["x-call-id"] == second.headers["x-call-id"] == pending.call_id


# -- correlation ---------------------------------------------------------------------------


class CallbackFirst(httpx.AsyncBaseTransport):
    """Delivers each async invocation's callback to the receiver, for real, and only then
    answers 202: the fastest possible callback. Everything else goes to the gateway."""

    def __init__(self, gateway: FakeGateway) -> None:
        self._inner = gateway.transport()
        self.controller: AsyncController | None = None
        self.pending_at_send: list[int] = []
        self.answers: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.startswith("/async-function/"):
            return await self._inner.handle_async_request(request)
        assert self.controller is not None
        self.pending_at_send.append(self.controller.callback_stats().pending)
        headers = {
            "X-Call-Id": request.headers["x-call-id"],
            "X-Function-Status": "201",
            "X-Duration-Seconds": "0.25",
        }
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.post(
                request.headers["x-callback-url"], content=b"early", headers=headers
            )
        self.answers.append(answer.status_code)
        return httpx.Response(202, request=request)


async def test_a_callback_before_the_202_completes_the_invocation() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo", topics="t")
    transport = CallbackFirst(gateway)
    async with make("http://gateway.test", transport=transport) as controller:
        transport.controller = controller
        with anyio.fail_after(10):
            (pending,) = await controller.invoke_async("t", b"x")
        assert pending.done()  # the callback came before invoke_async returned
        result = await pending.result()
    assert transport.pending_at_send == [1]  # the entry existed before the request left
    assert transport.answers == [200]
    assert (result.status, result.body, result.duration) == (201, b"early", 0.25)
    assert result.call_id == pending.call_id


async def test_a_thousand_callbacks_out_of_order_find_their_invocations() -> None:
    kept = Kept()
    gateway = FakeGateway(callback_transport=kept.transport())
    gateway.add_function("echo", topics="t")
    async with make("http://gateway.test", transport=gateway.transport()) as controller:
        pending: dict[int, PendingInvocation] = {}

        async def one(number: int) -> None:
            (pending[number],) = await controller.invoke_async("t", str(number), context=number)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for number in range(1000):
                    tg.start_soon(one, number)
            await settled(gateway)
        assert controller.callback_stats().pending == 1000
        random.Random(13).shuffle(kept.requests)
        for request in kept.requests:
            headers = dict(request.headers)
            assert controller.handle_callback(request.url.path, headers, request.content) == 200
        results = {n: await p.result() for n, p in pending.items()}
        assert controller.callback_stats().accepted == 1000
    for number, result in results.items():
        assert (result.body, result.context) == (str(number).encode(), number)
        assert result.call_id == pending[number].call_id


# -- rejected callbacks --------------------------------------------------------------------


async def test_duplicate_callbacks_first_wins_others_counted() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url), make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"first")
        await settled(gateway)
        assert not pending.done()
        assert (await kept.deliver()).status_code == 200
        again = await kept.deliver()
        altered = await kept.deliver(body=b"second", X_Function_Status="500")
        result = await pending.result()
        stats = controller.callback_stats()
    assert (again.status_code, altered.status_code) == (409, 409)
    assert (result.status, result.body) == (200, b"first")
    assert (stats.accepted, stats.duplicate) == (1, 2)


async def test_forged_callbacks_are_rejected_and_never_delivered() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url), make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"real")
        await settled(gateway)
        real = str(kept.requests[0].url)
        base, call_id, token = real.rsplit("/", 2)
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        forged = [
            await kept.deliver(url=f"{base}/{call_id}/{wrong}", body=b"forged"),
            await kept.deliver(url=f"{base}/{call_id}", body=b"forged"),  # no token
            await kept.deliver(url=f"{base}/{call_id}/", body=b"forged"),
            await kept.deliver(url=f"{base}/{uuid.uuid4()}/{token}", body=b"forged"),
            await kept.deliver(url=f"{base}/{'x' * 500}/{token}", body=b"forged"),
        ]
        mismatch = await kept.deliver(body=b"forged", X_Call_Id=str(uuid.uuid4()))
        no_status = await kept.deliver(body=b"forged", drop=("x-function-status",))
        bad_status = await kept.deliver(body=b"forged", X_Function_Status="2OO")
        async with httpx.AsyncClient(trust_env=False) as client:
            get = await client.get(real)
        assert not pending.done()
        stats = controller.callback_stats()
        assert (await kept.deliver()).status_code == 200  # the real one still gets through
        result = await pending.result()
    assert [answer.status_code for answer in forged] == [403] * 5
    assert [mismatch.status_code, no_status.status_code, bad_status.status_code] == [400] * 3
    assert get.status_code == 405
    assert (stats.forged, stats.malformed, stats.not_post, stats.accepted) == (5, 3, 1, 0)
    assert result.body == b"real"


async def test_an_oversized_callback_is_rejected_and_ends_the_invocation() -> None:
    gateway = FakeGateway()
    gateway.add_function("echo", topics="t")
    async with gateway.serve() as url, make(url, max_response_bytes=64) as controller:
        (pending,) = await controller.invoke_async("t", b"x" * 65)
        with anyio.fail_after(10):
            result = await pending.result()
        stats = controller.callback_stats()
    assert isinstance(result.error, ResponseTooLargeError)
    assert (result.status, result.body) == (200, b"")
    assert (stats.too_large, stats.accepted) == (1, 0)


async def raw_exchange(address: tuple[str, int], head: bytes) -> bytes:
    """Send a request head only and read the answer: proof that it came without the body."""
    async with await anyio.connect_tcp(*address) as stream:
        await stream.send(head)
        answer = b""
        with anyio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive()
    return answer


@pytest.mark.parametrize(("valid", "status"), [(True, b"413"), (False, b"403")])
async def test_a_huge_declared_body_is_answered_before_it_is_sent(
    valid: bool, status: bytes
) -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url), make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"x")
        await settled(gateway)
        path = kept.requests[0].url.raw_path if valid else b"/a/b"
        head = b"POST %s HTTP/1.1\r\nHost: cb\r\nX-Function-Status: 200\r\n" % path
        head += b"Content-Length: 1000000000\r\n\r\n"
        assert controller.callback_address is not None
        answer = await raw_exchange(controller.callback_address, head)
        assert pending.done() is valid
    assert answer.startswith(b"HTTP/1.1 " + status)


async def test_the_server_answers_a_malformed_request_400() -> None:
    async with kept_gateway(echo=None) as (_, _, url), make(url) as controller:
        assert controller.callback_address is not None
        answer = await raw_exchange(controller.callback_address, b"NONSENSE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")


async def test_several_callbacks_on_one_client() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url), make(url) as controller:
        (first,) = await controller.invoke_async("t", b"1")
        (second,) = await controller.invoke_async("t", b"2")
        await settled(gateway)
        async with httpx.AsyncClient(trust_env=False) as client:
            for request in kept.requests:
                headers = {"X-Function-Status": "200"}
                answer = await client.post(str(request.url), content=b"ok", headers=headers)
                assert answer.status_code == 200
        assert first.done()
        assert second.done()


# -- retries, timeouts, shutdown -------------------------------------------------------------


async def test_a_retried_attempt_is_recorded_and_the_last_one_is_final() -> None:
    failing = FakeResponse(status=500, body=b"down")
    async with kept_gateway(flaky=failing) as (gateway, kept, url), make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"x")
        await settled(gateway)
        first = await kept.deliver(X_Retry="1", X_Retry_Max="3")
        second = await kept.deliver(X_Retry="2", X_Retry_Max="3")
        assert not pending.done()
        last = await kept.deliver(X_Retry="3", X_Retry_Max="3")
        result = await pending.result()
        stats = controller.callback_stats()
    assert [first.status_code, second.status_code, last.status_code] == [202, 202, 200]
    assert (result.status, result.attempts, result.body) == (500, 3, b"down")
    assert isinstance(result.error, UpstreamStatusError)
    assert (stats.attempts, stats.accepted) == (2, 1)


@pytest.mark.parametrize("status", ["200", "404"])
async def test_a_status_that_is_not_retried_is_final_at_once(status: str) -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url), make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"x")
        await settled(gateway)
        answer = await kept.deliver(X_Retry="1", X_Retry_Max="3", X_Function_Status=status)
        result = await pending.result()
    assert answer.status_code == 200
    assert (result.status, result.attempts) == (int(status), 1)


async def test_a_callback_that_never_comes_is_a_timeout_and_a_late_one_is_rejected() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url), make(url) as controller:
        async with controller.results() as stream:
            (pending,) = await controller.invoke_async("t", b"x")
            result = await pending.result(timeout=0)
            with anyio.fail_after(10):
                streamed = await stream.receive()
        assert await pending.result() is result  # the end is final
        await settled(gateway)
        late = await kept.deliver()
        stats = controller.callback_stats()
    assert isinstance(result.error, UpstreamTimeoutError)
    assert (result.status, result.call_id) == (None, pending.call_id)
    assert streamed == result
    assert late.status_code == 410
    assert (stats.timed_out, stats.late, stats.pending) == (1, 1, 0)


async def test_callback_timeout_ends_pending_invocations() -> None:
    async with (
        kept_gateway(echo=None) as (_, _, url),
        make(url, callback_timeout=0.05) as controller,
    ):
        (pending,) = await controller.invoke_async("t", b"x")
        with anyio.fail_after(10):
            result = await pending.result()
    assert isinstance(result.error, UpstreamTimeoutError)
    assert "callback_timeout=0.05" in str(result.error)


async def test_result_timeout_is_checked() -> None:
    async with kept_gateway(echo=None) as (_, _, url), make(url) as controller:
        (pending,) = await controller.invoke_async("t", b"x")
        with pytest.raises(ValueError, match="timeout must be >= 0"):
            await pending.result(timeout=-1)
        with pytest.raises(TypeError, match="timeout must be None or a number"):
            await pending.result(timeout="1")  # type: ignore[arg-type]
        assert not pending.done()


async def test_shutdown_cancels_the_invocations_still_waiting_after_drain_timeout() -> None:
    async with kept_gateway(echo=None) as (gateway, _, url):
        controller = make(url, drain_timeout=0.05)
        async with controller:
            stream = controller.results()
            pending = [(await controller.invoke_async("t", b"x"))[0] for _ in range(3)]
            await settled(gateway)
        results = [await p.result() for p in pending]
        async with stream:
            streamed = [result async for result in stream]
    for result in results:
        assert isinstance(result.error, InvocationCancelledError)
    assert sorted(r.call_id or "" for r in streamed) == sorted(p.call_id for p in pending)
    assert controller.callback_stats().pending == 0


async def test_shutdown_waits_for_outstanding_callbacks_within_drain_timeout() -> None:
    release = anyio.Event()

    async def slow(request: RecordedRequest) -> FakeResponse:
        await release.wait()
        return FakeResponse(body=b"finally")

    gateway = FakeGateway()
    gateway.add_function("slow", topics="t", handler=slow)
    order: list[str] = []
    async with gateway.serve() as url:
        controller = make(url, drain_timeout=30)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                async with controller:
                    (pending,) = await controller.invoke_async("t", b"x")

                    async def finish() -> None:
                        await anyio.sleep(0.05)
                        order.append("callback sent")
                        release.set()

                    tg.start_soon(finish)
                order.append("controller closed")
    assert order == ["callback sent", "controller closed"]
    result = await pending.result()
    assert (result.ok, result.body) == (True, b"finally")


async def test_max_pending_async_holds_back_new_invocations() -> None:
    async with (
        kept_gateway(echo=None) as (gateway, kept, url),
        make(url, max_pending_async=1) as controller,
    ):
        (first,) = await controller.invoke_async("t", b"1")
        assert controller.stats().in_flight == 0  # no concurrency slot while pending
        second: list[PendingInvocation] = []

        async def another() -> None:
            second.extend(await controller.invoke_async("t", b"2"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(another)
            await settled(gateway)
            await anyio.wait_all_tasks_blocked()
            assert second == []
            assert len(gateway.invocations()) == 1
            assert (await kept.deliver()).status_code == 200
        assert len(second) == 1
        assert first.done()
        assert len(gateway.invocations()) == 2


# -- the configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "::1:80", "a b:1", "1:-1"]
)
def test_callback_listen_is_checked(listen: str) -> None:
    with pytest.raises(ValueError, match="callback_listen must be HOST:PORT"):
        ControllerConfig(gateway_url="http://gw", callback_listen=listen)


def test_config_reads_the_callback_variables() -> None:
    config = ControllerConfig.from_env(
        {
            "callback_listen": "[::1]:0",
            "callback_public_url": "http://connector:8000/callbacks/",
            "callback_timeout": "0",
            "max_pending_async": "10",
        }
    )
    assert config.callback_listen == "[::1]:0"
    assert config.callback_public_url == "http://connector:8000/callbacks"
    assert config.callback_timeout is None
    assert config.max_pending_async == 10
    with pytest.raises(ValueError, match="max_pending_async"):
        ControllerConfig.from_env({"max_pending_async": "0"})
    with pytest.raises(ValueError, match="callback_public_url"):
        ControllerConfig.from_env({"callback_public_url": "ftp://x"})


def test_listening_on_every_interface_needs_a_public_url() -> None:
    config = ControllerConfig(gateway_url="http://gw", callback_listen="0.0.0.0:8000")
    with pytest.raises(ValueError, match="callback_public_url"):
        AsyncController(config)
    public = ControllerConfig(
        gateway_url="http://gw", callback_listen=":8000", callback_public_url="http://me:8000"
    )
    assert AsyncController(public).callback_address is None


# -- the mounted ASGI app --------------------------------------------------------------------


async def test_the_asgi_app_answers_where_it_is_mounted() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url):
        controller = make(url, callback_listen=None, callback_public_url="http://me/hooks/cb")
        app = httpx.ASGITransport(app=controller.callback_app)
        async with controller, httpx.AsyncClient(transport=app, base_url="http://me") as client:
            (pending,) = await controller.invoke_async("t", b"x")
            await settled(gateway)
            kept_url = kept.requests[0].url
            assert str(kept_url).startswith(f"http://me/hooks/cb/{pending.call_id}/")
            headers = {"X-Function-Status": "200"}
            wrong = await client.post("/hooks/cb/abc/def", content=b"x", headers=headers)
            get = await client.get(kept_url.path)
            ok = await client.post(kept_url.path, content=b"from asgi", headers=headers)
            result = await pending.result()
    assert (wrong.status_code, get.status_code, ok.status_code) == (403, 405, 200)
    assert result.body == b"from asgi"


async def test_the_asgi_app_rejects_a_streamed_body_over_the_limit() -> None:
    async with kept_gateway(echo=None) as (gateway, kept, url):
        controller = make(
            url, callback_listen=None, callback_public_url="http://me", max_response_bytes=10
        )
        app = httpx.ASGITransport(app=controller.callback_app)
        async with controller, httpx.AsyncClient(transport=app, base_url="http://me") as client:
            (pending,) = await controller.invoke_async("t", b"x")
            await settled(gateway)

            request = client.build_request(
                "POST", kept.requests[0].url.path, headers={"X-Function-Status": "200"}
            )
            request.stream = Chunks()
            answer = await client.send(request)
            result = await pending.result()
    assert answer.status_code == 413
    assert isinstance(result.error, ResponseTooLargeError)


class Chunks(httpx.AsyncByteStream):
    """A streamed body of four chunks, without an async generator: httpx leaves its own
    unclosed when the answer comes before the body was sent (a warning on trio)."""

    def __init__(self) -> None:
        self.left = 4

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self.left:
            raise StopAsyncIteration
        self.left -= 1
        return b"12345"


@asynccontextmanager
async def serve_on(app: Any, listener: socket.socket, backend: str) -> AsyncIterator[None]:
    """Serve an ASGI app on a bound socket, lifespan included: uvicorn on asyncio, hypercorn
    on trio."""
    async with anyio.create_task_group() as tg:
        if backend == "asyncio":
            import uvicorn

            server = uvicorn.Server(
                uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, http="h11")
            )
            tg.start_soon(server.serve, [listener])
            while not server.started:
                await anyio.sleep(0.01)
            try:
                yield
            finally:
                server.should_exit = True
        else:
            from hypercorn.config import Config
            from hypercorn.trio import serve

            config = Config()
            config.bind = [f"fd://{listener.detach()}"]  # hypercorn closes it
            config.accesslog = config.errorlog = None
            stop = anyio.Event()
            await tg.start(functools.partial(serve, app, config, shutdown_trigger=stop.wait))
            try:
                yield
            finally:
                stop.set()


async def test_the_asgi_app_mounted_in_fastapi_on_a_real_socket(anyio_backend_name: str) -> None:
    from fastapi import FastAPI

    gateway = FakeGateway()  # the callbacks go over the network, to the ASGI server
    gateway.add_function("echo", topics="t")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    async with gateway.serve() as url:
        controller = make(
            url, callback_listen=None, callback_public_url=f"http://127.0.0.1:{port}/callbacks"
        )
        app = FastAPI()
        app.mount("/callbacks", controller.callback_app)
        with listener, anyio.fail_after(30):
            async with serve_on(app, listener, anyio_backend_name), controller:
                pending = [(await controller.invoke_async("t", f"m{n}"))[0] for n in range(5)]
                results = [await p.result() for p in pending]
                stats = controller.callback_stats()
    assert [r.body for r in results] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert all(r.ok for r in results)
    assert (stats.accepted, stats.pending) == (5, 0)


# -- the registry on its own -----------------------------------------------------------------


async def test_a_valid_token_for_a_forgotten_call_id_is_unknown_and_ended_ids_are_bounded() -> None:
    from aioconnector._callbacks import _REMEMBERED, CallbackRegistry, Reply
    from aioconnector._invoke import Invocation

    def status(admitted: PendingInvocation | Reply) -> int:
        assert isinstance(admitted, Reply)
        return admitted.status

    ended: list[InvocationResult] = []
    registry = CallbackRegistry(max_body=10, timeout=None, finish=ended.append)
    registry.base_url = "http://me"
    invocation = Invocation(topic="t", function="f", body=b"", headers=())
    forgotten = str(uuid.uuid4())
    assert status(registry.admit(f"/{forgotten}/{registry.token(forgotten)}")) == 404
    first = registry.register(invocation)
    registry.cancel(first, "test")
    path = registry.url_for(first.call_id).removeprefix("http://me")
    assert status(registry.admit(path)) == 410  # remembered: ended without a callback
    for _ in range(_REMEMBERED):
        registry.cancel(registry.register(invocation), "test")
    assert status(registry.admit(path)) == 404  # forgotten, the oldest first
    assert len(ended) == _REMEMBERED + 1
    stats = registry.stats()
    assert (stats.unknown, stats.late, stats.pending) == (2, 1, 0)


# -- the FakeGateway's queue-worker behaviours ---------------------------------------------


async def test_pro_retries_end_with_the_last_attempt() -> None:
    calls = 0

    def flaky(request: RecordedRequest) -> FakeResponse:
        nonlocal calls
        calls += 1
        return FakeResponse(status=502 if calls < 3 else 200, body=f"try {calls}")

    gateway = FakeGateway()
    gateway.add_function("flaky", topics="t", handler=flaky)
    gateway.add_function("down", topics="t", handler=FakeResponse(status=500))
    gateway.set_callbacks("flaky", attempts=5)
    gateway.set_callbacks("down", attempts=3)
    async with gateway.serve() as url, make(url) as controller:
        down, up = await controller.invoke_async("t", b"x")
        with anyio.fail_after(10):
            results = [await down.result(), await up.result()]
            await settled(gateway)
        stats = controller.callback_stats()
    assert [(r.status, r.attempts, r.ok) for r in results] == [(500, 3, False), (200, 3, True)]
    assert results[1].body == b"try 3"
    assert results[1].headers["x-retry"] == "3"
    assert (stats.attempts, stats.accepted, stats.duplicate) == (4, 2, 0)


async def test_lost_duplicate_and_late_callbacks() -> None:
    gateway = FakeGateway()
    for name in ("lost", "twice", "late"):
        gateway.add_function(name, topics=name)
    gateway.set_callbacks("lost", lose=True)
    gateway.set_callbacks("twice", duplicates=2)
    gateway.set_callbacks("late", delay=1.0)
    async with gateway.serve() as url, make(url) as controller:
        (lost,) = await controller.invoke_async("lost", b"x")
        (twice,) = await controller.invoke_async("twice", b"x")
        (late,) = await controller.invoke_async("late", b"x")
        late_result = await late.result(timeout=0)
        with anyio.fail_after(10):
            await settled(gateway)
        lost_result = await lost.result(timeout=0)
        twice_result = await twice.result()
        stats = controller.callback_stats()
    assert isinstance(lost_result.error, UpstreamTimeoutError)
    assert isinstance(late_result.error, UpstreamTimeoutError)
    assert twice_result.ok
    assert (stats.accepted, stats.duplicate, stats.late, stats.timed_out) == (1, 2, 1, 2)


def test_set_callbacks_checks_its_arguments() -> None:
    gateway = FakeGateway()
    with pytest.raises(ValueError, match="attempts"):
        gateway.set_callbacks("f", attempts=0)
    with pytest.raises(ValueError, match="duplicates"):
        gateway.set_callbacks("f", duplicates=-1)
    with pytest.raises(ValueError, match="delay"):
        gateway.set_callbacks("f", delay=-1)


async def test_a_callback_port_in_use_is_an_error_naming_the_setting() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with taken:
        async with kept_gateway(echo=None) as (_, _, url):
            controller = make(url, callback_listen=f"127.0.0.1:{port}")
            with pytest.raises(OSError, match=f"callback_listen='127.0.0.1:{port}'"):
                async with controller:
                    pass
