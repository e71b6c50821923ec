"""FakeGateway's per-function capacity: max_inflight's 429s, the latency model, outages, counters.

Requests are held in flight by a handler that blocks until released, never by timing; the
latency model is observed through an injected ``sleep``. Every test runs on both front ends.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest

from aioconnector.testing import FakeGateway, FakeResponse, FunctionStats, Latency, RecordedRequest

from .test_fake_gateway import FRONTS, connect


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end a test talks to: in-process transport or loopback socket."""
    return request.param  # type: ignore[no-any-return]


class Hold:
    """A handler that holds every request until :meth:`release`, echoing its body then."""

    def __init__(self) -> None:
        self.entered = 0
        self._released = anyio.Event()
        self._waiters: list[tuple[int, anyio.Event]] = []

    async def __call__(self, request: RecordedRequest) -> FakeResponse:
        self.entered += 1
        for wanted, event in self._waiters:
            if self.entered >= wanted:
                event.set()
        await self._released.wait()
        return FakeResponse(body=request.body)

    async def wait_for(self, count: int) -> None:
        """Until ``count`` requests in all have reached the handler."""
        if self.entered < count:
            event = anyio.Event()
            self._waiters.append((count, event))
            await event.wait()

    def release(self) -> None:
        self._released.set()


async def test_max_inflight_answers_429_while_full(front: str) -> None:
    gw = FakeGateway()
    hold = Hold()
    gw.add_function("slow", handler=hold, max_inflight=2, retry_after=3)
    answers: list[httpx.Response] = []
    with anyio.fail_after(10):
        async with connect(gw, front) as client:

            async def call(body: bytes) -> None:
                answers.append(await client.post("/function/slow", content=body))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, b"a")
                tg.start_soon(call, b"b")
                await hold.wait_for(2)
                full = await client.post("/function/slow", content=b"c")
                assert gw.function_stats("slow").inflight == 2
                hold.release()
            after = await client.post("/function/slow", content=b"d")
    assert full.status_code == 429
    assert full.text == "Concurrent request limit exceeded. Max concurrent requests: 2\n"
    assert full.headers["Retry-After"] == "3"
    assert "X-Call-Id" in full.headers  # the gateway's headers on the watchdog's answer
    assert sorted(r.text for r in answers) == ["a", "b"]
    assert all(r.status_code == 200 and "Retry-After" not in r.headers for r in answers)
    assert (after.status_code, after.text) == (200, "d")
    assert hold.entered == 3  # the 429 never reached the handler
    assert gw.function_stats("slow") == FunctionStats(
        requests=4, throttled=1, inflight=0, peak_inflight=2, statuses={200: 3, 429: 1}, dropped=0
    )


async def test_capacity_can_change_while_requests_are_in_flight(front: str) -> None:
    gw = FakeGateway()
    hold = Hold()
    gw.add_function("slow", handler=hold, max_inflight=1)
    with anyio.fail_after(10):
        async with connect(gw, front) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.post, "/function/slow")
            await hold.wait_for(1)
            refused = await client.post("/function/slow")
            gw.set_capacity("slow", max_inflight=2)
            tg.start_soon(client.post, "/function/slow")
            await hold.wait_for(2)  # admitted under the new limit
            refused_again = await client.post("/function/slow")
            gw.set_capacity("slow")  # no limit at all
            tg.start_soon(client.post, "/function/slow")
            await hold.wait_for(3)
            hold.release()
    assert refused.status_code == refused_again.status_code == 429
    assert "Retry-After" not in refused.headers  # only when retry_after is set
    assert refused_again.text.endswith("Max concurrent requests: 2\n")
    stats = gw.function_stats("slow")
    assert (stats.requests, stats.throttled, stats.peak_inflight) == (5, 2, 3)
    assert stats.statuses == {429: 2, 200: 3}


