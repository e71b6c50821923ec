"""Per-function policy (pure): annotations over the config, and the policy's config classes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioconnector import (
    AdaptiveConcurrency,
    ControllerConfig,
    FunctionPolicy,
    RetryBudget,
    RetryPolicy,
)
from aioconnector._policy import (
    ATTEMPTS,
    CODES,
    IDEMPOTENT,
    MAX_CONCURRENCY,
    MAX_WAIT,
    MIN_WAIT,
    POLICY_ANNOTATIONS,
    TIMEOUT,
    policy_from_annotations,
)

# The config's values, all unlike the defaults, so a test can tell which one applied.
RETRY = RetryPolicy(
    attempts=4, initial_delay=0.3, max_delay=7.0, statuses={500}, retry_on_timeout=False
)
TIMEOUT_S = 12.5
FN = "fn.openfaas-fn"


def policy(annotations: dict[str, str]) -> tuple[FunctionPolicy, tuple[str, ...]]:
    return policy_from_annotations(FN, annotations, retry=RETRY, timeout=TIMEOUT_S)


def test_no_annotations_is_the_config() -> None:
    got, problems = policy({})
    assert problems == ()
    assert got == FunctionPolicy(
        function=FN, retry=RETRY, max_concurrency=None, timeout=TIMEOUT_S, idempotent=False
    )
    assert got.annotations == {}


def test_every_annotation_applied() -> None:
    given_annotations = {
        ATTEMPTS: "6",
        CODES: "429, 503 ,504",
        MIN_WAIT: "250ms",
        MAX_WAIT: "1m30s",
        MAX_CONCURRENCY: "4",
        TIMEOUT: "2s",
        IDEMPOTENT: "true",
    }
    got, problems = policy(given_annotations)
    assert problems == ()
    assert got.retry.attempts == 6
    assert got.retry.statuses == {429, 503, 504}
    assert got.retry.initial_delay == 0.25
    assert got.retry.max_delay == 90.0
    assert got.retry.retry_on_timeout is True
    assert (got.max_concurrency, got.timeout, got.idempotent) == (4, 2.0, True)
    # What the annotations do not set stays the config's.
    assert (got.retry.multiplier, got.retry.budget, got.retry.jitter) == (
        RETRY.multiplier,
        RETRY.budget,
        RETRY.jitter,
    )
    assert got.annotations == given_annotations


# (annotation, text, what the policy then says)
VALID: list[tuple[str, str, Callable[[FunctionPolicy], object], object]] = [
    (ATTEMPTS, "1", lambda p: p.retry.attempts, 1),
    (ATTEMPTS, " 12 ", lambda p: p.retry.attempts, 12),
    (CODES, "429", lambda p: p.retry.statuses, {429}),
    (CODES, "429,502", lambda p: p.retry.statuses, {429, 502}),
    (CODES, "429 502\t504", lambda p: p.retry.statuses, {429, 502, 504}),
    (CODES, ",500,", lambda p: p.retry.statuses, {500}),
    (MIN_WAIT, "0", lambda p: p.retry.initial_delay, 0.0),
    (MIN_WAIT, "100ms", lambda p: p.retry.initial_delay, 0.1),
    (MIN_WAIT, "1.5", lambda p: p.retry.initial_delay, 1.5),  # plain seconds
    (MAX_WAIT, "2m", lambda p: p.retry.max_delay, 120.0),
    (MAX_WAIT, "1h", lambda p: p.retry.max_delay, 3600.0),
    (MAX_CONCURRENCY, "1", lambda p: p.max_concurrency, 1),
    (MAX_CONCURRENCY, "250", lambda p: p.max_concurrency, 250),
    (TIMEOUT, "0", lambda p: p.timeout, None),  # 0: no timeout, as in Go
    (TIMEOUT, "0s", lambda p: p.timeout, None),
    (TIMEOUT, "200ms", lambda p: p.timeout, 0.2),
    (TIMEOUT, "5m", lambda p: p.timeout, 300.0),
    (IDEMPOTENT, "true", lambda p: (p.idempotent, p.retry.retry_on_timeout), (True, True)),
    (IDEMPOTENT, "Yes", lambda p: (p.idempotent, p.retry.retry_on_timeout), (True, True)),
    (IDEMPOTENT, "1", lambda p: (p.idempotent, p.retry.retry_on_timeout), (True, True)),
    (IDEMPOTENT, "false", lambda p: (p.idempotent, p.retry.retry_on_timeout), (False, False)),
    (IDEMPOTENT, "off", lambda p: (p.idempotent, p.retry.retry_on_timeout), (False, False)),
]


@pytest.mark.parametrize(("name", "text", "read", "expected"), VALID)
def test_valid_annotation(
    name: str, text: str, read: Callable[[FunctionPolicy], object], expected: object
) -> None:
    got, problems = policy({name: text})
    assert problems == ()
    assert read(got) == expected
    assert got.annotations == {name: text}


def test_idempotent_false_keeps_the_configs_retry_on_timeout() -> None:
    brave = RetryPolicy(retry_on_timeout=True)
    got, problems = policy_from_annotations(
        FN, {IDEMPOTENT: "false"}, retry=brave, timeout=TIMEOUT_S
    )
    assert problems == ()
    assert got.idempotent is False
    assert got.retry.retry_on_timeout is True  # the annotation adds, never takes away


def test_timeout_annotation_over_no_config_timeout() -> None:
    got, _ = policy_from_annotations(FN, {TIMEOUT: "3s"}, retry=RETRY, timeout=None)
    assert got.timeout == 3.0
    got, _ = policy_from_annotations(FN, {}, retry=RETRY, timeout=None)
    assert got.timeout is None


# What each annotation sets, read from a policy: an invalid one leaves the config's value.
CONFIG_VALUE: dict[str, tuple[Callable[[FunctionPolicy], object], object]] = {
    ATTEMPTS: (lambda p: p.retry.attempts, RETRY.attempts),
    CODES: (lambda p: p.retry.statuses, RETRY.statuses),
    MIN_WAIT: (lambda p: p.retry.initial_delay, RETRY.initial_delay),
    MAX_WAIT: (lambda p: p.retry.max_delay, RETRY.max_delay),
    MAX_CONCURRENCY: (lambda p: p.max_concurrency, None),
    TIMEOUT: (lambda p: p.timeout, TIMEOUT_S),
    IDEMPOTENT: (lambda p: (p.idempotent, p.retry.retry_on_timeout), (False, False)),
}

INVALID = [
    (ATTEMPTS, "0"),
    (ATTEMPTS, "-1"),
    (ATTEMPTS, "1.5"),
    (ATTEMPTS, "three"),
    (ATTEMPTS, ""),
    (ATTEMPTS, "\u0663"),  # an Arabic-Indic digit: int() takes it, a status code must not
    (CODES, ""),
    (CODES, " , "),
    (CODES, "600"),
    (CODES, "99"),
    (CODES, "429;503"),
    (CODES, "429,abc"),
    (CODES, "4290"),
    (MIN_WAIT, "-1s"),
    (MIN_WAIT, "soon"),
    (MIN_WAIT, "10 s"),
    (MAX_WAIT, ""),
    (MAX_WAIT, "1d"),
    (MAX_CONCURRENCY, "0"),
    (MAX_CONCURRENCY, "-4"),
    (MAX_CONCURRENCY, "many"),
    (MAX_CONCURRENCY, "4.0"),
    (TIMEOUT, "-5s"),
    (TIMEOUT, "forever"),
    (IDEMPOTENT, "maybe"),
    (IDEMPOTENT, ""),
]


@pytest.mark.parametrize(("name", "text"), INVALID)
def test_invalid_annotation_is_reported_and_the_config_applies(name: str, text: str) -> None:
    got, problems = policy({name: text})
    read, config_value = CONFIG_VALUE[name]
    assert read(got) == config_value
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}={text!r}: ")
    assert name not in got.annotations


def test_one_invalid_annotation_leaves_the_others_applied() -> None:
    got, problems = policy({ATTEMPTS: "zero", MAX_CONCURRENCY: "3", CODES: "503", TIMEOUT: "x"})
    assert [p.split("=")[0] for p in problems] == [ATTEMPTS, TIMEOUT]
    assert got.retry.attempts == RETRY.attempts
    assert got.retry.statuses == {503}
    assert got.max_concurrency == 3
    assert got.timeout == TIMEOUT_S
    assert got.annotations == {MAX_CONCURRENCY: "3", CODES: "503"}


def test_other_annotations_are_ignored() -> None:
    got, problems = policy({"topic": "orders", "com.openfaas.scale.max": "nope", "x": ""})
    assert problems == ()
    assert got == policy({})[0]


def test_policy_annotations_are_the_seven_documented() -> None:
    assert {
        "com.openfaas.retry.attempts",
        "com.openfaas.retry.codes",
        "com.openfaas.retry.min_wait",
        "com.openfaas.retry.max_wait",
        "com.aioconnector.max_concurrency",
        "com.aioconnector.timeout",
        "com.aioconnector.idempotent",
    } == POLICY_ANNOTATIONS


PLAUSIBLE = st.sampled_from(
    [
        "0", "1", "5", " 3 ", "-1", "1.5", "429,503", "429 502", "600", "100ms", "1m30s",
        "-1s", "true", "false", "yes", "maybe", "", "9" * 100, "9" * 99 + "h", "\u00b5s",
    ]
)  # fmt: skip
VALUES = st.one_of(st.text(max_size=30), PLAUSIBLE, st.integers().map(str))
NAMES = st.one_of(st.sampled_from(sorted(POLICY_ANNOTATIONS)), st.text(max_size=20))


@given(st.dictionaries(NAMES, VALUES, max_size=10))
def test_any_annotations_give_a_policy_and_name_each_invalid_one(
    annotations: dict[str, str],
) -> None:
    got, problems = policy(annotations)
    assert got.function == FN
    # Every problem names one given policy annotation, at the start of its message.
    named = [p.split("=", 1)[0] for p in problems]
    assert len(named) == len(set(named))
    assert set(named) <= POLICY_ANNOTATIONS & set(annotations)
    for name in POLICY_ANNOTATIONS & set(annotations):
        read, config_value = CONFIG_VALUE[name]
        if name in named:  # invalid: the config's value applies, nothing else
            assert name not in got.annotations
            assert read(got) == config_value
        else:  # valid: applied as given
            assert got.annotations[name] == annotations[name]
    assert set(got.annotations) == (POLICY_ANNOTATIONS & set(annotations)) - set(named)
    if got.max_concurrency is not None:
        assert got.max_concurrency >= 1
    assert got.timeout is None or (math.isfinite(got.timeout) and got.timeout > 0)


# -- AdaptiveConcurrency and RetryBudget -----------------------------------------------------


def test_adaptive_defaults() -> None:
    adaptive = AdaptiveConcurrency()
    assert (adaptive.initial, adaptive.min, adaptive.max) == (8, 1, None)
    assert (adaptive.decrease, adaptive.hold, adaptive.max_hold) == (0.9, 16, 1024)
    budget = RetryBudget()
    assert (budget.ratio, budget.window, budget.minimum) == (0.2, 10.0, 100)


BAD_ADAPTIVE: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"initial": 0}, ValueError, "^initial must be an int >= 1"),
    ({"initial": 2.5}, TypeError, "^initial "),
    ({"initial": True}, TypeError, "^initial "),
    ({"min": 0}, ValueError, "^min "),
    ({"min": "1"}, TypeError, "^min "),
    ({"max": 0}, ValueError, "^max "),
    ({"max": 8.0}, TypeError, "^max "),
    ({"min": 4, "max": 3}, ValueError, r"^max \(3\) must be >= min \(4\)"),
    ({"decrease": 0}, ValueError, "^decrease must be a number > 0 and < 1"),
    ({"decrease": 1}, ValueError, "^decrease "),
    ({"decrease": 1.5}, ValueError, "^decrease "),
    ({"decrease": -0.5}, ValueError, "^decrease "),
    ({"decrease": math.nan}, ValueError, "^decrease "),
    ({"decrease": "0.5"}, TypeError, "^decrease "),
    ({"decrease": True}, TypeError, "^decrease "),
    ({"hold": -1}, ValueError, "^hold "),
    ({"hold": None}, TypeError, "^hold "),
    ({"max_hold": -1}, ValueError, "^max_hold "),
    ({"hold": 32, "max_hold": 16}, ValueError, r"^max_hold \(16\) must be >= hold \(32\)"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ADAPTIVE)
def test_bad_adaptive_values_name_the_field(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        AdaptiveConcurrency(**kwargs)


BAD_BUDGET: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"ratio": -0.1}, ValueError, "^ratio must be a number >= 0 and <= 1"),
    ({"ratio": 1.01}, ValueError, "^ratio "),
    ({"ratio": math.nan}, ValueError, "^ratio "),
    ({"ratio": "0.1"}, TypeError, "^ratio "),
    ({"ratio": False}, TypeError, "^ratio "),
    ({"window": 0}, ValueError, "^window must be a number of seconds > 0"),
    ({"window": -1}, ValueError, "^window "),
    ({"window": math.inf}, ValueError, "^window "),
    ({"window": math.nan}, ValueError, "^window "),
    ({"window": "10s"}, TypeError, "^window "),
    ({"window": True}, TypeError, "^window "),
    ({"minimum": -1}, ValueError, "^minimum must be an int >= 0"),
    ({"minimum": 1.0}, TypeError, "^minimum "),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_BUDGET)
def test_bad_budget_values_name_the_field(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RetryBudget(**kwargs)


def test_edge_values_are_accepted() -> None:
    adaptive = AdaptiveConcurrency(initial=1, min=1, max=1, decrease=0.01, hold=0, max_hold=0)
    assert adaptive.max == 1
    assert RetryBudget(ratio=0, minimum=0).ratio == 0
    assert RetryBudget(ratio=1, window=0.001).window == 0.001


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        AdaptiveConcurrency(8)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        RetryBudget(0.1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("adaptive_concurrency", True, TypeError),
        ("adaptive_concurrency", {"initial": 4}, TypeError),
        ("retry_budget", 0.2, TypeError),
        ("retry_budget", RetryPolicy(), TypeError),
        ("max_waiting", 0, ValueError),
        ("max_waiting", 1.5, TypeError),
        ("max_waiting", "10", TypeError),
    ],
)
def test_controller_config_checks_the_policy_fields(field: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=field):
        ControllerConfig(gateway_url="http://gw:8080", **{field: value})


def test_controller_config_policy_defaults() -> None:
    config = ControllerConfig(gateway_url="http://gw:8080")
    assert config.adaptive_concurrency is None  # opt-in
    assert config.retry_budget == RetryBudget()
    assert config.max_waiting == 1024
    off = ControllerConfig(gateway_url="http://gw:8080", retry_budget=None)
    assert off.retry_budget is None


# -- from the environment --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", AdaptiveConcurrency()),
        ("1", AdaptiveConcurrency()),
        (" ON ", AdaptiveConcurrency()),
        ("false", None),
        ("0", None),
        ("", None),  # blank: unset, the default
    ],
)
def test_env_adaptive_concurrency(text: str, expected: AdaptiveConcurrency | None) -> None:
    config = ControllerConfig.from_env({"adaptive_concurrency": text})
    assert config.adaptive_concurrency == expected


@pytest.mark.parametrize(("text", "expected"), [("10", 10), (" 1 ", 1), ("", 1024)])
def test_env_max_waiting(text: str, expected: int) -> None:
    assert ControllerConfig.from_env({"max_waiting": text}).max_waiting == expected


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("adaptive_concurrency", "maybe"),
        ("adaptive_concurrency", "2"),
        ("max_waiting", "0"),
        ("max_waiting", "-3"),
        ("max_waiting", "many"),
        ("max_waiting", "1.5"),
    ],
)
def test_env_bad_policy_values_name_the_variable(var: str, text: str) -> None:
    with pytest.raises(ValueError, match=f"^{var}: ") as info:
        ControllerConfig.from_env({var: text})
    assert text.strip() in str(info.value)


def test_env_overrides_win() -> None:
    adaptive = AdaptiveConcurrency(initial=2)
    config = ControllerConfig.from_env(
        {"adaptive_concurrency": "false", "max_waiting": "5"},
        adaptive_concurrency=adaptive,
        max_waiting=7,
    )
    assert (config.adaptive_concurrency, config.max_waiting) == (adaptive, 7)
