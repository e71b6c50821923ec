"""Topic discovery against httpx.MockTransport: paths, namespaces, auth, failures, refresh."""

from __future__ import annotations

import json

import anyio
import attrs
import httpx
import pytest

from aioconnector import (
    AsyncController,
    AuthenticationError,
    BasicAuth,
    ControllerConfig,
    DiscoveryError,
    GatewayUnavailableError,
    NotAGatewayError,
)


class Endless(httpx.AsyncByteStream):
    """A body that never ends (chunked), or that declares ``length`` bytes; counts what it made."""

    def __init__(self, length: int | None = None) -> None:
        self.headers = {} if length is None else {"Content-Length": str(length)}
        self.produced = 0
        self.closed = False

    def __aiter__(self) -> Endless:  # an iterator, not a generator: nothing left to close
        return self

    async def __anext__(self) -> bytes:
        await anyio.lowlevel.checkpoint()
        self.produced += len(CHUNK)
        return CHUNK

    async def aclose(self) -> None:
        self.closed = True


CHUNK = b" " * 65536


@attrs.define
class MockGateway:
    """A scriptable /system/* API: what it answers can change between requests."""

    namespaces: list[str] | None = attrs.Factory(lambda: ["openfaas-fn"])  # None: 404
    functions: dict[str | None, list[dict[str, object]]] = attrs.Factory(dict)
    status: int = 200  # for /system/functions
    body: bytes | None = None  # raw body for /system/functions, overriding `functions`
    hang: float = 0.0
    stream: Endless | None = None  # streamed body for /system/functions, overriding the rest
    seen: list[httpx.Request] = attrs.Factory(list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path.endswith("/system/namespaces"):
            if self.namespaces is None:
                return httpx.Response(404, text="Not Found")
            return httpx.Response(200, json=self.namespaces)
        if path.endswith("/system/functions"):
            if self.hang:
                await anyio.sleep(self.hang)
            if self.stream is not None:
                return httpx.Response(200, headers=self.stream.headers, stream=self.stream)
            if self.status != 200:
                return httpx.Response(self.status, text="error")
            if self.body is not None:
                return httpx.Response(200, content=self.body)
            namespace = request.url.params.get("namespace")
            return httpx.Response(200, json=self.functions.get(namespace, []))
        return httpx.Response(200, text="ok")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def paths(self) -> list[str]:
        return [r.url.raw_path.decode() for r in self.seen]


def fn(name: str, topic: str | None, **extra: object) -> dict[str, object]:
    annotations = None if topic is None else {"topic": topic}
    return {"name": name, "annotations": annotations, "labels": None, **extra}


def controller(gateway: MockGateway, **config: object) -> AsyncController:
    config.setdefault("gateway_url", "http://gateway.test")
    return AsyncController(
        ControllerConfig(**config),  # type: ignore[arg-type]
        transport=gateway.transport(),
    )


async def test_discovers_every_namespace_with_fresh_queries() -> None:
    gateway = MockGateway(namespaces=["openfaas-fn", "dev"])
    gateway.functions["openfaas-fn"] = [fn("a", "t1, t2,,t1"), fn("b", None)]
    gateway.functions["dev"] = [fn("a", "t1", image="x", invocationCount=3, replicas=1)]
    async with controller(gateway) as ctrl:
        assert ctrl.functions_for("t1") == ("a.dev", "a.openfaas-fn")
        assert ctrl.functions_for("t2") == ("a.openfaas-fn",)
        assert ctrl.stats().functions == 2
    assert gateway.paths() == [
        "/system/namespaces",
        "/system/functions?namespace=openfaas-fn",
        "/system/functions?namespace=dev",
    ]


async def test_configured_namespaces_skip_the_namespace_lookup() -> None:
    gateway = MockGateway()
    gateway.functions["team"] = [fn("a", "t")]
    async with controller(gateway, namespaces=("team",)) as ctrl:
        assert ctrl.functions_for("t") == ("a.team",)
    assert gateway.paths() == ["/system/functions?namespace=team"]


async def test_gateway_without_namespaces_falls_back_to_one_plain_lookup() -> None:
    gateway = MockGateway(namespaces=None)
    gateway.functions[None] = [fn("legacy", "t")]
    async with controller(gateway) as ctrl:
        assert ctrl.functions_for("t") == ("legacy",)
        await ctrl.invoke("t", b"x")
    assert gateway.paths() == ["/system/namespaces", "/system/functions", "/function/legacy"]


async def test_empty_namespace_list_means_one_plain_lookup() -> None:
    gateway = MockGateway(namespaces=[])
    gateway.functions[None] = [fn("a", "t")]
    async with controller(gateway) as ctrl:
        assert ctrl.functions_for("t") == ("a",)


@pytest.mark.parametrize("url", ["http://gateway.test/base", "http://gateway.test/base/"])
async def test_base_path_is_kept_for_lookups_and_invocations(url: str) -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("a", "t")]
    async with controller(gateway, gateway_url=url) as ctrl:
        await ctrl.invoke("t", b"x")
    assert gateway.paths() == [
        "/base/system/namespaces",
        "/base/system/functions?namespace=openfaas-fn",
        "/base/function/a.openfaas-fn",
    ]