async def test_latency_grows_with_the_requests_in_flight(front: str) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await anyio.lowlevel.checkpoint()

    gw = FakeGateway(sleep=sleep)
    hold = Hold()
    gw.add_function("slow", handler=hold, latency=Latency(base=0.01, per_inflight=0.002))
    gw.add_function("alone", latency=Latency(per_inflight=1.0))
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(client.post, "/function/slow")
                    await hold.wait_for(i + 1)
                hold.release()
            await client.post("/function/slow")  # all done: alone again
            await client.post("/function/alone")  # per_inflight alone, nothing in flight
    assert len(slept) == 5
    assert slept[:4] == sorted(slept[:4])  # each arrived with one more in flight
    expected = [0.01, 0.012, 0.014, 0.016, 0.01]
    assert all(math.isclose(a, b) for a, b in zip(slept, expected, strict=True)), slept
    assert gw.function_stats("slow").peak_inflight == 4


async def test_latency_really_sleeps_and_is_cancellable(front: str) -> None:
    gw = FakeGateway()
    gw.add_function("slow", latency=Latency(base=0.05))
    gw.add_function("stuck", latency=Latency(base=60))
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            response = await client.post("/function/slow", content=b"x")
            assert response.text == "x"
            assert float(response.headers["X-Duration-Seconds"]) >= 0.04  # the sleep counted
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/function/stuck", timeout=0.3)
        assert gw.function_stats("stuck").inflight == 0  # its sleep was cancelled


async def test_fault_latency_uses_the_injected_sleep(front: str) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    gw = FakeGateway(sleep=sleep)
    gw.add_function("echo")
    gw.set_fault("echo", latency=30, times=1)
    gw.system_fault(latency=20, times=1)
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            assert (await client.post("/function/echo", content=b"x")).text == "x"
            assert (await client.get("/system/functions")).status_code == 200
    assert slept == [30, 20]


async def test_async_work_respects_the_capacity(front: str) -> None:
    gw = FakeGateway()
    hold = Hold()
    gw.add_function("slow", handler=hold, max_inflight=1)
    with anyio.fail_after(10):
        async with connect(gw, front) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.post, "/function/slow")
            await hold.wait_for(1)
            accepted = await client.post("/async-function/slow")
            await gw.wait_idle()  # its run was turned away at once
            hold.release()
    assert accepted.status_code == 202  # the gateway queues; the function refuses
    assert gw.function_stats("slow").statuses == {429: 1, 200: 1}
    assert hold.entered == 1


async def test_outage_and_recovery(front: str) -> None:
    gw = FakeGateway()
    gw.add_function("fn")
    gw.add_function("other", namespace="dev")
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            gw.set_down("fn")
            down = await client.post("/function/fn", content=b"lost")
            gw.set_down("other", namespace="dev", status=503)
            no_endpoints = await client.post("/function/other.dev")
            gw.set_down("fn", status=502)
            bad_gateway = await client.post("/function/fn")
            gw.set_down("fn", status=None)
            with pytest.raises(httpx.TransportError):
                await client.post("/function/fn")
            gw.set_up("fn")
            gw.set_up("other", namespace="dev")
            up = await client.post("/function/fn", content=b"back")
            up_other = await client.post("/function/other.dev", content=b"back")
    assert (down.status_code, down.text) == (500, "Can't reach service for: fn.")
    assert "X-Call-Id" in down.headers
    assert (no_endpoints.status_code, no_endpoints.text) == (
        503,
        "No endpoints available for: other.dev.",
    )
    assert (bad_gateway.status_code, bad_gateway.text) == (502, "Bad Gateway")
    assert (up.text, up_other.text) == ("back", "back")
    assert gw.function_stats("fn") == FunctionStats(
        requests=4,
        throttled=0,
        inflight=0,
        peak_inflight=1,  # only the request answered normally was admitted
        statuses={500: 1, 502: 1, 200: 1},
        dropped=1,
    )


