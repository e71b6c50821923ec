"""Per-function delivery policy: what a function declares, what the config gives, what applies.

Pure: no I/O, no clock. `FunctionPolicy` is the effective policy of one function, built by
`policy_from_annotations` from the function's annotations (read at each topic-map refresh)
over the controller's config. `AdaptiveConcurrency` and `RetryBudget` configure the runtime
state that `_lanes.Lane` keeps for each function.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import attrs

from ._parsing import parse_bool, parse_duration
from ._retry import RetryPolicy  # noqa: TC001 - at run time: FunctionPolicy's hints resolve

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ANNOTATION_PREFIX",
    "OPENFAAS_RETRY_PREFIX",
    "AdaptiveConcurrency",
    "FunctionPolicy",
    "RetryBudget",
    "policy_from_annotations",
]

#: Our own per-function annotations: ``com.aioconnector.max_concurrency`` and so on.
ANNOTATION_PREFIX = "com.aioconnector."
#: OpenFaaS Pro's queue-worker retry annotations, honoured here client-side.
OPENFAAS_RETRY_PREFIX = "com.openfaas.retry."

ATTEMPTS = OPENFAAS_RETRY_PREFIX + "attempts"
CODES = OPENFAAS_RETRY_PREFIX + "codes"
MIN_WAIT = OPENFAAS_RETRY_PREFIX + "min_wait"
MAX_WAIT = OPENFAAS_RETRY_PREFIX + "max_wait"
MAX_CONCURRENCY = ANNOTATION_PREFIX + "max_concurrency"
TIMEOUT = ANNOTATION_PREFIX + "timeout"
IDEMPOTENT = ANNOTATION_PREFIX + "idempotent"

#: Every annotation the policy reads; the topic map keeps only these of each function.
POLICY_ANNOTATIONS = frozenset({ATTEMPTS, CODES, MIN_WAIT, MAX_WAIT, MAX_CONCURRENCY, TIMEOUT})
POLICY_ANNOTATIONS |= {IDEMPOTENT}


def _int_at_least(low: int) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an int >= {low}, got {value!r}")
        if value < low:
            raise ValueError(f"{attribute.name} must be an int >= {low}, got {value!r}")

    return check


def _fraction(*, above_zero: bool, below_one: bool) -> Any:
    low, high = ("> 0" if above_zero else ">= 0"), ("< 1" if below_one else "<= 1")

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        message = f"{attribute.name} must be a number {low} and {high}, got {value!r}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(message)
        number = float(value)
        ok = (number > 0 if above_zero else number >= 0) and (
            number < 1 if below_one else number <= 1
        )
        if not ok:
            raise ValueError(message)

    return check


def _positive_seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    message = f"{attribute.name} must be a number of seconds > 0, got {value!r}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(message)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(message)


@attrs.frozen(kw_only=True)
class AdaptiveConcurrency:
    """Learn each function's capacity: a concurrency limit per function, found by AIMD.

    Each function starts at ``initial`` requests at once and grows by one per success while
    it uses at least half its limit (doubling each round trip), until its first overload
    signal (429, 502, 503, 504, a timeout, a refused connection), which halves it (slow start
    overshoots by up to twice the capacity, as in TCP). From then on each overload signal
    multiplies it by ``decrease`` (never below ``min``), and it grows by one per round trip of
    successes (``1/limit`` per success). Probing above a limit that was just refused waits ``hold``
    successes first, doubling after each refused probe (up to ``max_hold``): a function with
    a hard ``max_inflight`` is probed rarely, so it answers few 429s. One signal per round
    trip counts: answers to requests sent before the last decrease change nothing.

    ``max`` caps every function's limit (``None``: ``max_concurrency``), and the global
    ``max_concurrency`` stays the bound for all functions together.
    """

    initial: int = attrs.field(default=8, validator=_int_at_least(1))
    """Each function's limit before anything was learnt."""
    min: int = attrs.field(default=1, validator=_int_at_least(1))
    """A function's limit never goes lower (it can always be probed)."""
    max: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_int_at_least(1))
    )
    """A function's limit never goes higher; ``None``: ``max_concurrency``."""
    decrease: float = attrs.field(default=0.9, validator=_fraction(above_zero=True, below_one=True))
    """The factor applied to the limit on an overload signal."""
    hold: int = attrs.field(default=16, validator=_int_at_least(0))
    """Successes to wait, after a decrease, before probing above the limit again."""
    max_hold: int = attrs.field(default=1024, validator=_int_at_least(0))
    """The longest ``hold`` grows to after repeated refused probes."""

    def __attrs_post_init__(self) -> None:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        if self.max_hold < self.hold:
            raise ValueError(f"max_hold ({self.max_hold}) must be >= hold ({self.hold})")


