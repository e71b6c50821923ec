"""Functions that hang, drop the connection, throttle (429) or scale from zero (503)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from aioconnector import (
    AsyncController,
    InvocationResult,
    RetryPolicy,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from aioconnector.testing import FakeGateway, FakeResponse, RecordedRequest

Connect = Callable[..., AsyncController]


async def invoke_all(
    controller: AsyncController, topic: str, count: int
) -> dict[int, Sequence[InvocationResult]]:
    """Invoke ``count`` messages (bodies "0", "1", ...) concurrently; results by message."""
    results: dict[int, Sequence[InvocationResult]] = {}

    async def one(i: int) -> None:
        results[i] = await controller.invoke(topic, str(i), context=i)

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    assert sorted(results) == list(range(count))
    return results


async def test_slow_functions_time_out_without_holding_back_the_others(connect: Connect) -> None:
    # The deadline is generous (an answer here takes milliseconds), so that the order below
    # holds on a loaded machine too: every fast result is out before any stuck one times out.
    # The stuck function ("asleep") comes first in address order, the order a fan-out starts
    # them in.
    timeout = 2.0
    gw = FakeGateway()
    gw.add_function("fast", topics="t")
    gw.add_function("asleep", topics="t")
    gw.set_fault("asleep", latency=60)
    with anyio.fail_after(30):  # bounded by upstream_timeout, not by the function's 60 s
        async with (
            gw.serve() as url,
            connect(url, upstream_timeout=timeout) as controller,
            controller.results() as stream,
        ):
            by_message = await invoke_all(controller, "t", 10)
            stats = controller.stats()
            published = [await anext(stream) for _ in range(20)]
    fast_then_stuck = ["fast.openfaas-fn"] * 10 + ["asleep.openfaas-fn"] * 10
    assert [r.function for r in published] == fast_then_stuck  # none waited for a stuck one
    for i, (stuck, fast) in by_message.items():  # in address order
        assert (fast.function, fast.ok, fast.body) == ("fast.openfaas-fn", True, str(i).encode())
        assert stuck.function == "asleep.openfaas-fn"
        assert isinstance(stuck.error, UpstreamTimeoutError)
        assert isinstance(stuck.error, TimeoutError)
        assert "asleep.openfaas-fn" in str(stuck.error)
        assert "2.0s" in str(stuck.error)
        assert stuck.status is None
        assert stuck.attempts == 1  # may have reached the function: not retried by default
        assert stuck.duration >= 0.9 * timeout
    assert len(gw.invocations("asleep")) == 10
    assert (stats.invocations_succeeded, stats.invocations_failed, stats.retries) == (10, 10, 0)
    assert stats.in_flight == 0


async def test_dropped_connections_are_results_and_not_retried(connect: Connect) -> None:
    gw = FakeGateway()
    gw.add_function("flaky", topics="t")
    gw.set_fault("flaky", drop_connection=True)
    with anyio.fail_after(30):
        async with gw.serve() as url, connect(url) as controller:
            by_message = await invoke_all(controller, "t", 12)
            for (result,) in by_message.values():
                assert isinstance(result.error, UpstreamConnectionError)
                assert result.error.request_sent  # it may have reached the function
                assert result.attempts == 1
                assert result.status is None
                assert "flaky.openfaas-fn" in str(result.error)
            assert len(gw.invocations("flaky")) == 12  # one request each, no retry
            assert controller.stats().retries == 0
            # The connection pool recovers from the broken connections.
            gw.clear_fault("flaky")
            again = await invoke_all(controller, "t", 12)
            assert all(result.ok for (result,) in again.values())


async def test_retry_after_is_honoured(connect: Connect) -> None:
    gw = FakeGateway()
    gw.add_function("busy", topics="t")
    gw.set_fault("busy", status=429, headers={"Retry-After": "1"}, times=1)
    with anyio.fail_after(30):
        async with gw.serve() as url, connect(url) as controller:
            (result,) = await controller.invoke("t", b"x")
            assert controller.stats().retries == 1
    assert result.ok
    assert result.attempts == 2
    first, second = gw.invocations("busy")
    assert second.time - first.time >= 0.9  # waited as told, not the 0.1 s backoff


async def test_429_burst_each_invocation_retried_once(connect: Connect) -> None:
    throttled: set[bytes] = set()

    def throttle_first_try(request: RecordedRequest) -> FakeResponse:
        if request.body not in throttled:
            throttled.add(request.body)
            return FakeResponse(status=429, body="Too Many Requests", headers={"Retry-After": "0"})
        return FakeResponse(body=request.body)

    gw = FakeGateway()
    gw.add_function("limited", topics="t", handler=throttle_first_try)
    with anyio.fail_after(30):
        async with gw.serve() as url, connect(url, max_concurrency=8) as controller:
            by_message = await invoke_all(controller, "t", 40)
            stats = controller.stats()
    for i, (result,) in by_message.items():
        assert result.ok, result.error
        assert result.body == str(i).encode()
        assert result.attempts == 2
    assert len(gw.invocations("limited")) == 80
    assert stats.retries == 40
    assert (stats.invocations_succeeded, stats.invocations_failed) == (40, 0)
    assert gw.peak_in_flight <= 8


async def test_scaling_from_zero_503_then_ok(connect: Connect) -> None:
    cold_answers = 6
    calls = 0

    def scale_from_zero(request: RecordedRequest) -> FakeResponse:
        nonlocal calls
        calls += 1
        if calls <= cold_answers:
            return FakeResponse(status=503, body="No endpoints available for: cold.")
        return FakeResponse(body=request.body)

    gw = FakeGateway()
    gw.add_function("cold", topics="t", handler=scale_from_zero)
    policy = RetryPolicy(attempts=cold_answers + 2, initial_delay=0.01, max_delay=0.05)
    with anyio.fail_after(30):
        async with gw.serve() as url, connect(url, retry=policy) as controller:
            by_message = await invoke_all(controller, "t", 12)
            stats = controller.stats()
    results = [result for (result,) in by_message.values()]
    assert all(r.ok for r in results), [r.error for r in results]
    assert sum(r.attempts for r in results) == len(gw.invocations("cold")) == 12 + cold_answers
    assert stats.retries == cold_answers
    assert max(r.attempts for r in results) >= 2


async def test_gateway_that_stops_reading_an_upload_leaves_nothing_unclosed(
    connect: Connect,
) -> None:
    """A gateway that takes the request line, then never reads the body: the upload stalls
    in the socket buffers until upstream_timeout (or the caller) gives up. No resource may be
    left for the garbage collector; under ``filterwarnings=error`` a ResourceWarning fails."""
    listing = json.dumps([{"name": "f", "annotations": {"topic": "t"}}]).encode()
    posts = 0

    async def stalling_gateway(stream: anyio.abc.SocketStream) -> None:
        nonlocal posts
        async with stream:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except anyio.EndOfStream:  # the client closed an idle keep-alive connection
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].split(b" ")
                if method != b"GET":
                    posts += 1
                    await anyio.sleep_forever()  # never reads the body
                body = b"[]" if target == b"/system/namespaces" else listing
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                await stream.send(body)

    upload = b"x" * (32 << 20)  # far more than loopback socket buffers hold
    with anyio.fail_after(30):
        async with (
            await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
            anyio.create_task_group() as tg,
        ):
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(listener.serve, stalling_gateway)
            async with connect(f"http://127.0.0.1:{port}", upstream_timeout=0.5) as controller:
                (timed_out,) = await controller.invoke("t", upload)
                # The caller gives up as soon as the upload stalls: well before the deadline,
                # so that it is the caller's cancel, not upstream_timeout, that ends it.
                returned: list[Sequence[InvocationResult]] = []

                async def given_up() -> None:
                    returned.append(await controller.invoke("t", upload))

                async with anyio.create_task_group() as caller:
                    caller.start_soon(given_up)
                    while posts < 2:
                        await anyio.sleep(0.01)
                    caller.cancel_scope.cancel()
                assert returned == []  # cancelled, not timed out
                assert controller.stats().in_flight == 0
            gc.collect()  # what the requests left behind is finalised now, inside the test
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert isinstance(timed_out.error, UpstreamTimeoutError)
    assert timed_out.attempts == 1
    assert posts == 2