async def test_outage_with_a_time_window(front: str) -> None:
    gw = FakeGateway()
    gw.add_function("fn")
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            gw.set_down("fn", duration=60)
            during = await client.post("/function/fn")
            gw.set_down("fn", duration=0.05)
            await anyio.sleep(0.1)  # at least that long: the window is over
            after = await client.post("/function/fn", content=b"up")
            gw.set_fault("fn", status=429, times=5, duration=0.05)
            await anyio.sleep(0.1)
            fault_over = await client.post("/function/fn", content=b"again")
    assert during.status_code == 500
    assert (after.status_code, after.text) == (200, "up")
    assert (fault_over.status_code, fault_over.text) == (200, "again")


async def test_stats_outlive_a_redeploy_and_reset(front: str) -> None:
    gw = FakeGateway()
    gw.add_function("fn")
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            await client.post("/function/fn")
            gw.add_function("fn", max_inflight=3)  # redeployed: counted by address still
            await client.post("/function/fn")
            await client.post("/function/ghost")  # unknown: counted under its address
            assert gw.function_stats("fn").requests == 2
            gw.remove_function("fn")
            assert gw.function_stats("fn").statuses == {200: 2}
            assert gw.function_stats("ghost") == FunctionStats(
                requests=1, throttled=0, inflight=0, peak_inflight=0, statuses={404: 1}, dropped=0
            )
            gw.reset_stats()
            assert gw.function_stats("fn") == FunctionStats(
                requests=0, throttled=0, inflight=0, peak_inflight=0, statuses={}, dropped=0
            )
    assert gw.function_stats("ghost").requests == 0
    gw.add_function("fresh")
    assert gw.function_stats("fresh").requests == 0
    with pytest.raises(KeyError, match="nope"):
        gw.function_stats("nope")


async def test_any_annotations_are_listed(front: str) -> None:
    annotations = {
        "com.openfaas.retry.attempts": "5",
        "com.openfaas.retry.codes": "429,503",
        "com.openfaas.retry.min_wait": "100ms",
        "com.aioconnector.max_concurrency": "4",
        "com.aioconnector.idempotent": "not-a-bool",  # invalid values are listed as given
    }
    gw = FakeGateway()
    gw.add_function("fn", topics=["orders"], annotations=annotations)
    with anyio.fail_after(10):
        async with connect(gw, front) as client:
            listed = (await client.get("/system/functions")).json()
            gw.add_function("fn", topics="orders", annotations={"com.openfaas.retry.attempts": "1"})
            relisted = (await client.get("/system/functions")).json()
    assert listed[0]["annotations"] == {**annotations, "topic": "orders"}
    assert relisted[0]["annotations"] == {"com.openfaas.retry.attempts": "1", "topic": "orders"}


def test_capacity_arguments_are_validated() -> None:
    gw = FakeGateway()
    gw.add_function("fn")
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"max_inflight": 0}, ValueError, "max_inflight"),
        ({"max_inflight": -1}, ValueError, "max_inflight"),
        ({"max_inflight": True}, TypeError, "max_inflight"),
        ({"max_inflight": 1.5}, TypeError, "max_inflight"),
        ({"max_inflight": 2, "retry_after": -1}, ValueError, "retry_after"),
        ({"max_inflight": 2, "retry_after": 0.5}, TypeError, "retry_after"),
        ({"retry_after": 1}, ValueError, "retry_after"),
        ({"latency": 0.1}, TypeError, "latency"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            gw.add_function("new", **kwargs)
        with pytest.raises(error, match=message):
            gw.set_capacity("fn", **kwargs)
    with pytest.raises(KeyError, match="new"):
        gw.set_capacity("new", max_inflight=1)
    for kwargs in ({"base": -1}, {"per_inflight": float("nan")}, {"base": float("inf")}):
        with pytest.raises(ValueError, match="seconds"):
            Latency(**kwargs)
    with pytest.raises(TypeError, match="seconds"):
        Latency(base="1")  # type: ignore[arg-type]
    for duration in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="duration"):
            gw.set_down("fn", duration=duration)
    with pytest.raises(TypeError, match="sleep"):
        FakeGateway(sleep=42)  # type: ignore[arg-type]
    assert Latency(base=1, per_inflight=0.5).delay(2) == 2.0
