"""Wildcard topics (``topic_matching``): each dialect's rules, against an oracle of its own."""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

import pytest
from aiomqtt import Topic
from hypothesis import given
from hypothesis import strategies as st

from aioconnector import ControllerConfig
from aioconnector import _topics as topics_module
from aioconnector._cli import _parser
from aioconnector._message import topic_problem
from aioconnector._topics import TopicMap, WildcardTopicMap, parse_functions
from aioconnector._wildcards import dialect_of
from aioconnector.connectors._settings import controller_config

from .helpers import Wire


def build(matching: str, *routes: tuple[str, str]) -> TopicMap:
    """A map of ``(function, topic)`` pairs."""
    return TopicMap.build([(f, [t]) for f, t in routes], matching=matching)


def matches(matching: str, pattern: str, topic: str) -> bool:
    return build(matching, ("f", pattern)).functions_for(topic) == ("f",)


# -- each dialect's rules, case by case ------------------------------------------------------

NATS = [
    ("orders.*", "orders.created", True),
    ("orders.*", "orders", False),
    ("orders.*", "orders.created.eu", False),
    ("orders.>", "orders.created", True),
    ("orders.>", "orders.created.eu", True),
    ("orders.>", "orders", False),  # ">" is one or more
    (">", "orders", True),
    (">", "a.b.c", True),
    ("*", "orders", True),
    ("*", "a.b", False),
    ("*.created", "orders.created", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("*.*.>", "a.b", False),
    ("*.*.>", "a.b.c", True),
    ("orders.#", "orders.created", False),  # not nats's: a literal token "#"
    ("orders.#", "orders.#", True),
    ("$SYS.>", "$SYS.x", True),
    (">", "$SYS.x", True),  # no "$" rule in nats
]

MQTT = [
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/+", "a/", True),  # an empty level is a level
    ("a/#", "a", True),  # "#" includes the parent level
    ("a/#", "a/b", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("#", "a/b", True),
    ("#", "/", True),
    ("+/+", "/", True),
    ("+", "/a", False),
    ("/+", "/a", True),
    ("+/b/#", "a/b", True),
    ("+/b/#", "a/c", False),
    ("#", "$SYS/x", False),  # "$" topics: no wildcard at the first level
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("a/#", "a/$x", True),  # only the first level counts
    ("a.*", "a.b", False),  # not mqtt's: a literal
]

AMQP = [
    ("orders.*", "orders.created", True),
    ("orders.*", "orders", False),
    ("orders.#", "orders", True),  # "#" is zero or more
    ("orders.#", "orders.a.b", True),
    ("#", "a", True),
    ("#.created", "created", True),
    ("#.created", "orders.eu.created", True),
    ("#.created", "orders.created.eu", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y", False),
    ("#.a.#", "x.a.y", True),
    ("#.a.#", "x.b.y", False),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("#.#", "a.b.c", True),
    ("a.*", "a.", True),  # an empty word is a word
    ("orders.>", "orders.x", False),  # not amqp's: a literal token ">"
    ("#", "$SYS.x", True),
]


@pytest.mark.parametrize(("matching", "cases"), [("nats", NATS), ("mqtt", MQTT), ("amqp", AMQP)])
def test_dialect_rules(matching: str, cases: list[tuple[str, str, bool]]) -> None:
    wrong = [(p, t, want) for p, t, want in cases if matches(matching, p, t) is not want]
    assert wrong == []


@pytest.mark.parametrize(
    ("matching", "pattern", "why"),
    [
        ("nats", "a.>.b", "'>' before its last token"),
        ("nats", "a*", "inside the token 'a*'"),
        ("nats", "a.b>", "inside the token 'b>'"),
        ("nats", "a..*", "an empty token"),
        ("nats", "*.", "an empty token"),
        ("mqtt", "a/#/b", "'#' before its last token"),
        ("mqtt", "a#", "inside the token 'a#'"),
        ("mqtt", "a/b+", "inside the token 'b+'"),
        ("mqtt", "#/", "'#' before its last token"),
        ("amqp", "a#", "inside the token 'a#'"),
        ("amqp", "a.*b", "inside the token '*b'"),
    ],
)
def test_invalid_patterns_are_refused(matching: str, pattern: str, why: str) -> None:
    dialect = dialect_of(matching)
    assert dialect is not None
    steps, problem = dialect.compile(pattern)
    assert steps is None
    assert problem is not None
    assert why in problem
    assert matching in problem
    with pytest.raises(ValueError, match=re.escape(why)):
        build(matching, ("fn", pattern))


def test_wildcard_characters_stay_valid_topics() -> None:
    # topic_problem (what invoke() checks) is the same in every dialect: "#" and "+" are ASCII.
    for topic in ("orders.*", "orders.>", "a/+/b", "a/#", "#", "+", "a#"):
        assert topic_problem(topic) is None


def test_exact_matching_is_todays_map() -> None:
    topic_map = build("exact", ("f", "orders.*"), ("g", "a/#"))
    assert type(topic_map) is TopicMap
    assert topic_map.matching == "exact"
    assert topic_map.functions_for("orders.created") == ()
    assert topic_map.functions_for("orders.*") == ("f",)  # a literal topic, as in OpenFaaS
    assert topic_map.functions_for("a") == ()


def test_unknown_matching_is_refused() -> None:
    with pytest.raises(ValueError, match="topic_matching must be one of exact, nats, mqtt, amqp"):
        TopicMap.build([], matching="redis")
    with pytest.raises(ValueError, match="topic_matching must be one of"):
        parse_functions("[]", namespace=None, delimiter=",", matching="NATS")


def test_plain_topics_also_reach_the_patterns_that_match_them() -> None:
    topic_map = build(
        "nats",
        ("audit", "orders.>"),
        ("created", "orders.created"),
        ("any", "orders.*"),
        ("both", "orders.created"),
        ("both", "orders.*"),  # the same function twice: invoked once
        ("other", "payments"),
    )
    assert isinstance(topic_map, WildcardTopicMap)
    assert topic_map.matching == "nats"
    assert topic_map.functions_for("orders.created") == ("any", "audit", "both", "created")
    assert topic_map.functions_for("orders.deleted") == ("any", "audit", "both")
    assert topic_map.functions_for("orders.a.b") == ("audit",)
    assert topic_map.functions_for("payments") == ("other",)
    assert topic_map.functions_for("nobody") == ()
    # What was declared, as written: the patterns are listed, not expanded.
    assert topic_map.topics() == {"orders.>", "orders.created", "orders.*", "payments"}
    assert topic_map.as_dict()["orders.*"] == ("any", "both")
    assert topic_map.addresses() == {"audit", "created", "any", "both", "other"}
    assert topic_map.function_count == 5
    assert "patterns=2" in repr(topic_map)
    # A pattern given as a message topic is plain text: "*" is one token like any other.
    assert topic_map.functions_for("orders.*") == ("any", "audit", "both")


def test_the_cache_stays_bounded_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics_module, "MATCH_CACHE_SIZE", 8)
    topic_map = build("mqtt", ("f", "sensors/+/temp"), ("g", "sensors/7/temp"), ("h", "#"))
    assert isinstance(topic_map, WildcardTopicMap)
    routes = topic_map._routes  # the cache itself is what is tested
    for number in range(100):  # endless distinct topics, as a source may send
        assert topic_map.functions_for(f"sensors/{number}/temp") == (
            ("f", "g", "h") if number == 7 else ("f", "h")
        )
        assert topic_map.functions_for(f"other/{number}") == ("h",)
        assert len(routes) <= 1 + 8  # the plain topic, and at most the cache's bound
    assert routes["sensors/7/temp"] == ("f", "g", "h")  # plain topics survive every emptying
    assert topic_map.functions_for("other/99") == ("h",)
    assert "other/99" in routes  # a repeated topic is one dict lookup


def test_equal_maps_compare_equal_whatever_they_cached() -> None:
    first = build("amqp", ("f", "a.#"))
    second = build("amqp", ("f", "a.#"))
    first.functions_for("a.b")
    assert first == second
    assert first != build("nats", ("f", "a.*"))
    assert first != build("exact", ("f", "a.#"))


# -- parse_functions: refused patterns are skipped and reported ------------------------------


def _function(name: str, topic: str) -> dict[str, Any]:
    return {"name": name, "annotations": {"topic": topic}}


def test_refused_patterns_are_skipped_not_raised() -> None:
    payload = json.dumps(
        [_function("good", "orders.*,a.>.b"), _function("bad", "x*"), _function("plain", "p")]
    )
    parsed = parse_functions(payload, namespace=None, delimiter=",", matching="nats")
    assert parsed.routes == (("good", ("orders.*",)), ("plain", ("p",)))
    assert len(parsed.skipped) == 2
    assert parsed.skipped[0].startswith("'good': topic 'a.>.b' has '>' before its last token")
    assert parsed.skipped[1].startswith("'bad': topic 'x*' has a wildcard inside the token")
    # In the exact dialect the same annotations are plain topics, all routed.
    exact = parse_functions(payload, namespace=None, delimiter=",")
    assert exact.skipped == ()
    assert exact.routes[0] == ("good", ("orders.*", "a.>.b"))


# -- property tests: the trie against each dialect's own definition --------------------------


def nats_oracle(pattern: str, topic: str) -> bool:
    """A regex per pattern: ``*`` one token, ``>`` the rest (at least one token)."""
    parts = [
        "[^.]*" if token == "*" else ".*" if token == ">" else re.escape(token)
        for token in pattern.split(".")
    ]
    return re.fullmatch(r"\.".join(parts), topic) is not None


def amqp_oracle(pattern: str, topic: str) -> bool:
    """Word by word, "#" trying every number of words."""
    p, t = pattern.split("."), topic.split(".")

    @functools.cache
    def rest(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(t)
        if p[i] == "#":
            return rest(i + 1, j) or (j < len(t) and rest(i, j + 1))
        return j < len(t) and p[i] in ("*", t[j]) and rest(i + 1, j + 1)

    return rest(0, 0)


def mqtt_oracle(pattern: str, topic: str) -> bool:
    """aiomqtt's ``Topic.matches``, plus MQTT 4.7.2 (a "$" topic matches no wildcard at its
    first level), which aiomqtt leaves to the broker."""
    if topic.startswith("$") and pattern.split("/", maxsplit=1)[0] in ("+", "#"):
        return False
    return Topic(topic).matches(pattern)


def test_the_mqtt_oracle_is_aiomqtts() -> None:
    assert Topic("a/b").matches("a/+")
    assert Topic("a").matches("a/#")
    assert not Topic("a/b/c").matches("a/+")


# Few distinct tokens, so patterns and topics share them often enough to match.
_WORDS = st.sampled_from(["a", "b", "c", ""])
_DOLLAR_WORDS = st.sampled_from(["a", "b", "", "$a"])


def _patterns(words: st.SearchStrategy[str], one: str, many: str, sep: str, *, last: bool) -> Any:
    token = st.one_of(words, st.just(one), st.just(many))
    if not last:
        return st.lists(token, min_size=1, max_size=5).map(sep.join)
    body = st.lists(st.one_of(words, st.just(one)), min_size=0, max_size=4)
    tail = st.sampled_from(["", many, one])
    return st.tuples(body, tail, words).map(
        lambda parts: sep.join([*parts[0], parts[1] or parts[2]])
    )


def _check_against(matching: str, oracle: Any, patterns: list[str], topics: list[str]) -> None:
    dialect = dialect_of(matching)
    assert dialect is not None
    valid = [p for p in patterns if p and dialect.compile(p)[1] is None]
    topic_map = TopicMap.build([(f"f{i}", [p]) for i, p in enumerate(valid)], matching=matching)
    for topic in topics:
        expected = tuple(sorted(f"f{i}" for i, p in enumerate(valid) if oracle(p, topic)))
        assert topic_map.functions_for(topic) == expected, topic
        assert topic_map.functions_for(topic) == expected, topic  # from the cache, the same


_NATS_WORDS = st.sampled_from(["a", "b", "c"])  # a nats pattern has no empty token


@given(
    patterns=st.lists(_patterns(_NATS_WORDS, "*", ">", ".", last=True), max_size=12),
    topics=st.lists(
        st.lists(_WORDS, min_size=1, max_size=6).map(".".join).filter(bool), max_size=12
    ),
)
def test_nats_matches_its_oracle(patterns: list[str], topics: list[str]) -> None:
    _check_against("nats", nats_oracle, patterns, topics)


@given(
    patterns=st.lists(_patterns(_DOLLAR_WORDS, "+", "#", "/", last=True), max_size=12),
    topics=st.lists(
        st.lists(_DOLLAR_WORDS, min_size=1, max_size=6).map("/".join).filter(bool), max_size=12
    ),
)
def test_mqtt_matches_aiomqtt(patterns: list[str], topics: list[str]) -> None:
    _check_against("mqtt", mqtt_oracle, patterns, topics)


@given(
    patterns=st.lists(_patterns(_WORDS, "*", "#", ".", last=False), max_size=12),
    topics=st.lists(
        st.lists(_WORDS, min_size=1, max_size=6).map(".".join).filter(bool), max_size=12
    ),
)
def test_amqp_matches_its_oracle(patterns: list[str], topics: list[str]) -> None:
    _check_against("amqp", amqp_oracle, patterns, topics)


@given(
    pattern=st.lists(st.sampled_from(["a", "*", ">", "#", "+", "a*", "", "b"]), min_size=1).map(
        ".".join
    )
)
def test_compile_never_raises(pattern: str) -> None:
    for matching in ("nats", "mqtt", "amqp"):
        dialect = dialect_of(matching)
        assert dialect is not None
        steps, problem = dialect.compile(pattern)
        assert (steps is None) or (problem is None)
        if problem is None and steps is not None:
            build(matching, ("f", pattern))  # a pattern compile accepts, build accepts


# -- configuration ---------------------------------------------------------------------------


def test_config_field_and_variable() -> None:
    assert ControllerConfig(gateway_url="http://127.0.0.1:1").topic_matching == "exact"
    config = ControllerConfig.from_env({"topic_matching": " NATS "})
    assert config.topic_matching == "nats"
    with pytest.raises(ValueError, match="topic_matching: topic_matching must be one of"):
        ControllerConfig.from_env({"topic_matching": "kafka"})
    with pytest.raises(ValueError, match="must be one of exact, nats, mqtt, amqp, got 'glob'"):
        ControllerConfig(gateway_url="http://127.0.0.1:1", topic_matching="glob")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="topic_matching must be a str"):
        ControllerConfig(gateway_url="http://127.0.0.1:1", topic_matching=None)  # type: ignore[arg-type]


def test_connectors_take_the_flag_over_the_variable() -> None:
    args = _parser().parse_args(["connect", "mqtt", "--topic-matching", "mqtt"])
    config = controller_config(vars(args), {"topic_matching": "amqp"})
    assert config.topic_matching == "mqtt"
    args = _parser().parse_args(["connect", "mqtt"])
    assert controller_config(vars(args), {"topic_matching": "amqp"}).topic_matching == "amqp"
    args = _parser().parse_args(["connect", "mqtt", "--topic-matching", "glob"])
    with pytest.raises(ValueError, match=r"^--topic-matching: topic_matching must be one of"):
        controller_config(vars(args), {})


# -- end to end, through a FakeGateway -------------------------------------------------------


async def test_a_wildcard_annotation_routes_matching_topics(
    wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    wire.gateway.add_function("orders", topics="orders.*")
    wire.gateway.add_function("audit", topics="orders.>,payments")
    wire.gateway.add_function("broken", topics="orders.>.eu")
    with caplog.at_level(logging.WARNING, logger="aioconnector"):
        async with wire.controller(topic_matching="nats") as controller:
            assert controller.topics() == {"orders.*", "orders.>", "payments"}
            results = await controller.invoke("orders.created", b"{}")
            assert sorted(r.function for r in results) == [
                "audit.openfaas-fn",
                "orders.openfaas-fn",
            ]
            assert all(r.ok and r.topic == "orders.created" for r in results)
            deeper = await controller.invoke("orders.created.eu", b"{}")
            assert [r.function for r in deeper] == ["audit.openfaas-fn"]
            assert await controller.invoke("orders", b"{}") == ()
            stats = controller.stats()
    assert stats.unmatched_messages == 1
    calls = [(i.function, i.headers.get("x-topic")) for i in wire.gateway.invocations()]
    assert sorted(calls) == [
        ("audit.openfaas-fn", "orders.created"),
        ("audit.openfaas-fn", "orders.created.eu"),
        ("orders.openfaas-fn", "orders.created"),
    ]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1
    assert "topic 'orders.>.eu' has '>' before its last token" in skipped[0]


async def test_exact_matching_keeps_wildcards_literal(wire: Wire) -> None:
    wire.gateway.add_function("orders", topics="orders.*")
    async with wire.controller() as controller:
        assert await controller.invoke("orders.created", b"{}") == ()
        (result,) = await controller.invoke("orders.*", b"{}")
    assert result.function == "orders.openfaas-fn"
    assert result.ok
