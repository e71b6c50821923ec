"""Where credentials go, redirects, TLS settings, and the plain-http warning."""

from __future__ import annotations

import logging
import ssl

import httpx
import pytest

from aioconnector import AsyncController, BasicAuth, ControllerConfig
from aioconnector._http import _tls_context
from aioconnector.testing import FakeGateway, FakeResponse

from .helpers import Wire

CREDS = BasicAuth("admin", "pw")


async def test_credentials_reach_functions_only_when_asked(wire: Wire) -> None:
    wire.gateway.add_function("f", topics="t")
    async with wire.controller(credentials=CREDS) as controller:
        await controller.invoke("t", b"x")
    async with wire.controller(credentials=CREDS, auth_invocations=True) as controller:
        await controller.invoke("t", b"x")
    plain, protected = wire.gateway.invocations()
    assert "authorization" not in plain.headers
    assert protected.headers["authorization"] == httpx.BasicAuth("admin", "pw")._auth_header


async def test_redirects_are_not_followed(wire: Wire) -> None:
    wire.gateway.add_function(
        "moved", topics="t", handler=FakeResponse(status=302, headers={"Location": "/elsewhere"})
    )
    async with wire.controller(credentials=CREDS) as controller:
        (result,) = await controller.invoke("t", b"x")
    assert result.status == 302
    assert not result.ok
    assert [r.path for r in wire.gateway.requests if r.path == "/elsewhere"] == []


async def test_gateway_with_auth_and_right_credentials(wire: Wire) -> None:
    gateway = FakeGateway(auth=("admin", "pw"))
    gateway.add_function("f", topics="t")
    config = ControllerConfig(gateway_url="http://gateway.test", credentials=CREDS)
    async with AsyncController(config, transport=gateway.transport()) as controller:
        assert controller.functions_for("t") == ("f.openfaas-fn",)


def test_plain_http_with_credentials_to_a_remote_host_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aioconnector._http import _warn_if_credentials_travel_in_clear

    caplog.set_level(logging.WARNING, logger="aioconnector")
    remote = ControllerConfig(gateway_url="http://gateway.example:8080", credentials=CREDS)
    for _ in range(3):
        _warn_if_credentials_travel_in_clear(remote)
    assert caplog.text.count("plain http") == 1
    caplog.clear()
    for quiet in (
        ControllerConfig(gateway_url="http://127.0.0.1:8080", credentials=CREDS),
        ControllerConfig(gateway_url="http://localhost:8080", credentials=CREDS),
        ControllerConfig(gateway_url="https://gateway.example", credentials=CREDS),
        ControllerConfig(gateway_url="http://other.example"),
    ):
        _warn_if_credentials_travel_in_clear(quiet)
    assert "plain http" not in caplog.text
    assert "pw" not in caplog.text


def test_tls_verification_is_on_by_default() -> None:
    context = _tls_context(ControllerConfig(gateway_url="https://gateway.example"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_verification_can_be_turned_off() -> None:
    config = ControllerConfig(gateway_url="https://gateway.example", verify_tls=False)
    context = _tls_context(config)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE


def test_missing_tls_files_are_a_clear_error(tmp_path: object) -> None:
    config = ControllerConfig(
        gateway_url="https://gateway.example", ca_bundle="/nonexistent/ca.pem"
    )
    with pytest.raises(
        ValueError, match=r"cannot load TLS files.*ca_bundle='/nonexistent/ca\.pem'"
    ):
        _tls_context(config)


def test_client_key_needs_a_client_cert() -> None:
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        ControllerConfig(gateway_url="https://gw.example", client_key="k.pem")
