"""Idempotency-Key: every invocation of a message with an ``X-Message-Id`` carries a key
derived from the message id and the function, the same on every delivery and in every
process, so a function can deduplicate a redelivered message (issue 15, safe redelivery)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

import anyio

from aioconnector import InvocationResult, Settlement, SourceMessage, run_source
from aioconnector._message import idempotency_key

from .helpers import Wire

FUNCTIONS = ("audit.openfaas-fn", "echo.openfaas-fn")


def keys_received(wire: Wire, name: str) -> list[str | None]:
    return [request.headers.get("idempotency-key") for request in wire.gateway.invocations(name)]


def test_the_key_is_sha256_of_the_message_id_and_the_function() -> None:
    expected = hashlib.sha256(b"m-1\necho.openfaas-fn").hexdigest()[:32]
    assert idempotency_key("m-1", "echo.openfaas-fn") == expected
    # A different message or a different function gives another key.
    assert idempotency_key("m-2", "echo.openfaas-fn") != expected
    assert idempotency_key("m-1", "audit.openfaas-fn") != expected
    # Even an id that is not valid UTF-8 text (a lone surrogate) gives a key.
    assert len(idempotency_key("\udcff", "echo.openfaas-fn")) == 32


async def test_each_function_gets_its_own_key_and_a_redelivery_the_same(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="orders")
    wire.gateway.add_function("audit", topics="orders")
    async with wire.controller() as controller:
        for _ in range(2):  # the message, then its redelivery
            results = await controller.invoke("orders", b"{}", headers={"X-Message-Id": "m-7"})
            assert [r.function for r in results] == list(FUNCTIONS)
            assert all(r.ok for r in results)
    echo, audit = keys_received(wire, "echo"), keys_received(wire, "audit")
    assert echo == [idempotency_key("m-7", "echo.openfaas-fn")] * 2
    assert audit == [idempotency_key("m-7", "audit.openfaas-fn")] * 2
    assert echo[0] != audit[0]


async def test_no_message_id_no_key_and_a_key_of_the_callers_own_is_kept(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="orders")
    wire.gateway.add_function("audit", topics="orders")
    async with wire.controller() as controller:
        await controller.invoke("orders", b"{}")
        await controller.invoke("orders", b"{}", headers={"X-Request": "1"})
        mine = {"x-message-id": "m-1", "IDEMPOTENCY-KEY": "mine"}
        await controller.invoke("orders", b"{}", headers=mine)
    for name in ("echo", "audit"):
        assert keys_received(wire, name) == [None, None, "mine"]


async def test_run_source_sends_each_messages_key(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="orders")
    wire.gateway.add_function("audit", topics="orders")
    settled: list[tuple[str, Settlement]] = []

    async def messages() -> AsyncIterator[str]:
        for message_id in ("a", "b", "a"):  # "a" is redelivered
            yield message_id

    async def settle(message: str, settlement: Settlement, _: Sequence[InvocationResult]) -> None:
        settled.append((message, settlement))

    with anyio.fail_after(30):
        async with wire.controller() as controller:
            await run_source(
                controller,
                messages(),
                convert=lambda m: SourceMessage(topic="orders", body=m, message_id=m),
                settle=settle,
                max_in_flight=1,  # in order, so the keys can be compared one by one
            )
    assert settled == [("a", Settlement.ACK), ("b", Settlement.ACK), ("a", Settlement.ACK)]
    for name, address in (("echo", FUNCTIONS[1]), ("audit", FUNCTIONS[0])):
        a, b = idempotency_key("a", address), idempotency_key("b", address)
        assert keys_received(wire, name) == [a, b, a]
