"""What becomes of a message at its source: one model for every broker.

``run_source`` settles each message with a :class:`Settlement`, from its results. Within
``settle``, :func:`outcome_of` turns that, and how many times the broker delivered the message,
into an :class:`Outcome` by one policy (:class:`OutcomePolicy`)::

    ACK          every matched function answered 2xx
    RETRY        an invocation failed before the last allowed delivery: redeliver after `delay`
                 (growing with each delivery)
    DEAD_LETTER  it failed on its last allowed delivery (max_deliveries), or no function
                 subscribes to its topic, or it is invalid (`unroutable`, at once): keep it aside
                 with its `reason`
    DROP         unmatched or invalid with unroutable=DROP: acknowledge it, log why, forget it

Each packaged connector maps an outcome to its broker (``docs/connectors.md``). An outcome's
:class:`OutcomeReason` says why (cause, function, status, error kind, attempts, deliveries),
bounded in size, and renders itself as the ``dead_*`` headers or fields of a dead letter.
"""

from __future__ import annotations

import contextvars
import enum
import math
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._results import InvocationResult

__all__ = [
    "Cause",
    "InvocationFailure",
    "Outcome",
    "OutcomeKind",
    "OutcomePolicy",
    "OutcomeReason",
    "Settlement",
    "outcome_of",
    "settlement_of",
]

# Bounds on what a reason carries: a dead letter's headers stay within a few KiB whatever the
# results (a topic fanned out to hundreds of functions, an exception quoting a whole payload).
MAX_FAILURES: Final = 8  # failed invocations described one by one
_MAX_TEXT: Final = 256  # a name, an id or a topic
_MAX_DETAIL: Final = 512  # an exception's message
_MAX_SUMMARY: Final = 1024  # the one-line summary (dead_reason)


class Settlement(enum.Enum):
    """What to do with a message at its source, decided from its results."""

    ACK = "ack"
    """Every matched function answered 2xx: acknowledge."""
    RETRY = "retry"
    """At least one invocation failed: negative-acknowledge so the broker redelivers."""
    UNMATCHED = "unmatched"
    """No function subscribes to the topic (even after refreshing a topic map older than a few
    seconds): terminate, dead-letter or drop, as you choose."""
    INVALID = "invalid"
    """The message could not be converted or invoked (e.g. a topic with control characters)."""


def settlement_of(results: Sequence[InvocationResult]) -> Settlement:
    """ACK when all results are ok, UNMATCHED when there are none, RETRY otherwise."""
    if not results:
        return Settlement.UNMATCHED
    return Settlement.ACK if all(r.ok for r in results) else Settlement.RETRY


class OutcomeKind(enum.Enum):
    """What a connector does with a message at its broker."""

    ACK = "ack"
    """Acknowledge: it is done."""
    RETRY = "retry"
    """Have the broker deliver it again, after :attr:`Outcome.delay` where the broker can."""
    DEAD_LETTER = "dead_letter"
    """Set it aside where the broker keeps dead letters, with its reason, and acknowledge it."""
    DROP = "drop"
    """Acknowledge it without delivering it anywhere (logged)."""


Cause = Literal["failed", "unmatched", "invalid", "abandoned"]
"""Why a message was not acknowledged: an invocation ``failed``; no function subscribes
(``unmatched``); it could not be converted or invoked (``invalid``); or it was delivered too
many times without ever being settled, e.g. it crashed every connector (``abandoned``)."""

_CAUSE_NAMES: Final = ("failed", "unmatched", "invalid", "abandoned")
_CAUSES: Final[dict[Settlement, Cause]] = {
    Settlement.RETRY: "failed",
    Settlement.UNMATCHED: "unmatched",
    Settlement.INVALID: "invalid",
}


