"""Lifecycle, results streams, bad input, cancellation and drain of AsyncController."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import anyio
import anyio.abc
import pytest

from aioconnector import (
    AsyncController,
    ControllerConfig,
    ControllerStateError,
    InvocationCancelledError,
    InvocationResult,
)

from .helpers import Wire

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup


async def test_use_outside_the_block_is_a_clear_state_error(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    controller = wire.controller()
    with pytest.raises(ControllerStateError, match="inside `async with"):
        await controller.invoke("t", b"x")
    with pytest.raises(ControllerStateError, match="new"):
        await controller.refresh()
    async with controller:
        pass
    with pytest.raises(ControllerStateError, match="closed"):
        await controller.invoke("t", b"x")
    with pytest.raises(ControllerStateError, match="closed"):
        await controller.submit("t", b"x")
    with pytest.raises(ControllerStateError, match="closed"):
        await controller.refresh()
    with pytest.raises(ControllerStateError, match="exited"):
        controller.results()
    with pytest.raises(RuntimeError, match="entered only once"):
        async with controller:
            pass  # pragma: no cover
    assert wire.gateway.invocations() == []


async def test_user_exception_comes_out_as_itself(wire: Wire) -> None:
    with pytest.raises(KeyError, match="mine") as info:
        async with wire.controller():
            raise KeyError("mine")
    assert type(info.value) is KeyError


class AppError(Exception):
    pass


_EMPTY: dict[str, int] = {}


def _explicit_chain() -> None:
    try:
        _EMPTY["inner"]
    except KeyError as exc:
        raise AppError("outer") from exc


def _implicit_chain() -> None:
    try:
        _EMPTY["inner"]
    except KeyError:
        raise AppError("outer")  # noqa: B904 (implicit chaining on purpose)


@pytest.mark.parametrize("fail", [_explicit_chain, _implicit_chain])
async def test_user_exception_keeps_its_cause_and_context(
    wire: Wire, fail: Callable[[], None]
) -> None:
    async def use() -> None:
        async with wire.controller():
            fail()

    with pytest.raises(AppError) as info:
        await use()
    assert isinstance(info.value.__context__, KeyError)
    if fail is _explicit_chain:
        assert info.value.__cause__ is info.value.__context__


async def test_user_exception_group_is_not_unwrapped(wire: Wire) -> None:
    inner = ValueError("a")
    with pytest.raises(ExceptionGroup) as info:
        async with wire.controller():
            raise ExceptionGroup("user's own", [inner])
    # trio may rebuild the group object, but it stays the user's: same message, same members.
    assert info.value.message == "user's own"
    assert info.value.exceptions == (inner,)


@pytest.mark.parametrize("lands", ["in-startup", "in-invoke"])
async def test_outer_cancellation_stops_the_controller_cleanly(wire: Wire, lands: str) -> None:
    # The cancel lands where the test says, not where a timer happens to fire: while the
    # gateway holds the discovery request (the block is never entered), or the invocation.
    gateway = wire.gateway
    gateway.add_function("slow", topics="t")
    if lands == "in-startup":
        gateway.system_fault(latency=10)
    else:
        gateway.set_fault("slow", latency=10)

    def held() -> bool:
        return bool(gateway.invocations()) if lands == "in-invoke" else gateway.in_flight > 0

    controller = wire.controller(drain_timeout=0.1)
    entered = False

    async def cancel_once_held(scope: anyio.CancelScope) -> None:
        while not held():
            await anyio.sleep(0.005)
        scope.cancel()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            outer.start_soon(cancel_once_held, outer.cancel_scope)
            async with controller:
                entered = True
                await controller.invoke("t", b"x")
            pytest.fail("the invocation outlived the cancellation")  # pragma: no cover
    assert outer.cancel_scope.cancelled_caught
    assert entered is (lands == "in-invoke")
    assert len(gateway.invocations()) == (lands == "in-invoke")
    assert controller.stats().in_flight == 0
    with pytest.raises(ControllerStateError, match="closed"):  # stopped, not left half-open
        await controller.invoke("t", b"x")


# Input is checked before any invoker sees it, so one wire is enough here.
ONE_WIRE = pytest.mark.parametrize("wire", ["transport"], indirect=True)


@ONE_WIRE
@pytest.mark.parametrize(
    ("topic", "error", "match"),
    [
        ("", ValueError, "topic must not be empty"),
        ("a\nb", ValueError, "control characters"),
        ("a\rb", ValueError, "control characters"),
        (b"t", TypeError, "topic must be a str"),
        (None, TypeError, "topic must be a str"),
    ],
)
async def test_bad_topic_is_rejected_before_any_request(
    wire: Wire, topic: object, error: type[Exception], match: str
) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller() as controller:
        with pytest.raises(error, match=match):
            await controller.invoke(topic, b"x")  # type: ignore[arg-type]
        with pytest.raises(error, match=match):
            await controller.submit(topic, b"x")  # type: ignore[arg-type]
        assert controller.stats().messages == 0
    assert wire.gateway.invocations() == []


@ONE_WIRE
@pytest.mark.parametrize(
    ("body", "headers", "error", "match"),
    [
        (123, None, TypeError, "body must be bytes, bytearray, memoryview or str, got int"),
        ({"a": 1}, None, TypeError, "got dict"),
        (b"x", {"X-Bad": "a\r\nInjected: 1"}, ValueError, "'X-Bad'.*CR, LF"),
        (b"x", {"Bad Name": "v"}, ValueError, "not a valid HTTP token"),
        (b"x", {"X-Num": 1}, TypeError, "'X-Num'.*must be str"),
        (b"x", {"Content-Length": "1"}, ValueError, "set by aioconnector"),
        (b"x", [("X-A", "b")], TypeError, "headers must be a mapping"),
    ],
)
async def test_bad_body_or_headers_are_rejected_before_any_request(
    wire: Wire, body: object, headers: object, error: type[Exception], match: str
) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller() as controller:
        with pytest.raises(error, match=match):
            await controller.invoke("t", body, headers=headers)  # type: ignore[arg-type]
    assert wire.gateway.invocations() == []


async def test_stream_sees_results_produced_after_it_was_created(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller() as controller:
        await controller.invoke("t", b"before")
        stream = controller.results()  # registered here, before any await
        await controller.submit("t", b"submitted")
        await controller.invoke("t", b"invoked")
        async with stream:
            with anyio.fail_after(5):
                first = await stream.receive()
                second = await stream.receive()
            assert stream.buffered == 0
    assert {first.body, second.body} == {b"submitted", b"invoked"}


async def test_every_stream_gets_every_result_and_ends_on_exit(wire: Wire) -> None:
    wire.gateway.add_function("a", topics="t")
    wire.gateway.add_function("b", topics="t")
    seen: dict[str, list[InvocationResult]] = {"one": [], "two": []}
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, wire.controller() as controller:

            async def consume(
                name: str,
                *,
                task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
            ) -> None:
                async with controller.results() as stream:
                    task_status.started()
                    async for result in stream:
                        seen[name].append(result)

            for name in seen:
                await tg.start(consume, name)
            for i in range(5):
                await controller.submit("t", str(i))
            # Leaving the controller ends both streams: the consumers finish by themselves.
    expected = sorted(str(i).encode() for i in range(5) for _ in "ab")
    for results in seen.values():
        assert sorted(r.body for r in results) == expected


async def test_closed_stream_unsubscribes_at_once(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with wire.controller(result_buffer=1) as controller:
        async with controller.results():
            pass
        # With a buffer of 1 nobody reads, but the stream is closed: nothing is held back.
        with anyio.fail_after(5):
            for _ in range(5):
                await controller.invoke("t", b"x")


async def test_full_stream_holds_invocations_back_and_drops_nothing(wire: Wire) -> None:
    wire.gateway.add_function("echo", topics="t")
    async with (
        wire.controller(result_buffer=2, max_concurrency=4) as controller,
        controller.results() as stream,
        anyio.create_task_group() as tg,
    ):
        for i in range(20):
            tg.start_soon(controller.invoke, "t", str(i))
        await anyio.sleep(0.3)
        # 2 buffered + 4 slots blocked publishing: the rest were held back.
        assert len(wire.gateway.invocations()) <= 6
        assert controller.stats().in_flight == 4
        with anyio.fail_after(5):
            received = [await stream.receive() for _ in range(20)]
    assert sorted(int(r.body) for r in received) == list(range(20))


async def test_exit_drains_submitted_invocations(wire: Wire) -> None:
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.set_fault("slow", latency=0.2)
    async with wire.controller(drain_timeout=5) as controller:
        stream = controller.results()
        for i in range(10):
            assert await controller.submit("t", str(i)) == 1
    async with stream:
        results = [r async for r in stream]
    assert len(results) == 10
    assert all(r.ok for r in results)
    assert controller.stats().invocations_succeeded == 10


async def test_exit_after_drain_timeout_cancels_with_one_result_each(wire: Wire) -> None:
    wire.gateway.add_function("stuck", topics="t")
    wire.gateway.add_function("stuck2", topics="t")
    wire.gateway.set_fault("stuck", latency=30)
    wire.gateway.set_fault("stuck2", latency=30)
    with anyio.fail_after(10):
        async with wire.controller(drain_timeout=0.2, max_concurrency=3) as controller:
            stream = controller.results()
            # Two messages, two functions each, three slots: the fourth invocation waits.
            assert await controller.submit("t", b"0") == 2
            assert await controller.submit("t", b"1") == 2
    async with stream:
        results = [r async for r in stream]
    assert sorted((r.function, r.body) for r in results) == sorted(
        (f, b"") for f in ("stuck.openfaas-fn", "stuck2.openfaas-fn") for _ in "01"
    )
    assert all(isinstance(r.error, InvocationCancelledError) for r in results)
    # three were on the wire when cancelled, the fourth never started
    assert sorted(r.attempts for r in results) == [0, 1, 1, 1]
    assert controller.stats().in_flight == 0


async def test_cancelling_invoke_cancels_its_requests(wire: Wire) -> None:
    wire.gateway.add_function("slow", topics="t")
    wire.gateway.add_function("slow2", topics="t")
    wire.gateway.set_fault("slow", latency=10)
    wire.gateway.set_fault("slow2", latency=10)
    async with wire.controller() as controller:
        with anyio.move_on_after(0.2) as scope:
            await controller.invoke("t", b"x")
        assert scope.cancelled_caught
        assert controller.stats().in_flight == 0
        wire.gateway.clear_fault("slow")
        wire.gateway.clear_fault("slow2")
        results = await controller.invoke("t", b"y")
        assert [r.ok for r in results] == [True, True]


async def test_stats_count_what_happened(wire: Wire) -> None:
    wire.gateway.add_function("good", topics="t")
    wire.gateway.add_function("bad", topics="t")
    wire.gateway.set_fault("bad", status=500)
    async with wire.controller() as controller:
        await controller.invoke("t", b"x")
        await controller.invoke("t", b"x")
        stats = controller.stats()
    assert stats.messages == 2
    assert stats.invocations_started == 4
    assert stats.invocations_succeeded == 2
    assert stats.invocations_failed == 2
    assert stats.in_flight == 0
    assert stats.topics == 1
    assert stats.functions == 2
    assert stats.refreshes == 1
    assert stats.refresh_failures == 0
    as_json = json.loads(json.dumps(stats.as_dict()))
    assert as_json["invocations_failed"] == 2
    assert as_json["last_refresh"] == stats.last_refresh.isoformat()  # type: ignore[union-attr]


def test_config_is_kept_and_repr_hides_nothing_secret() -> None:
    from aioconnector import BasicAuth

    config = ControllerConfig(
        gateway_url="http://127.0.0.1:8080", credentials=BasicAuth("u", "topsecret")
    )
    controller = AsyncController(config)
    assert controller.config is config
    assert "topsecret" not in repr(config)


async def test_an_error_inside_a_fan_out_cancels_the_other_invocations(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while invoking one function (here: a failing hub) surfaces from invoke() as
    itself; the fan-out's other invocations are cancelled and awaited, their slots returned."""
    for name in ("a", "b", "c"):
        wire.gateway.add_function(name, topics="t")
    wire.gateway.set_fault("a", latency=10)
    wire.gateway.set_fault("b", latency=10)
    async with wire.controller() as controller, controller.results():
        hub = controller._hub  # publishes: a stream subscribes
        publish = hub.publish

        async def failing_for_c(result: InvocationResult) -> None:
            if result.function.startswith("c"):
                raise RuntimeError("publishing failed")
            await publish(result)

        monkeypatch.setattr(hub, "publish", failing_for_c)
        with anyio.fail_after(5), pytest.raises(RuntimeError, match="publishing failed"):
            await controller.invoke("t", b"x")
        assert controller.stats().in_flight == 0  # a and b were cancelled, not left running
        monkeypatch.setattr(hub, "publish", publish)
        wire.gateway.clear_fault("a")
        wire.gateway.clear_fault("b")
        results = await controller.invoke("t", b"y")
    assert [r.ok for r in results] == [True, True, True]
