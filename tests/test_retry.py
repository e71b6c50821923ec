"""RetryPolicy decisions (pure) and retries through the controller."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioconnector import (
    AsyncController,
    ControllerConfig,
    InvocationResult,
    RetryPolicy,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from aioconnector._retry import parse_retry_after

from .helpers import Wire

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def result(
    status: int | None = None,
    error: Exception | None = None,
    headers: dict[str, str] | None = None,
) -> InvocationResult:
    if error is None and status is not None and not 200 <= status < 300:
        error = UpstreamStatusError(status)
    return InvocationResult(
        topic="t",
        function="f",
        status=status,
        headers=headers or {},
        error=error,  # type: ignore[arg-type]
    )


NO_JITTER = RetryPolicy(jitter=False)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_default_statuses_are_retried(status: int) -> None:
    assert NO_JITTER.delay_before_retry(result(status), attempt=1, elapsed=0) == 0.1


@pytest.mark.parametrize("status", [200, 400, 404, 500])
def test_other_statuses_are_kept(status: int) -> None:
    assert NO_JITTER.delay_before_retry(result(status), attempt=1, elapsed=0) is None


def test_backoff_grows_to_max_delay_and_stops_after_attempts() -> None:
    policy = RetryPolicy(attempts=6, initial_delay=1, multiplier=3, max_delay=5, jitter=False)
    delays = [policy.delay_before_retry(result(503), attempt=n, elapsed=0) for n in range(1, 7)]
    assert delays == [1, 3, 5, 5, 5, None]


def test_full_jitter_stays_between_zero_and_the_backoff() -> None:
    policy = RetryPolicy(initial_delay=2, attempts=2)
    rng = random.Random(7)
    delays = [
        policy.delay_before_retry(result(503), attempt=1, elapsed=0, rng=rng) for _ in range(200)
    ]
    assert all(d is not None and 0 <= d <= 2 for d in delays)
    assert len(set(delays)) > 100  # really random


def test_budget_stops_retries() -> None:
    policy = RetryPolicy(budget=1.0, jitter=False, initial_delay=0.5)
    assert policy.delay_before_retry(result(503), attempt=1, elapsed=0.4) == 0.5
    assert policy.delay_before_retry(result(503), attempt=1, elapsed=0.6) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("2", 2.0), ("0", 0.0), ("120", 5.0)],  # capped by max_delay=5
)
def test_retry_after_seconds_is_honoured_and_capped(header: str, expected: float) -> None:
    got = NO_JITTER.delay_before_retry(
        result(429, headers={"retry-after": header}), attempt=1, elapsed=0
    )
    assert got == expected


def test_retry_after_http_date_is_honoured() -> None:
    when = format_datetime(NOW + timedelta(seconds=3), usegmt=True)
    got = NO_JITTER.delay_before_retry(
        result(503, headers={"retry-after": when}), attempt=1, elapsed=0, now=NOW
    )
    assert got == pytest.approx(3.0)


def test_retry_after_beyond_the_budget_gives_up() -> None:
    policy = RetryPolicy(budget=2, max_delay=60, jitter=False)
    got = policy.delay_before_retry(
        result(429, headers={"retry-after": "10"}), attempt=1, elapsed=0
    )
    assert got is None


@pytest.mark.parametrize("value", ["", "soon", "-1", "1.5", "Wed, 99 Foo 2026"])
def test_unusable_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None or value == "-1"
    got = NO_JITTER.delay_before_retry(
        result(429, headers={"retry-after": value}), attempt=1, elapsed=0, now=NOW
    )
    assert got == 0.1  # the plain backoff


def test_past_http_date_means_now() -> None:
    when = format_datetime(NOW - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(when, now=NOW) == 0.0


@given(st.text(max_size=60))
def test_parse_retry_after_never_raises(value: str) -> None:
    got = parse_retry_after(value, now=NOW)
    assert got is None or got >= 0


def test_connection_errors_are_retried_only_when_nothing_was_sent() -> None:
    not_sent = result(error=UpstreamConnectionError("refused", request_sent=False))
    sent = result(error=UpstreamConnectionError("dropped", request_sent=True))
    timeout = result(error=UpstreamTimeoutError("slow"))
    assert NO_JITTER.delay_before_retry(not_sent, attempt=1, elapsed=0) == 0.1
    assert NO_JITTER.delay_before_retry(sent, attempt=1, elapsed=0) is None
    assert NO_JITTER.delay_before_retry(timeout, attempt=1, elapsed=0) is None
    brave = RetryPolicy(retry_on_timeout=True, jitter=False)
    assert brave.delay_before_retry(sent, attempt=1, elapsed=0) == 0.1
    assert brave.delay_before_retry(timeout, attempt=1, elapsed=0) == 0.1
    careful = RetryPolicy(retry_connection_errors=False)
    assert careful.delay_before_retry(not_sent, attempt=1, elapsed=0) is None


def test_disabled_policy_never_retries() -> None:
    assert RetryPolicy.disabled().delay_before_retry(result(503), attempt=1, elapsed=0) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempts": 0}, "attempts must be an int >= 1"),
        ({"attempts": True}, "attempts"),
        ({"initial_delay": -1}, "initial_delay must be a number >= 0"),
        ({"multiplier": 0.5}, "multiplier must be a number >= 1"),
        ({"budget": 0}, "budget must be a number > 0"),
        ({"statuses": [200, 99]}, "statuses must be HTTP status codes"),
        ({"statuses": "429"}, "statuses must be a collection"),
        ({"jitter": 1}, "jitter must be a bool"),
    ],
)
def test_bad_policy_values_name_the_field(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# -- through the controller ------------------------------------------------------------------


async def test_429_with_retry_after_then_success(wire: Wire) -> None:
    wire.gateway.add_function("busy", topics="t")
    wire.gateway.set_fault("busy", status=429, headers={"Retry-After": "0"}, times=2)
    async with wire.controller() as controller:
        (got,) = await controller.invoke("t", b"x")
        assert controller.stats().retries == 2
    assert got.ok
    assert got.attempts == 3
    assert len(wire.gateway.invocations()) == 3


async def test_scaling_from_zero_503_then_200(wire: Wire) -> None:
    wire.gateway.add_function("cold", topics="t")
    wire.gateway.set_fault("cold", status=503, times=1)
    async with wire.controller(retry=RetryPolicy(initial_delay=0.05)) as controller:
        (got,) = await controller.invoke("t", b"x")
    assert got.ok
    assert got.attempts == 2


async def test_giving_up_returns_the_last_answer(wire: Wire) -> None:
    wire.gateway.add_function("down", topics="t")
    wire.gateway.set_fault("down", status=502)
    async with wire.controller(retry=RetryPolicy(attempts=3, initial_delay=0.01)) as controller:
        (got,) = await controller.invoke("t", b"x")
        stats = controller.stats()
    assert got.status == 502
    assert got.attempts == 3
    assert stats.retries == 2
    assert stats.invocations_failed == 1


async def test_dropped_connection_is_not_retried_by_default(wire: Wire) -> None:
    wire.gateway.add_function("flaky", topics="t")
    wire.gateway.set_fault("flaky", drop_connection=True, times=1)
    async with wire.controller() as controller:
        (first,) = await controller.invoke("t", b"x")
    assert isinstance(first.error, UpstreamConnectionError)
    assert first.attempts == 1
    assert len(wire.gateway.invocations()) == 1


async def test_dropped_connection_is_retried_when_asked(wire: Wire) -> None:
    wire.gateway.add_function("flaky", topics="t")
    wire.gateway.set_fault("flaky", drop_connection=True, times=1)
    policy = RetryPolicy(retry_on_timeout=True, initial_delay=0.01)
    async with wire.controller(retry=policy) as controller:
        (got,) = await controller.invoke("t", b"x")
    assert got.ok
    assert got.attempts == 2


async def test_a_retrying_invocation_frees_its_slot_while_waiting(wire: Wire) -> None:
    wire.gateway.add_function("busy", topics="busy")
    wire.gateway.add_function("quick", topics="quick")
    # Told to come back in 5 s (the longest wait the default policy allows): quick must have
    # the only slot in the meantime, so it is answered before busy's second attempt.
    wire.gateway.set_fault("busy", status=429, headers={"Retry-After": "5"}, times=1)
    with anyio.fail_after(10):
        async with (
            wire.controller(max_concurrency=1) as controller,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(controller.invoke, "busy", b"x")
            while controller.stats().retries == 0:  # busy got its 429 and waits, slot given back
                await anyio.sleep(0.01)
            (quick,) = await controller.invoke("quick", b"y")
            assert quick.ok
            assert len(wire.gateway.invocations("busy")) == 1  # its retry is still to come
            tg.cancel_scope.cancel()  # no need to wait for it


async def test_connect_errors_are_retried() -> None:
    calls = {"function": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/system/namespaces":
            return httpx.Response(200, json=[])
        if request.url.path == "/system/functions":
            return httpx.Response(200, json=[{"name": "f", "annotations": {"topic": "t"}}])
        calls["function"] += 1
        if calls["function"] == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text="ok")

    config = ControllerConfig(gateway_url="http://gw.test", retry=RetryPolicy(initial_delay=0))
    async with AsyncController(config, transport=httpx.MockTransport(handler)) as controller:
        (got,) = await controller.invoke("t", b"x")
    assert got.ok
    assert got.attempts == 2
    assert calls["function"] == 2


async def test_shutdown_cuts_a_retry_wait_short_and_keeps_the_last_answer(wire: Wire) -> None:
    wire.gateway.add_function("busy", topics="t")
    wire.gateway.set_fault("busy", status=503, headers={"Retry-After": "30"})
    policy = RetryPolicy(max_delay=30, budget=60)
    with anyio.fail_after(5):
        async with wire.controller(retry=policy, drain_timeout=0.2) as controller:
            stream = controller.results()
            await controller.submit("t", b"x")
    async with stream:
        (got,) = [r async for r in stream]
    assert got.status == 503
    assert got.attempts == 1
