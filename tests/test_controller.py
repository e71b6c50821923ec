"""AsyncController against a FakeGateway, in-process and over a real loopback socket."""

from __future__ import annotations

import anyio
import pytest

from aioconnector import (
    BasicAuth,
    InvocationResult,
    ResponseTooLargeError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aioconnector._message import MAX_TOPIC_LENGTH
from aioconnector.testing import FakeResponse, RecordedRequest

from .helpers import Wire


async def test_invoke_reaches_every_subscribed_function(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="orders,payments")
    wire.gateway.add_function(
        "audit", topics=["orders"], handler=FakeResponse(status=201, body=b"seen")
    )
    wire.gateway.add_function("other", topics="shipping")
    async with wire.controller() as controller:
        assert controller.topics() == {"orders", "payments", "shipping"}
        assert controller.functions_for("orders") == ("audit.openfaas-fn", "echo.openfaas-fn")
        results = await controller.invoke("orders", b'{"id": 1}')

    by_function = {r.function: r for r in results}
    assert set(by_function) == {"audit.openfaas-fn", "echo.openfaas-fn"}
    assert by_function["echo.openfaas-fn"].body == b'{"id": 1}'
    assert by_function["audit.openfaas-fn"].status == 201
    assert by_function["audit.openfaas-fn"].body == b"seen"
    for result in results:
        assert result.ok
        assert result.error is None
        assert result.topic == "orders"
        assert result.call_id is not None
        assert result.call_id == result.headers["x-call-id"]
        assert result.duration >= 0
    paths = sorted(r.path for r in wire.gateway.invocations())
    assert paths == ["/function/audit.openfaas-fn", "/function/echo.openfaas-fn"]


async def test_unmatched_topic_returns_no_results_and_is_counted(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="orders")
    async with wire.controller() as controller:
        assert await controller.invoke("nobody-listens", b"x") == ()
        assert await controller.submit("nobody-listens", b"x") == 0
        stats = controller.stats()
    assert stats.messages == 2
    assert stats.unmatched_messages == 2
    assert stats.invocations_started == 0
    assert wire.gateway.invocations() == []


async def test_fan_out_is_concurrent(wire: Wire) -> None:
    # Each function answers only once all four are in: one after another, they never would.
    arrived = 0
    all_in = anyio.Event()

    async def gather(request: RecordedRequest) -> FakeResponse:
        nonlocal arrived
        arrived += 1
        if arrived == 4:
            all_in.set()
        await all_in.wait()
        return FakeResponse(body=request.body)

    for name in ("a", "b", "c", "d"):
        wire.gateway.add_function(name, topics="t", handler=gather)
    async with wire.controller() as controller:
        with anyio.fail_after(10):
            results = await controller.invoke("t", b"x")
    assert [r.ok for r in results] == [True] * 4
    assert wire.gateway.peak_in_flight == 4


async def test_max_concurrency_bounds_in_flight_invocations(wire: Wire) -> None:
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.add_function("slow2", topics="t")
    wire.gateway.set_fault("slow", latency=0.02)  # held long enough for three to overlap
    wire.gateway.set_fault("slow2", latency=0.02)
    results: list[InvocationResult] = []
    async with wire.controller(max_concurrency=3) as controller:

        async def one() -> None:
            results.extend(await controller.invoke("t", b"x"))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            for _ in range(10):
                await controller.submit("t", b"y")
        assert controller.stats().in_flight <= 3
    assert len(results) == 20
    assert len(wire.gateway.invocations()) == 40
    assert wire.gateway.peak_in_flight == 3


async def test_submitted_messages_share_a_few_worker_tasks(wire: Wire) -> None:
    """No task per submitted message: 60 messages with max_concurrency=4 run on at most four
    workers, started as needed, and every result arrives."""
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.set_fault("slow", latency=0.01)
    async with wire.controller(max_concurrency=4) as controller:
        session = controller._session
        assert session is not None
        started: set[int] = set()
        async with controller.results() as stream:
            for index in range(60):
                await controller.submit("t", b"%d" % index)
                started.add(session.workers.workers)
            with anyio.fail_after(10):
                bodies = {(await stream.receive()).body for _ in range(60)}
        assert max(started) == 4
    assert len(bodies) == 60
    assert len(wire.gateway.invocations("slow")) == 60


async def test_headers_defaults_and_caller_replacement(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller(
        content_type="application/json",
        credentials=BasicAuth("admin", "s3cret"),
    ) as controller:
        # The FakeGateway has no auth configured, but the controller must still not leak it.
        await controller.invoke("t", b"{}", headers={"X-Message-Id": "42"})
        await controller.invoke("t", b"{}", headers={"x-connector": "mine", "USER-AGENT": "ua/1"})
    first, second = wire.gateway.invocations()
    assert first.headers["x-topic"] == "t"
    assert first.headers["x-connector"] == "aioconnector"
    assert first.headers["user-agent"].startswith("aioconnector/")
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-message-id"] == "42"
    assert "authorization" not in first.headers
    assert "x-callback-url" not in first.headers
    assert second.headers.get_list("x-connector") == ["mine"]
    assert second.headers.get_list("user-agent") == ["ua/1"]
    system = [r for r in wire.gateway.requests if r.path.startswith("/system/")]
    assert system
    assert all(r.headers["authorization"].startswith("Basic ") for r in system)


async def test_async_invocation_uses_async_route_and_callback(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller(
        async_invocation=True, callback_url="http://127.0.0.1:9/callback"
    ) as controller:
        (result,) = await controller.invoke("t", b"x")
    assert result.status == 202
    assert result.ok
    (request,) = wire.gateway.invocations()
    assert request.path == "/async-function/echo.openfaas-fn"
    assert request.headers["x-callback-url"] == "http://127.0.0.1:9/callback"


@pytest.mark.parametrize(
    ("status", "headers"),
    [(500, {}), (429, {"Retry-After": "0"}), (404, {})],
)
async def test_non_2xx_is_a_result_not_an_exception(
    wire: Wire, status: int, headers: dict[str, str]
) -> None:
    wire.gateway.add_function(
        "bad", topics="t", handler=FakeResponse(status=status, body=b"nope", headers=headers)
    )
    async with wire.controller() as controller:
        (result,) = await controller.invoke("t", b"x")
        assert controller.stats().invocations_failed == 1
    assert not result.ok
    assert result.status == status
    assert result.body == b"nope"
    assert isinstance(result.error, UpstreamStatusError)
    assert result.error.status == status


async def test_upstream_timeout_is_a_result(wire: Wire) -> None:
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.set_fault("slow", latency=5)
    async with wire.controller(upstream_timeout=0.1) as controller:
        with anyio.fail_after(3):
            (result,) = await controller.invoke("t", b"x")
    assert isinstance(result.error, UpstreamTimeoutError)
    assert isinstance(result.error, TimeoutError)
    assert result.status is None
    assert "0.1" in str(result.error)


async def test_dropped_connection_is_a_result(wire: Wire) -> None:
    wire.gateway.add_function("flaky", topics="t")
    wire.gateway.set_fault("flaky", drop_connection=True, times=1)
    async with wire.controller() as controller:
        (first,) = await controller.invoke("t", b"x")
        (second,) = await controller.invoke("t", b"x")
    assert isinstance(first.error, UpstreamConnectionError)
    assert first.status is None
    assert second.ok


async def test_response_larger_than_cap_is_a_result(wire: Wire) -> None:
    wire.gateway.add_function("big", topics="t", handler=FakeResponse(body=b"x" * 5000))
    async with wire.controller(max_response_bytes=1000) as controller:
        (result,) = await controller.invoke("t", b"x")
    assert isinstance(result.error, ResponseTooLargeError)
    assert result.body == b""
    assert not result.ok


async def test_bodies_of_every_accepted_type(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller() as controller:
        for body in (b"", b"raw", bytearray(b"arr"), memoryview(b"view"), "h\u00e9"):
            await controller.invoke("t", body)
    assert [r.body for r in wire.gateway.invocations()] == [
        b"",
        b"raw",
        b"arr",
        b"view",
        "h\u00e9".encode(),
    ]


async def test_context_is_echoed_in_results(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    marker = object()
    async with wire.controller() as controller:
        (result,) = await controller.invoke("t", b"x", context=marker)
    assert result.context is marker


async def test_handler_sees_message_and_answers(wire: Wire) -> None:
    seen: list[RecordedRequest] = []

    async def handler(request: RecordedRequest) -> FakeResponse:
        seen.append(request)
        return FakeResponse(body=request.body.upper())

    wire.gateway.add_function("upper", topics="t", handler=handler)
    async with wire.controller() as controller:
        (result,) = await controller.invoke("t", "abc")
    assert result.body == b"ABC"
    assert seen[0].function == "upper.openfaas-fn"


async def test_only_routed_topics_keep_their_merged_headers(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="orders")
    async with wire.controller() as controller:
        # Topics from the message source that match nothing must not pile up in memory.
        for index in range(300):
            assert await controller.invoke(f"nobody-{index}-" + "x" * 900, b"") == ()
            assert await controller.submit(f"nobody-else-{index}", b"") == 0
        cache = controller._dispatch._topic_headers
        assert len(cache) == 0
        (result,) = await controller.invoke("orders", b"x")
        assert result.ok
        assert list(cache) == ["orders"]
        assert controller.stats().unmatched_messages == 600


async def test_topic_longer_than_the_limit_is_refused_before_acceptance(wire: Wire) -> None:
    longest = "t" * MAX_TOPIC_LENGTH
    wire.gateway.add_function("echo", topics=[longest])
    async with wire.controller() as controller:
        assert controller.topics() == {longest}
        (result,) = await controller.invoke(longest, b"x")
        assert result.ok
        for call in (controller.invoke, controller.submit):
            with pytest.raises(ValueError, match=f"over the limit of {MAX_TOPIC_LENGTH}"):
                await call(longest + "t", b"x")
        stats = controller.stats()
    assert (stats.messages, stats.invocations_started) == (1, 1)
    assert len(wire.gateway.invocations()) == 1
