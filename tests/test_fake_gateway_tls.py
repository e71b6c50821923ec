"""HTTPS on loopback: FakeGateway.serve(ssl_context=...) and the controller's TLS settings.

Certificates come from ``trustme``: a throw-away CA, a server certificate for 127.0.0.1 and,
for mutual TLS, a client certificate from the same CA.
"""

from __future__ import annotations

import contextlib
import gc
import ssl
import warnings
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
import trustme

from aioconnector import AsyncController, ControllerConfig, GatewayUnavailableError
from aioconnector._fastpath import FastInvoker
from aioconnector.testing import FakeGateway

TOPIC = "orders"


@attrs.frozen
class Pki:
    """A CA, the files a controller is configured with, and the server's certificate."""

    ca: trustme.CA
    ca_file: str
    client_chain_file: str  # private key and certificate chain in one PEM file
    client_cert_file: str
    client_key_file: str
    server_cert: trustme.LeafCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client = ca.issue_cert("connector@example.test")
    files = {
        "ca.pem": ca.cert_pem,
        "client.pem": client.private_key_and_cert_chain_pem,
        "client-cert.pem": client.cert_chain_pems[0],
        "client-key.pem": client.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(folder / name)
    return Pki(
        ca=ca,
        ca_file=str(folder / "ca.pem"),
        client_chain_file=str(folder / "client.pem"),
        client_cert_file=str(folder / "client-cert.pem"),
        client_key_file=str(folder / "client-key.pem"),
        server_cert=ca.issue_cert("127.0.0.1"),
    )


def server_context(pki: Pki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server_cert.configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        pki.ca.configure_trust(context)
    return context


def gateway() -> FakeGateway:
    gw = FakeGateway()
    gw.add_function("echo", topics=[TOPIC])
    return gw


def controller(url: str, **config: Any) -> AsyncController:
    config.setdefault("startup_timeout", 5.0)
    return AsyncController(ControllerConfig(gateway_url=url, **config))


async def assert_works(url: str, gw: FakeGateway, **config: Any) -> None:
    async with controller(url, **config) as connector:
        assert connector.functions_for(TOPIC) == ("echo.openfaas-fn",)
        (result,) = await connector.invoke(TOPIC, b"over tls")
    assert result.ok, result.error
    assert result.body == b"over tls"
    assert gw.invocations("echo")[-1].body == b"over tls"


async def test_serve_with_ssl_context_speaks_https(pki: Pki) -> None:
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki)) as url:
            assert url.startswith("https://127.0.0.1:")
            assert gw.url == url
            verify = ssl.create_default_context(cafile=pki.ca_file)
            async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
                response = await client.get(f"{url}/system/namespaces")
            assert response.status_code == 200
            assert response.json() == ["openfaas-fn"]


async def test_controller_trusts_the_gateway_through_ca_bundle(pki: Pki) -> None:
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki)) as url:
            await assert_works(url, gw, ca_bundle=pki.ca_file)


async def test_unknown_ca_fails_startup_naming_the_certificate_problem(pki: Pki) -> None:
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki)) as url:
            with pytest.raises(GatewayUnavailableError) as info:
                async with controller(url, startup_timeout=1.5):
                    pytest.fail("the controller started against an untrusted certificate")
            # The handshake failed before any HTTP: nothing reached the gateway's handler.
            assert gw.requests == []
            # Failed handshakes closed their connections only: the server still serves.
            await assert_works(url, gw, ca_bundle=pki.ca_file)
    message = str(info.value)
    assert "startup_timeout=1.5" in message
    assert "certificate verify failed" in message.lower()


async def test_verification_can_be_turned_off(pki: Pki) -> None:
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki)) as url:
            await assert_works(url, gw, verify_tls=False)


async def test_plain_http_client_on_the_tls_port_does_not_break_the_server(pki: Pki) -> None:
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki)) as url:
            plain = url.replace("https://", "http://", 1)
            async with httpx.AsyncClient(trust_env=False) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get(f"{plain}/system/namespaces")
            assert gw.requests == []
            await assert_works(url, gw, ca_bundle=pki.ca_file)


@pytest.mark.parametrize("separate_key", [False, True], ids=["chain-file", "cert-and-key"])
async def test_client_certificate_from_the_same_ca_is_accepted(
    pki: Pki, *, separate_key: bool
) -> None:
    gw = gateway()
    files = (
        {"client_cert": pki.client_cert_file, "client_key": pki.client_key_file}
        if separate_key
        else {"client_cert": pki.client_chain_file}
    )
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki, require_client_cert=True)) as url:
            await assert_works(url, gw, ca_bundle=pki.ca_file, **files)


async def test_missing_client_certificate_is_rejected(pki: Pki) -> None:
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki, require_client_cert=True)) as url:
            with pytest.raises(GatewayUnavailableError, match=r"startup_timeout=1\.5") as info:
                async with controller(url, ca_bundle=pki.ca_file, startup_timeout=1.5):
                    pytest.fail("the gateway accepted a connector without a client certificate")
            assert "/system/namespaces" in str(info.value)
            assert gw.requests == []
            # The same server still accepts a connector that presents its certificate.
            await assert_works(url, gw, ca_bundle=pki.ca_file, client_cert=pki.client_chain_file)


async def test_tls_connections_are_reused(pki: Pki) -> None:
    """Sequential calls over https share one kept-alive connection (on trio the pool's
    reuse check peeks at the TLS socket: post-handshake records must not count as unsolicited
    bytes)."""
    gw = gateway()
    with anyio.fail_after(20):
        async with gw.serve(ssl_context=server_context(pki)) as url:
            connector = controller(url, ca_bundle=pki.ca_file)
            async with connector:
                for index in range(5):
                    (result,) = await connector.invoke(TOPIC, b"%d" % index)
                    assert result.ok, result.error
                session = connector._session
                assert session is not None
                assert isinstance(session.invoker, FastInvoker)
                assert session.invoker._open == 1


async def test_a_handshake_cut_short_by_the_startup_timeout_leaves_no_socket_open() -> None:
    """A gateway that accepts TCP but never answers the TLS handshake: the startup timeout
    cancels the lookup mid-handshake, and the connection is closed then, not left to the
    garbage collector (httpcore closes it only when the handshake raises an Exception)."""
    held: list[anyio.abc.SocketStream] = []

    async def hold(stream: anyio.abc.SocketStream) -> None:
        held.append(stream)
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await stream.receive()  # the client's hello, then its EOF once it closes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with (
            await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(listener.serve, hold)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            with anyio.fail_after(20), pytest.raises(GatewayUnavailableError):
                async with controller(f"https://127.0.0.1:{port}", startup_timeout=0.3):
                    pytest.fail("the controller started without a TLS handshake")
            tg.cancel_scope.cancel()
        gc.collect()
    assert held, "the lookup never connected"
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
