"""A misbehaving ``/system/*`` API: the last topic map is kept and messages keep flowing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aioconnector import AsyncController, AuthenticationError, DiscoveryError
from aioconnector.testing import FakeGateway, SystemEndpoint

Connect = Callable[..., AsyncController]
BOTH = ("a.openfaas-fn", "b.openfaas-fn")
LOOKUP_TIMEOUT = 1.0

FAULTS = [
    pytest.param("functions", {"status": 500}, DiscoveryError, "HTTP 500", id="500"),
    pytest.param("namespaces", {"status": 500}, DiscoveryError, "HTTP 500", id="500-ns"),
    pytest.param("functions", {"status": 401}, AuthenticationError, "HTTP 401", id="401"),
    pytest.param("functions", {"malformed_json": True}, DiscoveryError, "not JSON", id="garbage"),
    pytest.param("functions", {"truncated": True}, DiscoveryError, "not JSON", id="truncated"),
    pytest.param(
        "namespaces",
        {"status": 200, "body": '{"namespaces": ["openfaas-fn"]}'},
        DiscoveryError,
        "expected a JSON array",
        id="object-not-array",
    ),
    pytest.param("functions", {"drop_connection": True}, DiscoveryError, "failed", id="dropped"),
    pytest.param(
        "functions",
        {"latency": 60},
        DiscoveryError,
        f"lookup_timeout={LOOKUP_TIMEOUT}s",
        id="hangs",
    ),
]


@pytest.mark.parametrize(("endpoint", "fault", "error", "fragment"), FAULTS)
async def test_failed_refresh_keeps_the_map_and_is_counted(
    connect: Connect,
    endpoint: SystemEndpoint,
    fault: dict[str, Any],
    error: type[DiscoveryError],
    fragment: str,
) -> None:
    gw = FakeGateway()
    gw.add_function("a", topics="t")
    gw.add_function("b", topics="t")
    with anyio.fail_after(30):
        async with gw.serve() as url, connect(url, lookup_timeout=LOOKUP_TIMEOUT) as controller:
            before = controller.stats()
            gw.remove_function("b")  # a refresh that got through would drop b
            gw.system_fault(endpoint=endpoint, **fault)
            started = anyio.current_time()
            with pytest.raises(error, match=fragment):
                await controller.refresh()
            assert anyio.current_time() - started < LOOKUP_TIMEOUT + 10
            stats = controller.stats()
            assert stats.refresh_failures == 1
            assert stats.refreshes == before.refreshes == 1
            assert stats.last_refresh == before.last_refresh
            assert stats.last_refresh_error is not None
            assert fragment in stats.last_refresh_error
            # The last good map is kept: messages are still routed to both functions.
            assert controller.functions_for("t") == BOTH
            assert controller.stats().functions == 2
            gw.add_function("b", topics="t")
            results = await controller.invoke("t", b"still routed")
            assert [(r.function, r.ok) for r in results] == [(f, True) for f in BOTH]

            gw.clear_faults()
            gw.remove_function("b")
            await controller.refresh()
            assert controller.stats().last_refresh_error is None
            assert controller.stats().refreshes == 2
            assert controller.functions_for("t") == ("a.openfaas-fn",)


async def test_background_refresh_rides_out_a_flapping_gateway(connect: Connect) -> None:
    gw = FakeGateway()
    gw.add_function("a", topics="t")
    with anyio.fail_after(30):
        async with gw.serve() as url, connect(url, rebuild_interval=0.1) as controller:
            gw.system_fault(endpoint="functions", status=502, times=2)
            gw.system_fault(endpoint="functions", malformed_json=True, times=1)
            gw.system_fault(endpoint="namespaces", status=503, times=1)
            gw.add_function("late", topics="t")
            with anyio.move_on_after(20):
                while "late.openfaas-fn" not in controller.functions_for("t"):
                    # Until the new map lands, every message still reaches a.
                    (result,) = await controller.invoke("t", b"x")
                    assert result.function == "a.openfaas-fn"
                    assert result.ok
                    await anyio.sleep(0.02)
            stats = controller.stats()
    assert controller.functions_for("t") == ("a.openfaas-fn", "late.openfaas-fn")
    assert stats.refresh_failures == 4  # each injected fault failed exactly one refresh
    assert stats.last_refresh_error is None


async def test_huge_function_list_is_parsed_and_routed(connect: Connect) -> None:
    gw = FakeGateway(namespaces=())  # only the namespaces its functions live in
    per_namespace = 5_000
    for namespace in ("ns-one", "ns-two"):
        for i in range(per_namespace):
            topics = [f"t{i % 4}"] + (["rare"] if i in (7, 1_234, 4_999) else [])
            gw.add_function(f"fn-{i}", namespace=namespace, topics=topics)
    with anyio.fail_after(45):
        async with gw.serve() as url, connect(url, lookup_timeout=30) as controller:
            stats = controller.stats()
            assert stats.functions == 10_000
            assert stats.topics == 5
            for topic in ("t0", "t1", "t2", "t3"):
                routed = controller.functions_for(topic)
                assert len(routed) == 2_500
                assert len(set(routed)) == 2_500
            assert "fn-6.ns-two" in controller.functions_for("t2")
            rare = tuple(
                sorted(f"fn-{i}.{ns}" for ns in ("ns-one", "ns-two") for i in (7, 1234, 4999))
            )
            assert controller.functions_for("rare") == rare
            results = await controller.invoke("rare", b"needle")
            assert [r.function for r in results] == list(rare)
            assert all(r.ok and r.body == b"needle" for r in results)
            # A refresh of the same list also goes through (and keeps it).
            await controller.refresh()
            assert controller.stats().functions == 10_000
    invoked = sorted(r.function or "" for r in gw.invocations())
    assert invoked == sorted(rare)
    lookups = [r for r in gw.requests if r.path == "/system/functions"]
    assert len(lookups) == 4  # two namespaces, twice
