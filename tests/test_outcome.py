"""The outcome model: OutcomePolicy.decide (pure), OutcomeReason's bounds and fields, and
outcome_of within run_source's settle (asyncio and trio, FakeGateway in process)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio
import attrs
import pytest

from aioconnector import (
    AsyncController,
    ControllerConfig,
    InvocationFailure,
    InvocationResult,
    Outcome,
    OutcomeKind,
    OutcomePolicy,
    OutcomeReason,
    RetryPolicy,
    Settlement,
    SourceMessage,
    UpstreamStatusError,
    UpstreamTimeoutError,
    outcome_of,
    run_source,
)
from aioconnector.testing import FakeGateway

OK = InvocationResult(topic="t", function="good.openfaas-fn", status=200)
HTTP_500 = InvocationResult(
    topic="t",
    function="bad.openfaas-fn",
    status=500,
    error=UpstreamStatusError(500),
    attempts=3,
)
TIMED_OUT = InvocationResult(
    topic="t",
    function="slow.openfaas-fn",
    status=None,
    error=UpstreamTimeoutError("no answer within 30s"),
)


# -- the policy: a pure function of settlement, results and deliveries -----------------------


def test_ack_is_ack_whatever_the_deliveries() -> None:
    policy = OutcomePolicy(max_deliveries=2)
    for deliveries in (None, 1, 2, 50):
        outcome = policy.decide(Settlement.ACK, [OK], deliveries=deliveries)
        assert outcome == Outcome(kind=OutcomeKind.ACK, settlement=Settlement.ACK)


def test_a_failure_is_retried_with_a_growing_delay_then_dead_lettered() -> None:
    policy = OutcomePolicy(max_deliveries=4, retry_delay=0.5, backoff=3, max_retry_delay=4)
    outcomes = [policy.decide(Settlement.RETRY, [OK, HTTP_500], deliveries=n) for n in (1, 2, 3, 4)]
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3 + [OutcomeKind.DEAD_LETTER]
    assert [o.delay for o in outcomes] == [0.5, 1.5, 4.0, 0.0]  # 4.5 capped at 4
    reason = outcomes[-1].reason
    assert reason is not None
    assert (reason.cause, reason.deliveries, reason.failed) == ("failed", 4, 1)
    assert reason.failures == (
        InvocationFailure(
            function="bad.openfaas-fn",
            status=500,
            error="UpstreamStatusError",
            message="function answered HTTP 500",
            attempts=3,
        ),
    )
    assert outcomes[0].reason is not None  # a retry says why too (for logs)


def test_past_max_deliveries_is_still_a_dead_letter() -> None:
    """A broker may deliver more often than the policy allows (e.g. after a crash)."""
    outcome = OutcomePolicy(max_deliveries=3).decide(Settlement.RETRY, [HTTP_500], deliveries=9)
    assert outcome.kind is OutcomeKind.DEAD_LETTER


def test_unknown_deliveries_count_as_the_first() -> None:
    once = OutcomePolicy(max_deliveries=1)
    assert once.decide(Settlement.RETRY, [HTTP_500]).kind is OutcomeKind.DEAD_LETTER
    forever = OutcomePolicy(max_deliveries=None, retry_delay=2)
    for deliveries in (None, 1, 1000, 10**6):  # no limit; the delay stays bounded
        outcome = forever.decide(Settlement.RETRY, [HTTP_500], deliveries=deliveries)
        assert outcome.kind is OutcomeKind.RETRY
        assert 2 <= outcome.delay <= forever.max_retry_delay


def test_a_zero_delay_stays_zero() -> None:
    policy = OutcomePolicy(retry_delay=0)
    assert policy.decide(Settlement.RETRY, [HTTP_500], deliveries=3).delay == 0


@pytest.mark.parametrize("settlement", [Settlement.UNMATCHED, Settlement.INVALID])
def test_unroutable_messages_are_dead_lettered_or_dropped_at_once(settlement: Settlement) -> None:
    error = ValueError("topic must not be empty")
    for unroutable in (OutcomeKind.DEAD_LETTER, OutcomeKind.DROP):
        policy = OutcomePolicy(max_deliveries=5, unroutable=unroutable)
        outcome = policy.decide(settlement, (), deliveries=1, error=error, topic="x")
        assert outcome.kind is unroutable
        assert outcome.reason is not None
        assert outcome.reason.cause == settlement.value
        assert outcome.reason.topic == "x"


def test_unroutable_retry_is_retried_like_a_failure() -> None:
    policy = OutcomePolicy(max_deliveries=2, retry_delay=1, unroutable=OutcomeKind.RETRY)
    first = policy.decide(Settlement.UNMATCHED, deliveries=1)
    last = policy.decide(Settlement.UNMATCHED, deliveries=2)
    assert (first.kind, first.delay) == (OutcomeKind.RETRY, 1)
    assert last.kind is OutcomeKind.DEAD_LETTER
    assert last.reason is not None
    assert last.reason.cause == "unmatched"


def test_an_invalid_message_carries_its_error() -> None:
    error = TypeError("the envelope's topic must be a string, got 7")
    outcome = OutcomePolicy().decide(Settlement.INVALID, error=error, message_id="m1")
    assert outcome.reason is not None
    assert outcome.reason.summary == "invalid message: the envelope's topic must be a string, got 7"
    assert outcome.reason.fields() == {
        "dead_cause": "invalid",
        "dead_reason": "invalid message: the envelope's topic must be a string, got 7",
        "dead_message_id": "m1",
        "dead_error": "TypeError",
    }


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"max_deliveries": 0}, ValueError, "max_deliveries must be an int >= 1 or None"),
        ({"max_deliveries": 2.0}, TypeError, "max_deliveries must be an int"),
        ({"retry_delay": -1}, ValueError, "retry_delay must be a number of seconds >= 0"),
        ({"max_retry_delay": float("inf")}, ValueError, "max_retry_delay must be a number"),
        ({"backoff": 0.5}, ValueError, "backoff must be a number >= 1"),
        ({"unroutable": OutcomeKind.ACK}, ValueError, "unroutable must be"),
        ({"unroutable": "drop"}, ValueError, "unroutable must be"),
    ],
)
def test_a_bad_policy_says_what_is_wrong(
    changes: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        OutcomePolicy(**changes)  # type: ignore[arg-type]


def test_bad_decide_arguments() -> None:
    with pytest.raises(TypeError, match="settlement must be a Settlement"):
        OutcomePolicy().decide("ack")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deliveries must be an int >= 1"):
        OutcomePolicy().decide(Settlement.RETRY, [HTTP_500], deliveries=0)
    with pytest.raises(ValueError, match="an acknowledged message has no reason"):
        OutcomeReason.of(Settlement.ACK, [OK])


# -- the reason: what a dead letter carries, bounded -----------------------------------------


def test_the_fields_of_a_failure() -> None:
    reason = OutcomeReason.of(
        Settlement.RETRY, [OK, TIMED_OUT, HTTP_500], deliveries=5, topic="t", message_id="42"
    )
    assert reason.summary == ("slow.openfaas-fn: no answer within 30s; bad.openfaas-fn: HTTP 500")
    assert reason.fields() == {
        "dead_cause": "failed",
        "dead_reason": reason.summary,
        "dead_topic": "t",
        "dead_message_id": "42",
        "dead_deliveries": "5",
        "dead_function": "slow.openfaas-fn",  # the first that failed
        "dead_error": "UpstreamTimeoutError",
        "dead_attempts": "1",
        "dead_failed": "2",
    }
    assert set(reason.fields("x-dead-")) == {f"x-dead-{k[5:]}" for k in reason.fields()}


def test_unmatched_and_abandoned_summaries() -> None:
    unmatched = OutcomeReason.of(Settlement.UNMATCHED, topic="nobody")
    assert unmatched.summary == "no function subscribes to its topic"
    assert unmatched.fields()["dead_topic"] == "nobody"
    abandoned = OutcomeReason(cause="abandoned", detail="no connector finished it", deliveries=6)
    assert abandoned.summary == "no connector finished it"
    assert abandoned.fields()["dead_deliveries"] == "6"


def test_a_reason_is_bounded_and_one_line_whatever_the_results() -> None:
    huge = "x" * 100_000
    results = [
        InvocationResult(
            topic="t",
            function=f"f{n}.{huge}",
            status=None,
            error=UpstreamTimeoutError(f"line one\nline two\r\x00{huge}"),
        )
        for n in range(1000)
    ]
    reason = OutcomeReason.of(
        Settlement.RETRY, results, topic=f"t\n{huge}", message_id=huge, deliveries=3
    )
    assert reason.failed == 1000
    assert len(reason.failures) == 8
    fields = reason.fields()
    assert sum(len(k) + len(v) for k, v in fields.items()) < 4096
    assert all(value.isascii() and value.isprintable() for value in fields.values())
    assert fields["dead_topic"].startswith("t\\n")  # escaped, not cut at the newline
    assert fields["dead_reason"].endswith("...")
    invalid = OutcomeReason.of(Settlement.INVALID, error=ValueError(huge))
    assert len(invalid.summary) <= 1024


def test_a_reason_is_a_frozen_value() -> None:
    reason = OutcomeReason.of(Settlement.UNMATCHED)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        reason.cause = "failed"  # type: ignore[misc]
    with pytest.raises(ValueError, match="'cause' must be in"):
        OutcomeReason(cause="lost")  # type: ignore[arg-type]


# -- outcome_of within run_source --------------------------------------------------------------


@attrs.frozen
class Msg:
    id: int
    topic: str
    deliveries: int = 1


def convert(msg: Msg) -> SourceMessage:
    if not msg.topic:
        raise ValueError(f"message {msg.id} has no topic")
    return SourceMessage(topic=msg.topic, body=b"{}", message_id=f"m{msg.id}")


async def listed(items: Sequence[Msg]) -> AsyncIterator[Msg]:
    for item in items:
        yield item


async def test_outcome_of_within_settle_knows_the_message() -> None:
    gateway = FakeGateway()
    gateway.add_function("good", topics="orders,mixed")
    gateway.add_function("bad", topics="mixed")
    gateway.set_fault("bad", status=500)
    policy = OutcomePolicy(max_deliveries=3, retry_delay=1)
    items = [
        Msg(0, "orders"),
        Msg(1, "mixed", deliveries=1),
        Msg(2, "mixed", deliveries=3),
        Msg(3, "nobody"),
        Msg(4, ""),  # convert raises
        Msg(5, "bad\ntopic"),  # invoke raises
    ]
    outcomes: dict[int, Outcome] = {}

    async def settle(msg: Msg, settlement: Settlement, results: Sequence[InvocationResult]) -> None:
        outcomes[msg.id] = outcome_of(settlement, results, policy=policy, deliveries=msg.deliveries)

    config = ControllerConfig(gateway_url="http://gateway.test", retry=RetryPolicy.disabled())
    async with AsyncController(config, transport=gateway.transport()) as controller:
        with anyio.fail_after(10):
            stats = await run_source(controller, listed(items), convert=convert, settle=settle)

    kinds = {n: o.kind for n, o in outcomes.items()}
    assert kinds == {
        0: OutcomeKind.ACK,
        1: OutcomeKind.RETRY,
        2: OutcomeKind.DEAD_LETTER,
        3: OutcomeKind.DEAD_LETTER,
        4: OutcomeKind.DEAD_LETTER,
        5: OutcomeKind.DEAD_LETTER,
    }
    failed = outcomes[2].reason
    assert failed is not None
    assert failed.fields() == {
        "dead_cause": "failed",
        "dead_reason": "bad.openfaas-fn: HTTP 500",
        "dead_topic": "mixed",
        "dead_message_id": "m2",
        "dead_deliveries": "3",
        "dead_function": "bad.openfaas-fn",
        "dead_status": "500",
        "dead_error": "UpstreamStatusError",
        "dead_attempts": "1",
        "dead_failed": "1",
    }
    unmatched = outcomes[3].reason
    assert unmatched is not None
    assert (unmatched.cause, unmatched.topic, unmatched.message_id) == ("unmatched", "nobody", "m3")
    not_converted = outcomes[4].reason
    assert not_converted is not None
    assert not_converted.fields() == {
        "dead_cause": "invalid",
        "dead_reason": "invalid message: message 4 has no topic",
        "dead_deliveries": "1",
        "dead_error": "ValueError",
    }
    not_invoked = outcomes[5].reason
    assert not_invoked is not None
    assert (not_invoked.cause, not_invoked.error, not_invoked.topic) == (
        "invalid",
        "ValueError",
        "bad\\ntopic",
    )
    assert "control characters" in not_invoked.detail
    assert stats.outcomes == {
        OutcomeKind.ACK: 1,
        OutcomeKind.RETRY: 1,
        OutcomeKind.DEAD_LETTER: 4,
        OutcomeKind.DROP: 0,
    }


async def test_a_settle_without_outcome_of_counts_no_outcome() -> None:
    gateway = FakeGateway()
    gateway.add_function("good", topics="orders")
    settled: list[Settlement] = []

    async def settle(msg: Msg, settlement: Settlement, _: Sequence[InvocationResult]) -> None:
        settled.append(settlement)

    config = ControllerConfig(gateway_url="http://gateway.test")
    async with AsyncController(config, transport=gateway.transport()) as controller:
        stats = await run_source(
            controller, listed([Msg(0, "orders")]), convert=convert, settle=settle
        )
    assert settled == [Settlement.ACK]
    assert stats.settled[Settlement.ACK] == 1
    assert set(stats.outcomes.values()) == {0}


def test_outcome_of_outside_settle_decides_without_the_message() -> None:
    outcome = outcome_of(Settlement.INVALID, deliveries=2)
    assert outcome.kind is OutcomeKind.DEAD_LETTER  # the default policy
    assert outcome.reason is not None
    assert (outcome.reason.detail, outcome.reason.topic, outcome.reason.deliveries) == ("", None, 2)


# -- the connectors' --unroutable --------------------------------------------------------------


def test_each_connector_takes_the_unroutable_kinds_its_broker_can_do() -> None:
    from aioconnector.connectors import mqtt, nats, postgres, rabbitmq, redis
    from aioconnector.connectors._base import unroutable

    assert [unroutable(choice) for choice in ("dead-letter", "drop", "retry")] == [
        OutcomeKind.DEAD_LETTER,
        OutcomeKind.DROP,
        OutcomeKind.RETRY,
    ]
    for options in (nats.Options, redis.Options, rabbitmq.Options):
        assert options(unroutable="retry").unroutable == "retry"
    for final in (mqtt.Options, postgres.Options):  # no redelivery to retry with
        with pytest.raises(ValueError, match="unroutable must be one of dead-letter, drop"):
            final(unroutable="retry")
    with pytest.raises(ValueError, match="nats_unroutable: expected one of"):
        nats.CONNECTOR.settings({}, {"nats_unroutable": "later"})