async def test_unsafe_function_names_are_never_routed(caplog: pytest.LogCaptureFixture) -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("../../system/secrets", "t"), fn("ok", "t")]
    async with controller(gateway) as ctrl:
        assert ctrl.functions_for("t") == ("ok.openfaas-fn",)
    assert "skipped 1 function" in caplog.text


async def test_credentials_go_to_system_endpoints_only() -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("a", "t")]
    async with controller(gateway, credentials=BasicAuth("admin", "pw")) as ctrl:
        await ctrl.invoke("t", b"x")
    auth = {r.url.path: r.headers.get("authorization") for r in gateway.seen}
    assert auth["/system/namespaces"] == httpx.BasicAuth("admin", "pw")._auth_header
    assert auth["/system/functions"] == auth["/system/namespaces"]
    assert auth["/function/a.openfaas-fn"] is None


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_credentials_fail_startup_at_once(status: int) -> None:
    gateway = MockGateway(status=status)
    start = anyio.current_time()
    with pytest.raises(AuthenticationError, match=f"HTTP {status}.*credentials"):
        async with controller(gateway, startup_timeout=10):
            pass  # pragma: no cover
    assert anyio.current_time() - start < 5
    assert len(gateway.seen) == 2  # no retries


@pytest.mark.parametrize("namespaces", [None, ("team",)])
async def test_a_404_on_functions_fails_startup_at_once(namespaces: tuple[str] | None) -> None:
    gateway = MockGateway(namespaces=None, status=404)  # /system/namespaces answers 404 too
    retries: list[int] = []
    ctrl = AsyncController(
        ControllerConfig(
            gateway_url="http://gateway.test/base", startup_timeout=30, namespaces=namespaces
        ),
        transport=gateway.transport(),
        on_startup_retry=lambda _error, attempt, _delay: retries.append(attempt),
    )
    with anyio.fail_after(20), pytest.raises(NotAGatewayError) as exc_info:
        async with ctrl:
            pass  # pragma: no cover
    message = str(exc_info.value)
    assert "HTTP 404" in message
    assert "http://gateway.test/base is not an OpenFaaS gateway" in message
    assert "wrong base path" in message
    assert ("namespace 'team' does not exist" in message) == (namespaces is not None)
    assert retries == []
    assert gateway.paths()[-1].startswith("/base/system/functions")
    assert len(gateway.seen) == (2 if namespaces is None else 1)  # no retries


async def test_startup_retries_are_reported_one_by_one() -> None:
    gateway = MockGateway(status=503)
    gateway.functions["openfaas-fn"] = [fn("a", "t")]
    reports: list[tuple[DiscoveryError, int, float]] = []

    def on_retry(error: DiscoveryError, attempt: int, delay: float) -> None:
        reports.append((error, attempt, delay))
        if attempt == 3:
            gateway.status = 200

    ctrl = AsyncController(
        ControllerConfig(gateway_url="http://gateway.test", startup_timeout=30),
        transport=gateway.transport(),
        on_startup_retry=on_retry,
    )
    async with ctrl:
        assert ctrl.functions_for("t") == ("a.openfaas-fn",)
    assert [attempt for _, attempt, _ in reports] == [1, 2, 3]
    assert all("HTTP 503" in str(error) for error, _, _ in reports)
    delays = [delay for _, _, delay in reports]
    assert delays == sorted(delays)
    assert delays[0] > 0


def test_on_startup_retry_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_startup_retry must be callable"):
        AsyncController(
            ControllerConfig(gateway_url="http://gateway.test"),
            on_startup_retry="print",  # type: ignore[arg-type]
        )


async def test_unreachable_gateway_fails_after_startup_timeout() -> None:
    # A port nothing listens on: connection refused, on loopback only.
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
        config = ControllerConfig(gateway_url=f"http://127.0.0.1:{port}", startup_timeout=0.5)
        with pytest.raises(GatewayUnavailableError, match=r"startup_timeout=0\.5s.*ConnectError"):
            async with AsyncController(config):
                pass  # pragma: no cover


