"""The gateway is down, hangs, refuses the credentials, or dies mid-run and comes back."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import pytest

from aioconnector import (
    AsyncController,
    AuthenticationError,
    BasicAuth,
    DiscoveryError,
    GatewayUnavailableError,
    UpstreamConnectionError,
)
from aioconnector.testing import FakeGateway

Connect = Callable[..., AsyncController]
BOTH = ("a.openfaas-fn", "b.openfaas-fn")


async def dead_url() -> str:
    """The URL of a loopback port where nothing listens any more."""
    async with FakeGateway().serve() as url:
        pass
    return url


async def test_gateway_down_at_start_fails_after_startup_timeout(connect: Connect) -> None:
    url = await dead_url()
    started = anyio.current_time()
    with anyio.fail_after(15), pytest.raises(GatewayUnavailableError) as info:
        async with connect(url, startup_timeout=0.5):
            pytest.fail("the controller started without a gateway")
    elapsed = anyio.current_time() - started
    message = str(info.value)
    assert "startup_timeout=0.5s" in message
    assert url in message
    assert "ConnectError" in message  # the last error says what went wrong
    assert isinstance(info.value.__cause__, DiscoveryError)
    assert elapsed >= 0.45  # it kept trying until the deadline, not just once


async def test_gateway_hanging_at_start_fails_after_startup_timeout(connect: Connect) -> None:
    gw = FakeGateway()
    gw.system_fault(latency=60)  # accepts the connection, never answers
    async with gw.serve() as url:
        started = anyio.current_time()
        with anyio.fail_after(15), pytest.raises(GatewayUnavailableError) as info:
            async with connect(url, startup_timeout=0.5, lookup_timeout=30):
                pytest.fail("the controller started without a topic map")
        elapsed = anyio.current_time() - started
    assert "startup_timeout=0.5s" in str(info.value)
    assert "lookup still running" in str(info.value)
    assert elapsed < 10  # startup_timeout cut the 30 s lookup_timeout short


@pytest.mark.parametrize(
    ("credentials", "hint"),
    [
        (BasicAuth("admin", "wrong-pass-123"), "credentials were rejected"),
        (None, "requires credentials"),
    ],
    ids=["wrong", "missing"],
)
async def test_rejected_credentials_fail_at_once(
    connect: Connect, credentials: BasicAuth | None, hint: str
) -> None:
    gw = FakeGateway(auth=("admin", "right-pass-456"))
    gw.add_function("f", topics="t")
    async with gw.serve() as url:
        started = anyio.current_time()
        with anyio.fail_after(20), pytest.raises(AuthenticationError) as info:
            async with connect(url, credentials=credentials, startup_timeout=30):
                pytest.fail("the controller started with rejected credentials")
        elapsed = anyio.current_time() - started
    message = str(info.value)
    assert "HTTP 401" in message
    assert hint in message
    assert "wrong-pass-123" not in message  # neither password is echoed
    assert "right-pass-456" not in message
    assert elapsed < 10  # at once, not after startup_timeout=30
    assert [r.path for r in gw.requests] == ["/system/namespaces"]  # no retry on 401


@attrs.define
class Restartable:
    """Serves a gateway from a task of ``task_group``, so it can stop and start again while a
    controller (in the test's own task) keeps running; restarts reuse the first port."""

    gateway: FakeGateway
    task_group: anyio.abc.TaskGroup
    port: int = 0
    _stop: anyio.Event = attrs.field(factory=anyio.Event)
    _stopped: anyio.Event = attrs.field(factory=anyio.Event)

    async def start(self) -> str:
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        url: str = await self.task_group.start(self._serve)
        self.port = urlsplit(url).port or 0
        return url

    async def stop(self) -> None:
        self._stop.set()
        await self._stopped.wait()

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[str]) -> None:
        try:
            async with self.gateway.serve(port=self.port) as url:
                task_status.started(url)
                await self._stop.wait()
        finally:
            self._stopped.set()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(10):
        while not condition():
            await anyio.sleep(0.02)
    assert condition(), f"timed out waiting for {what}"


async def test_gateway_dies_mid_run_and_comes_back_on_the_same_port(connect: Connect) -> None:
    gw = FakeGateway()
    gw.add_function("a", topics="t")
    gw.add_function("b", topics="t")
    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            server = Restartable(gw, tg)
            url = await server.start()
            async with connect(url, rebuild_interval=0.2, lookup_timeout=2) as controller:
                assert [r.ok for r in await controller.invoke("t", b"before")] == [True, True]

                await server.stop()  # the gateway dies
                await wait_for(lambda: controller.stats().refresh_failures >= 2, "failures")
                stats = controller.stats()
                assert stats.last_refresh_error is not None
                assert "/system/namespaces" in stats.last_refresh_error
                # The controller survives and keeps routing with the last map.
                assert controller.functions_for("t") == BOTH
                during = await controller.invoke("t", b"during")
                assert [r.function for r in during] == list(BOTH)
                for result in during:
                    assert isinstance(result.error, UpstreamConnectionError), result.error
                    assert result.status is None
                    assert not result.ok
                    assert result.function in str(result.error)  # says which function
                    assert len(str(result.error)) > len(result.function) + 2  # and why
                with pytest.raises(DiscoveryError, match="/system/namespaces"):
                    await controller.refresh()

                gw.add_function("c", topics="t")  # deployed while the gateway was away
                assert await server.start() == url  # back on the same port
                await controller.refresh()
                stats = controller.stats()
                assert stats.last_refresh_error is None
                assert stats.refresh_failures >= 3  # background failures and ours
                assert controller.functions_for("t") == (*BOTH, "c.openfaas-fn")
                after = await controller.invoke("t", b"after")
                assert [r.ok for r in after] == [True, True, True]
                assert [r.body for r in after] == [b"after"] * 3
            await server.stop()
    # Only "before" and "after" reached the functions; the outage's attempts never arrived.
    assert sorted(r.body for r in gw.invocations()) == sorted([b"before"] * 2 + [b"after"] * 3)
