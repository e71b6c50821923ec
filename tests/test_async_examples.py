"""The async-invocation examples, run against a FakeGateway whose callbacks travel for real.

``--help`` of each is checked with the other examples' (tests/test_examples.py).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from aioconnector import ControllerConfig
from aioconnector.testing import FakeGateway, FakeResponse

from .test_async_invoke import serve_on
from .test_examples import _load

if TYPE_CHECKING:  # mypy checks examples/ too: each file there is a top-level module
    import aiohttp_callbacks
    import async_invocations
    import fastapi_callbacks
else:
    aiohttp_callbacks, async_invocations, fastapi_callbacks = map(
        _load, ["aiohttp_callbacks", "async_invocations", "fastapi_callbacks"]
    )


def gateway() -> FakeGateway:
    gw = FakeGateway()
    gw.add_function("report", topics="reports")
    gw.add_function(
        "audit", topics="reports", handler=FakeResponse(status=500, body=b"audit is down")
    )
    return gw


def config(gateway_url: str, **variables: str) -> ControllerConfig:
    return ControllerConfig.from_env({"gateway_url": gateway_url, **variables})


async def test_async_invocations_prints_each_result(capsys: pytest.CaptureFixture[str]) -> None:
    gw = gateway()
    async with gw.serve() as url:
        with anyio.fail_after(30):
            ok = await async_invocations.run(
                config(url, callback_listen="127.0.0.1:0"), topic="reports", count=2
            )
    assert ok == 2  # report twice; audit failed twice
    out = capsys.readouterr().out
    assert len({request.headers["x-call-id"] for request in gw.invocations()}) == 4
    for request in gw.invocations():
        call_id = request.headers["x-call-id"]
        if request.function == "report.openfaas-fn":
            expected = f"{call_id} report.openfaas-fn: HTTP 200, {request.body!r}"
        else:
            expected = f"{call_id} audit.openfaas-fn: FAILED (function answered HTTP 500)"
        assert expected in out
        assert f"-> {request.function}: accepted, {call_id}" in out
    assert out.count("accepted") == 4


def bound_socket() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener, listener.getsockname()[1]


def check_answers(answers: Any) -> None:
    assert [(a["function"], a["status"], a["ok"], a["body"]) for a in answers] == [
        ("audit.openfaas-fn", 500, False, "audit is down"),
        ("report.openfaas-fn", 200, True, "make it"),
    ]


async def test_fastapi_callbacks(anyio_backend_name: str) -> None:
    gw = gateway()
    listener, port = bound_socket()
    async with gw.serve() as url:
        public = f"http://127.0.0.1:{port}/callbacks"
        app = fastapi_callbacks.create_app(config(url, callback_public_url=public))
        with listener, anyio.fail_after(30):
            async with (
                serve_on(app, listener, anyio_backend_name),
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client,
            ):
                answer = await client.post("/run/reports", content=b"make it")
                nobody = await client.post("/run/nobody", content=b"x")
    assert answer.status_code == 200
    check_answers(answer.json())
    assert nobody.status_code == 404


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_aiohttp_callbacks() -> None:
    from aiohttp import web

    gw = gateway()
    listener, port = bound_socket()
    async with gw.serve() as url:
        public = f"http://127.0.0.1:{port}/callbacks"
        app = aiohttp_callbacks.create_app(config(url, callback_public_url=public))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, listener).start()
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False
            ) as client:
                with anyio.fail_after(30):
                    answer = await client.post("/run/reports", content=b"make it")
                    forged = await client.post("/callbacks/a/b", content=b"x")
        finally:
            await runner.cleanup()
            listener.close()
    assert answer.status_code == 200
    check_answers(answer.json())
    assert forged.status_code == 403


def test_the_examples_need_a_public_url() -> None:
    with pytest.raises(ValueError, match="callback_public_url"):
        fastapi_callbacks.create_app(config("http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="callback_public_url"):
        aiohttp_callbacks.create_app(config("http://127.0.0.1:1"))