@attrs.frozen(kw_only=True)
class RetryBudget:
    """Retries of a function may add at most ``ratio`` of its first attempts, over ``window``.

    The Google SRE book's retry budget, per function: within any ``window`` seconds, retries
    are allowed while they number fewer than ``ratio`` x the first attempts in that window plus
    ``minimum`` (so a rarely called function can still retry). A failure that would exceed the
    budget is returned at once as the result. During an outage the load on the function is
    then at most ``1 + ratio`` times what it would be without retries.
    """

    ratio: float = attrs.field(default=0.2, validator=_fraction(above_zero=False, below_one=False))
    """Retries allowed per first attempt, over the window."""
    window: float = attrs.field(default=10.0, validator=_positive_seconds)
    """Seconds over which first attempts and retries are counted."""
    minimum: int = attrs.field(default=100, validator=_int_at_least(0))
    """Retries allowed in every window whatever the traffic (by default 10 a second, as
    Finagle's retry budget: a burst of failures on a quiet function is still retried)."""


@attrs.frozen(kw_only=True)
class FunctionPolicy:
    """How one function is invoked: the controller's config, overridden by its annotations."""

    function: str
    """The function's address (``name.namespace``)."""
    retry: RetryPolicy
    """Retries: ``RetryPolicy`` from the config, with the ``com.openfaas.retry.*`` annotations."""
    max_concurrency: int | None
    """At most this many requests at once (``com.aioconnector.max_concurrency``); ``None``:
    only the global ``max_concurrency`` (and the adaptive limit, when on)."""
    timeout: float | None
    """Seconds for a whole request (``com.aioconnector.timeout``, else ``upstream_timeout``)."""
    idempotent: bool
    """``com.aioconnector.idempotent``: the function may run twice for one message, so
    requests that may have reached it (timeouts, connections lost after sending) are retried."""
    annotations: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    """The policy annotations that were applied (invalid ones are left out)."""


def policy_from_annotations(
    function: str,
    annotations: Mapping[str, str],
    *,
    retry: RetryPolicy,
    timeout: float | None,
) -> tuple[FunctionPolicy, tuple[str, ...]]:
    """The function's effective policy, and one message per annotation that was invalid (and
    ignored: the config's value applies instead, as OpenFaaS's queue-worker does)."""
    problems: list[str] = []
    applied: dict[str, str] = {}
    changes: dict[str, Any] = {}

    def read(name: str, parse: Any) -> Any:
        text = annotations.get(name)
        if text is None:
            return None
        try:
            value = parse(text)
        except (ValueError, TypeError) as exc:
            problems.append(f"{name}={text!r}: {exc}")
            return None
        applied[name] = text
        return value

    attempts = read(ATTEMPTS, _parse_count)
    if attempts is not None:
        changes["attempts"] = attempts
    codes = read(CODES, _parse_codes)
    if codes is not None:
        changes["statuses"] = codes
    min_wait = read(MIN_WAIT, parse_duration)
    if min_wait is not None:
        changes["initial_delay"] = min_wait
    max_wait = read(MAX_WAIT, parse_duration)
    if max_wait is not None:
        changes["max_delay"] = max_wait
    idempotent = read(IDEMPOTENT, parse_bool)
    if idempotent:
        changes["retry_on_timeout"] = True
    # Every value was parsed into RetryPolicy's own ranges: evolve cannot refuse it.
    effective = attrs.evolve(retry, **changes) if changes else retry
    own_timeout = read(TIMEOUT, parse_duration)  # 0: no timeout, as upstream_timeout's "0"
    policy = FunctionPolicy(
        function=function,
        retry=effective,
        max_concurrency=read(MAX_CONCURRENCY, _parse_count),
        timeout=timeout if own_timeout is None else own_timeout or None,
        idempotent=bool(idempotent),
        annotations=applied,
    )
    return policy, tuple(problems)


def _parse_count(text: str) -> int:
    if re.fullmatch(r"\s*[0-9]+\s*", text) is None or int(text) < 1:
        raise ValueError("must be a whole number >= 1")
    return int(text)


def _parse_codes(text: str) -> frozenset[int]:
    parts = [part for part in re.split(r"[\s,]+", text) if part]
    if not parts or not all(re.fullmatch(r"[1-5][0-9][0-9]", part) for part in parts):
        raise ValueError("must be HTTP status codes separated by commas, e.g. 429,502")
    return frozenset(int(part) for part in parts)