async def test_startup_retries_until_the_gateway_answers() -> None:
    gateway = MockGateway(status=503)
    gateway.functions["openfaas-fn"] = [fn("a", "t")]

    async def recover() -> None:
        await anyio.sleep(0.3)
        gateway.status = 200

    async with anyio.create_task_group() as tg:
        tg.start_soon(recover)
        async with controller(gateway, startup_timeout=5) as ctrl:
            assert ctrl.functions_for("t") == ("a.openfaas-fn",)
    assert sum(r.url.path == "/system/functions" for r in gateway.seen) >= 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 401}, "HTTP 401"),
        ({"body": b"<html>not json"}, "invalid /system/functions"),
        ({"body": b'[{"name": "a", "annot'}, "invalid /system/functions"),
        ({"body": json.dumps({"not": "a list"}).encode()}, "invalid /system/functions"),
        ({"hang": 5.0}, "timed out after lookup_timeout=0.2s"),
    ],
)
async def test_failed_refresh_keeps_the_last_map(change: dict[str, object], message: str) -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("a", "t")]
    async with controller(gateway, lookup_timeout=0.2) as ctrl:
        for key, value in change.items():
            setattr(gateway, key, value)
        with anyio.fail_after(3), pytest.raises(DiscoveryError, match=message):
            await ctrl.refresh()
        assert ctrl.functions_for("t") == ("a.openfaas-fn",)
        stats = ctrl.stats()
        assert stats.refresh_failures == 1
        assert stats.last_refresh_error is not None
        assert message.split("=", maxsplit=1)[0] in stats.last_refresh_error
        (result,) = await ctrl.invoke("t", b"x")  # still routed with the old map
        assert result.ok


async def test_background_refresh_picks_up_changes_and_survives_failures() -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("a", "t")]
    async with controller(gateway, rebuild_interval=0.05) as ctrl:
        gateway.status = 500
        with anyio.fail_after(5):
            while ctrl.stats().refresh_failures < 2:
                await anyio.sleep(0.01)
        assert ctrl.functions_for("t") == ("a.openfaas-fn",)
        gateway.status = 200
        gateway.functions["openfaas-fn"] = [fn("a", "t"), fn("b", "t,new")]
        with anyio.fail_after(5):
            while "new" not in ctrl.topics():
                await anyio.sleep(0.01)
        stats = ctrl.stats()
        assert ctrl.functions_for("t") == ("a.openfaas-fn", "b.openfaas-fn")
        assert stats.last_refresh_error is None
        assert stats.refreshes >= 2
        assert stats.last_refresh is not None


async def test_topics_invoke_would_refuse_are_never_listed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("a", "re\u00e7u, ok"), fn("b", "re\u00e7u")]
    async with controller(gateway) as ctrl:
        await ctrl.refresh()
        await ctrl.refresh()
        assert ctrl.topics() == {"ok"}
        for topic in ctrl.topics():
            (result,) = await ctrl.invoke(topic, b"x")
            assert result.ok
        with pytest.raises(ValueError, match="must be ASCII"):
            await ctrl.invoke("re\u00e7u", b"x")
    # Once for the map that skipped them, not on every refresh.
    assert caplog.text.count("skipped 2 function(s) or topic(s)") == 1
    assert "'a': topic 're\u00e7u' must be ASCII" in caplog.text


# Stopping midway leaves httpx's nested body iterators unclosed (httpx's doing, as in
# test_fastpath.py's HttpxInvoker tests); trio warns about that when they are collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("length", [None, 10**12], ids=["endless chunked", "content-length"])
async def test_lookup_response_over_the_byte_cap_fails_the_refresh(length: int | None) -> None:
    gateway = MockGateway()
    gateway.functions["openfaas-fn"] = [fn("a", "t")]
    limit = 1024 * 1024
    async with controller(gateway, max_lookup_bytes=limit) as ctrl:
        gateway.stream = body = Endless(length)
        with anyio.fail_after(10), pytest.raises(DiscoveryError) as caught:
            await ctrl.refresh()
        assert ctrl.functions_for("t") == ("a.openfaas-fn",)  # the last map is kept
        assert f"max_lookup_bytes={limit}" in ctrl.stats().last_refresh_error  # type: ignore[operator]
    assert f"over max_lookup_bytes={limit}" in str(caught.value)
    assert "env variable max_lookup_bytes" in str(caught.value)
    assert body.closed
    # Reading stopped at the cap (and a declared length too large was not read at all).
    assert body.produced == (0 if length else limit + len(CHUNK))


@pytest.mark.parametrize("spare", [0, -1])
async def test_lookup_byte_cap_is_exact(spare: int) -> None:
    gateway = MockGateway()
    gateway.body = json.dumps([fn("a", "t")]).encode()
    size = len(gateway.body)
    ctrl = controller(gateway, max_lookup_bytes=size + spare, startup_timeout=0.5)
    if spare == 0:
        async with ctrl:
            assert ctrl.topics() == {"t"}
    else:
        with pytest.raises(GatewayUnavailableError, match=f"max_lookup_bytes={size - 1}"):
            async with ctrl:
                pass