def _printable(text: str) -> str:
    """Printable ASCII, the rest escaped (``\\n``, ``\\x01``, ``\\xe9``): a value stays one
    line, and one any broker's headers (or a parser of them) take as it is."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        c if c.isascii() and c.isprintable() else c.encode("unicode_escape").decode() for c in text
    )


def _clip(text: str, limit: int) -> str:
    # Cut before escaping (escaping only lengthens): an exception quoting a 100 KB payload
    # costs `limit` characters of work, not 100 K.
    text = _printable(text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip_text(text: str) -> str:
    return _clip(text, _MAX_TEXT)


def _clip_optional(text: str | None) -> str | None:
    return None if text is None else _clip(text, _MAX_TEXT)


def _clip_detail(text: str) -> str:
    return _clip(text, _MAX_DETAIL)


def _first_failures(
    failures: Sequence[InvocationFailure],
) -> tuple[InvocationFailure, ...]:
    return tuple(failures[:MAX_FAILURES])


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an int >= 1 or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class InvocationFailure:
    """One invocation that did not succeed, as a dead letter tells it."""

    function: str = attrs.field(converter=_clip_text)
    """The function's address on the gateway, ``name.namespace``."""
    status: int | None = None
    """The HTTP status it answered with; ``None`` when no answer came."""
    error: str | None = attrs.field(default=None, converter=_clip_optional)
    """The kind of error: the :class:`~aioconnector.InvocationError` subclass's name, e.g.
    ``UpstreamTimeoutError``."""
    message: str = attrs.field(default="", converter=_clip_detail)
    """The error's message (at most 512 characters)."""
    attempts: int = 1
    """Requests made for it (the controller's retries included)."""

    @classmethod
    def of(cls, result: InvocationResult) -> InvocationFailure:
        """The failure ``result`` reports (a result that is not ok)."""
        error = result.error
        return cls(
            function=result.function,
            status=result.status,
            error=None if error is None else type(error).__name__,
            message="" if error is None else str(error),
            attempts=result.attempts,
        )

    def __str__(self) -> str:
        if self.status is not None:
            return f"{self.function}: HTTP {self.status}"
        return f"{self.function}: {self.message or self.error or 'failed'}"


@attrs.frozen(kw_only=True)
class OutcomeReason:
    """Why a message was not acknowledged, bounded in size: a few KiB at most, whatever the
    results; texts are printable ASCII (anything else escaped, as ``\\n`` or ``\\xe9``) and
    clipped."""

    cause: Cause = attrs.field(validator=attrs.validators.in_(_CAUSE_NAMES))
    detail: str = attrs.field(default="", converter=_clip_detail)
    """``invalid``: the message of the error ``run_source`` caught; ``abandoned``: why."""
    error: str | None = attrs.field(default=None, converter=_clip_optional)
    """``invalid``: the type of the error ``run_source`` caught, e.g. ``ValueError``."""
    topic: str | None = attrs.field(default=None, converter=_clip_optional)
    message_id: str | None = attrs.field(default=None, converter=_clip_optional)
    deliveries: int | None = attrs.field(default=None, validator=_positive_or_none)
    """How many times the broker delivered it, this time included; ``None``: unknown."""
    failures: tuple[InvocationFailure, ...] = attrs.field(default=(), converter=_first_failures)
    """``failed``: the invocations that failed (the first :data:`MAX_FAILURES`)."""
    failed: int = 0
    """``failed``: how many invocations failed (may exceed ``len(failures)``)."""

    @classmethod
    def of(
        cls,
        settlement: Settlement,
        results: Sequence[InvocationResult] = (),
        *,
        deliveries: int | None = None,
        error: BaseException | None = None,
        topic: str | None = None,
        message_id: str | None = None,
    ) -> OutcomeReason:
        """Why a message settled ``settlement`` (not ACK) was not acknowledged; ``error``: what
        made it INVALID."""
        if settlement is Settlement.ACK:
            raise ValueError("an acknowledged message has no reason")
        failed = [r for r in results if not r.ok]
        failures = [InvocationFailure.of(r) for r in failed[:MAX_FAILURES]]
        return cls(
            cause=_CAUSES[settlement],
            detail="" if error is None else str(error),
            error=None if error is None else type(error).__name__,
            topic=topic,
            message_id=message_id,
            deliveries=deliveries,
            failures=failures,
            failed=len(failed),
        )

    @property
    def summary(self) -> str:
        """One line, at most 1024 characters: e.g. ``orders.openfaas-fn: HTTP 500``."""
        if self.cause == "unmatched":
            text = "no function subscribes to its topic"
        elif self.cause == "invalid":
            text = f"invalid message: {self.detail}" if self.detail else "invalid message"
        elif self.cause == "abandoned":
            text = self.detail or "delivered too many times without being settled"
        else:
            text = "; ".join(str(f) for f in self.failures) or "an invocation failed"
            if self.failed > len(self.failures):
                text += f"; and {self.failed - len(self.failures)} more"
        return _clip(text, _MAX_SUMMARY)

    def fields(self, prefix: str = "dead_") -> dict[str, str]:
        """The reason as headers (or stream fields), each name ``prefix`` + one of:

        ``cause`` (failed, unmatched, invalid, abandoned), ``reason`` (:attr:`summary`),
        ``topic``, ``message_id``, ``deliveries``; for a failure, the first failed invocation's
        ``function``, ``status``, ``error`` (kind) and ``attempts``, and ``failed`` (how many
        failed); for an invalid message, ``error``: the exception's type. Fields without a
        value are left out; every value is a str.
        """
        fields = {"cause": self.cause, "reason": self.summary}
        if self.topic is not None:
            fields["topic"] = self.topic
        if self.message_id is not None:
            fields["message_id"] = self.message_id
        if self.deliveries is not None:
            fields["deliveries"] = str(self.deliveries)
        if self.failures:
            first = self.failures[0]
            fields["function"] = first.function
            if first.status is not None:
                fields["status"] = str(first.status)
            if first.error is not None:
                fields["error"] = first.error
            fields["attempts"] = str(first.attempts)
            fields["failed"] = str(self.failed)
        elif self.error is not None:
            fields["error"] = self.error
        return {prefix + name: value for name, value in fields.items()}


