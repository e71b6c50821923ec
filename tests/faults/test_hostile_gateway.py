"""A gateway (or whoever deploys functions) hands out hostile names: nothing escapes /function/."""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable
from urllib.parse import parse_qs, unquote

import anyio
import pytest

from aioconnector import AsyncController
from aioconnector.testing import FakeGateway

Connect = Callable[..., AsyncController]

TRAVERSAL = [
    "../../system/secrets",
    "..",
    "a/b",
    "x%2F..",
    "%2e%2e",
    "good/../../system/secrets",
    "q?namespace=kube-system",
    "frag#x",
    "back\\slash",
]
CONTROL = ["evil\r\nX-Injected: 1", "bell\x07", "nul\x00byte", "esc\x1b[31mred", "tab\tname"]
SYSTEM_PATHS = {"/system/namespaces", "/system/functions"}


def listing(names: list[str]) -> str:
    """A /system/functions answer: every name subscribed to topic t, then one good function
    whose annotation also lists topics with control characters."""
    items: list[dict[str, object]] = [
        {"name": name, "annotations": {"topic": "t"}, "invocationCount": 0} for name in names
    ]
    items.append({"name": "good", "annotations": {"topic": "t, bad\ntopic,\x1b[2Jclear"}})
    return json.dumps(items)


def assert_stays_in_function_paths(gw: FakeGateway) -> None:
    for request in gw.requests:
        if request.method == "GET":
            assert request.path in SYSTEM_PATHS, request
            continue
        assert request.path.startswith("/function/"), request
        resolved = posixpath.normpath(unquote(unquote(request.path)))
        assert resolved.startswith("/function/"), request
        assert "secrets" not in resolved, request
        assert "/system" not in resolved, request


@pytest.mark.parametrize("names", [TRAVERSAL, CONTROL], ids=["traversal", "control"])
async def test_hostile_function_names_are_skipped(
    connect: Connect, caplog: pytest.LogCaptureFixture, names: list[str]
) -> None:
    caplog.set_level(logging.WARNING, logger="aioconnector")
    gw = FakeGateway()
    gw.add_function("good", topics="t")
    gw.system_fault(
        endpoint="functions",
        status=200,
        body=listing(names),
        headers={"Content-Type": "application/json"},
    )
    with anyio.fail_after(20):
        async with gw.serve() as url, connect(url) as controller:
            assert controller.functions_for("t") == ("good.openfaas-fn",)
            assert controller.topics() == frozenset({"t"})  # control-character topics dropped
            results = await controller.invoke("t", b"x")
    assert [(r.function, r.ok) for r in results] == [("good.openfaas-fn", True)]
    assert [r.path for r in gw.requests if r.method == "POST"] == ["/function/good.openfaas-fn"]
    assert_stays_in_function_paths(gw)
    # The skipped names are reported once, escaped: nothing can forge a log line.
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1
    # The names, and the good function's two control-character topics.
    assert f"skipped {len(names) + 2} function(s) or topic(s)" in warnings[0]
    for char in "\r\n\x07\x00\x1b\t":
        assert char not in warnings[0]


async def test_hostile_namespaces_are_skipped_and_stay_in_the_query(connect: Connect) -> None:
    hostile = ["../../system", "ns/evil", "kube-system&namespace=x", "ns\r\nX-Injected: 1"]
    gw = FakeGateway()
    gw.add_function("good", topics="t")
    gw.system_fault(
        endpoint="namespaces",
        status=200,
        body=json.dumps(["openfaas-fn", *hostile]),
        headers={"Content-Type": "application/json"},
    )
    gw.system_fault(
        endpoint="functions",
        status=200,
        body=json.dumps([{"name": "good", "annotations": {"topic": "t"}}]),
        headers={"Content-Type": "application/json"},
    )
    with anyio.fail_after(20):
        async with gw.serve() as url, connect(url) as controller:
            # Only the safe namespace gives an address; the others' functions are skipped.
            assert controller.functions_for("t") == ("good.openfaas-fn",)
            (result,) = await controller.invoke("t", b"x")
    assert result.ok
    assert_stays_in_function_paths(gw)
    lookups = [r for r in gw.requests if r.path == "/system/functions"]
    # Each namespace went out as one query parameter, exactly as given.
    asked = [parse_qs(r.query, keep_blank_values=True)["namespace"] for r in lookups]
    assert asked == [[ns] for ns in ["openfaas-fn", *hostile]]
    assert all("\r" not in r.query and "\n" not in r.query for r in lookups)