@attrs.frozen(kw_only=True)
class Outcome:
    """What a connector does with one message at its broker; see :class:`OutcomePolicy`."""

    kind: OutcomeKind
    settlement: Settlement
    """The settlement it was decided from."""
    delay: float = 0.0
    """RETRY: seconds before the broker should deliver it again (where it can delay)."""
    reason: OutcomeReason | None = None
    """Why it was not acknowledged; ``None`` for ACK."""


_ACK: Final = Outcome(kind=OutcomeKind.ACK, settlement=Settlement.ACK)  # the usual one, made once


def _delay(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, got {value!r}")


def _backoff(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"backoff must be a number >= 1, got {value!r}")
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(f"backoff must be a number >= 1, got {value!r}")


_UNROUTABLE: Final = (OutcomeKind.DEAD_LETTER, OutcomeKind.DROP, OutcomeKind.RETRY)


def _unroutable(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _UNROUTABLE:
        raise ValueError(
            f"unroutable must be OutcomeKind.DEAD_LETTER, DROP or RETRY, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class OutcomePolicy:
    """How a settlement becomes an outcome, the same for every broker.

    - ACK: ACK.
    - RETRY (an invocation failed): RETRY after ``retry_delay * backoff ** (deliveries - 1)``
      seconds (at most ``max_retry_delay``) while ``deliveries < max_deliveries``; on the last
      allowed delivery, DEAD_LETTER.
    - UNMATCHED and INVALID: ``unroutable`` at once (DEAD_LETTER by default, or DROP), or,
      with ``unroutable=RETRY``, the same as a failure.

    ``deliveries`` is how many times the broker delivered the message, this time included; a
    broker that does not count gives ``None``, taken as 1 (so ``max_deliveries=1`` dead-letters
    every failure at once, and a larger one never dead-letters a failure).
    """

    max_deliveries: int | None = attrs.field(default=5, validator=_positive_or_none)
    """Deliveries a failing message gets, the first included; ``None``: no limit (the broker's
    own, if it has one)."""
    retry_delay: float = attrs.field(default=1.0, validator=_delay)
    """Seconds before the first redelivery."""
    backoff: float = attrs.field(default=2.0, validator=_backoff)
    """What each further redelivery's delay is multiplied by."""
    max_retry_delay: float = attrs.field(default=60.0, validator=_delay)
    unroutable: OutcomeKind = attrs.field(default=OutcomeKind.DEAD_LETTER, validator=_unroutable)
    """What becomes of an unmatched or invalid message: DEAD_LETTER, DROP, or RETRY."""

    def delay(self, deliveries: int) -> float:
        """Seconds before redelivering a message delivered ``deliveries`` times."""
        if self.retry_delay == 0:
            return 0.0
        try:
            grown = self.retry_delay * float(self.backoff) ** (max(deliveries, 1) - 1)
        except OverflowError:  # delivered thousands of times
            return float(self.max_retry_delay)
        return float(min(grown, self.max_retry_delay))

    def decide(
        self,
        settlement: Settlement,
        results: Sequence[InvocationResult] = (),
        *,
        deliveries: int | None = None,
        error: BaseException | None = None,
        topic: str | None = None,
        message_id: str | None = None,
    ) -> Outcome:
        """The outcome of a message settled ``settlement`` with ``results``, delivered
        ``deliveries`` times; ``error`` (what made it INVALID), ``topic`` and ``message_id`` go
        into its reason."""
        if not isinstance(settlement, Settlement):
            raise TypeError(f"settlement must be a Settlement, got {settlement!r}")
        if settlement is Settlement.ACK:
            return _ACK
        count = 1 if deliveries is None else deliveries
        reason = OutcomeReason.of(
            settlement,
            results,
            deliveries=deliveries,
            error=error,
            topic=topic,
            message_id=message_id,
        )
        kind = OutcomeKind.RETRY if settlement is Settlement.RETRY else self.unroutable
        if kind is OutcomeKind.RETRY:
            if self.max_deliveries is not None and count >= self.max_deliveries:
                kind = OutcomeKind.DEAD_LETTER
            else:
                delay = self.delay(count)
                return Outcome(kind=kind, settlement=settlement, delay=delay, reason=reason)
        return Outcome(kind=kind, settlement=settlement, reason=reason)


@attrs.define
class Settling:
    """What ``run_source`` knows of the message it is settling: within ``with Settling(...)``
    (its call of ``settle``), :func:`outcome_of` reads it, and notes the outcome it decided."""

    error: BaseException | None = None  # what made it INVALID
    topic: str | None = None
    message_id: str | None = None
    outcome: Outcome | None = None  # what outcome_of decided, counted in SourceStats
    _token: contextvars.Token[Settling | None] | None = attrs.field(default=None, repr=False)

    def __enter__(self) -> Settling:
        self._token = _SETTLING.set(self)
        return self

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _SETTLING.reset(self._token)


_SETTLING: contextvars.ContextVar[Settling | None] = contextvars.ContextVar(
    "aioconnector_settling", default=None
)


_DEFAULT_POLICY: Final = OutcomePolicy()


def outcome_of(
    settlement: Settlement,
    results: Sequence[InvocationResult] = (),
    *,
    policy: OutcomePolicy = _DEFAULT_POLICY,
    deliveries: int | None = None,
) -> Outcome:
    """The outcome of the message being settled, by ``policy`` (:meth:`OutcomePolicy.decide`).

    Call it within a ``settle`` callback of :func:`run_source`, with the arguments ``settle``
    got and how many times the broker delivered the message: its reason then carries the
    message's topic and id and, for INVALID, the error ``run_source`` caught (which it also
    logs), and the outcome is counted in ``SourceStats.outcomes``. Called elsewhere, the reason
    lacks those.
    """
    current = _SETTLING.get()
    if current is None:
        return policy.decide(settlement, results, deliveries=deliveries)
    outcome = policy.decide(
        settlement,
        results,
        deliveries=deliveries,
        error=current.error,
        topic=current.topic,
        message_id=current.message_id,
    )
    current.outcome = outcome
    return outcome
