from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioconnector._errors import DiscoveryError
from aioconnector._message import MAX_TOPIC_LENGTH, check_topic
from aioconnector._topics import (
    SAFE_NAME_RE,
    ParsedFunctions,
    TopicMap,
    parse_functions,
    parse_namespaces,
)


def function(name: Any, topic: Any = None, **extra: Any) -> dict[str, Any]:
    """A FunctionStatus object with every field a real gateway sends."""
    status: dict[str, Any] = {
        "name": name,
        "image": "ghcr.io/openfaas/figlet:latest",
        "namespace": "openfaas-fn",
        "envProcess": "figlet",
        "envVars": {"write_debug": "true"},
        "constraints": [],
        "secrets": [],
        "labels": None,
        "annotations": None if topic is None else {"topic": topic, "prometheus.io.scrape": "false"},
        "limits": {"memory": "128Mi"},
        "requests": None,
        "readOnlyRootFilesystem": False,
        "invocationCount": 1234.0,
        "replicas": 1,
        "availableReplicas": 1,
        "createdAt": "2024-05-01T10:00:00Z",
        "usage": {"cpu": 0.01, "totalMemoryBytes": 7000000},
    }
    status.update(extra)
    return status


def parse(items: list[Any], namespace: str | None = "openfaas-fn", delimiter: str = ",") -> Any:
    return parse_functions(json.dumps(items), namespace=namespace, delimiter=delimiter)


def test_realistic_payload() -> None:
    payload = json.dumps(
        [
            function("figlet", "orders,payments"),
            function("nodeinfo"),  # annotations null: no topics
            function("env", "orders", labels={"com.openfaas.scale.min": "1"}),
            function("cows", None, annotations={"other": "x"}),
        ]
    ).encode()
    parsed = parse_functions(payload, namespace="openfaas-fn", delimiter=",")
    assert parsed == ParsedFunctions(
        routes=(
            ("figlet.openfaas-fn", ("orders", "payments")),
            ("env.openfaas-fn", ("orders",)),
        ),
        skipped=(),
    )


@pytest.mark.parametrize(
    ("annotation", "delimiter", "topics"),
    [
        ("a,b,c", ",", ("a", "b", "c")),
        (" a , b ,, ,c ", ",", ("a", "b", "c")),
        ("a,b,a,b", ",", ("a", "b")),
        ("b,a,b", ",", ("b", "a")),
        ("a;b,c", ";", ("a", "b,c")),
        ("a, b", ", ", ("a", "b")),
        ("a b  c", " ", ("a", "b", "c")),
        ("a b\tc \tc\t", " ", ("a", "c")),  # a tab inside a topic is a control character
        ("ok,bad\x00topic,\x7fx, also\u0085bad,fine", ",", ("ok", "fine")),
        ("  ,, ", ",", ()),
    ],
)
def test_topic_annotation_splitting(
    annotation: str, delimiter: str, topics: tuple[str, ...]
) -> None:
    parsed = parse([function("fn", annotation)], delimiter=delimiter)
    assert parsed.routes == ((("fn.openfaas-fn", topics),) if topics else ())


@pytest.mark.parametrize(
    "annotations", [None, {}, {"topic": None}, {"topic": 5}, {"topic": ["a"]}, []]
)
def test_missing_or_odd_annotations_mean_no_topics(annotations: Any) -> None:
    parsed = parse([function("fn", annotations=annotations)])
    assert parsed == ParsedFunctions(routes=(), skipped=())


def test_annotations_key_missing() -> None:
    assert parse([{"name": "fn"}]).routes == ()


@pytest.mark.parametrize("namespace", [None, ""])
def test_no_namespace_address_is_name(namespace: str | None) -> None:
    parsed = parse([function("fn", "t")], namespace=namespace)
    assert parsed.routes == (("fn", ("t",)),)


NAMES_UNSAFE = ["../x", "a/b", "a b", ".x", "x\n", "", "-x", "a%2Fb", "a?b", "a#b", "..", "a\x00"]


@pytest.mark.parametrize("name", [*NAMES_UNSAFE, "caf\u00e9", "x" * 254])
def test_unsafe_names_skipped_and_reported(name: str) -> None:
    parsed = parse([function(name, "orders"), function("ok", "orders")])
    assert parsed.routes == (("ok.openfaas-fn", ("orders",)),)
    assert len(parsed.skipped) == 1
    assert repr(name)[:20] in parsed.skipped[0]
    assert "\n" not in parsed.skipped[0]
    assert "\x00" not in parsed.skipped[0]


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("re\u00e7u", "must be ASCII"),
        ("caf\u00e9 au lait", "must be ASCII"),
        ("tab\tinside", "control characters"),
        ("x" * (MAX_TOPIC_LENGTH + 1), f"over the limit of {MAX_TOPIC_LENGTH}"),
    ],
)
def test_topics_invoke_would_refuse_are_skipped_and_reported(topic: str, reason: str) -> None:
    parsed = parse([function("fn", f"ok,{topic},x" + "y" * (MAX_TOPIC_LENGTH - 1))])
    assert parsed.routes == (("fn.openfaas-fn", ("ok", "x" + "y" * (MAX_TOPIC_LENGTH - 1))),)
    (entry,) = parsed.skipped
    assert entry.startswith("'fn': topic ")
    assert reason in entry
    assert len(entry) < 200
    for routed in parsed.routes[0][1]:
        check_topic(routed)  # what invoke() checks
    with pytest.raises(ValueError, match=reason):
        check_topic(topic)


def test_function_whose_only_topic_is_refused_is_not_routed() -> None:
    parsed = parse([function("fn", "re\u00e7u")])
    assert parsed.routes == ()
    assert len(parsed.skipped) == 1


def test_unsafe_name_without_topics_is_not_reported() -> None:
    assert parse([function("../x")]) == ParsedFunctions(routes=(), skipped=())


def test_long_unsafe_name_description_is_truncated() -> None:
    parsed = parse([function("/" * 10_000, "t")])
    assert len(parsed.skipped[0]) < 200


def test_safe_edge_names_kept() -> None:
    names = ["a", "A9", "fn-1", "fn_1", "fn.v2", "a..b", "x" * 253]
    parsed = parse([function(n, "t") for n in names], namespace=None)
    assert [address for address, _ in parsed.routes] == names


@pytest.mark.parametrize("namespace", ["a/b", "..", " dev", "dev\n"])
def test_unsafe_namespace_skips_every_function(namespace: str) -> None:
    parsed = parse([function("a", "t"), function("b", "t"), function("c")], namespace=namespace)
    assert parsed.routes == ()
    assert len(parsed.skipped) == 2
    assert all("namespace" in entry for entry in parsed.skipped)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("figlet", "a string, not an object"),
        (None, "null, not an object"),
        (42, "a number"),
        ([{"name": "x"}], "an array"),
        ({"annotations": {"topic": "t"}}, "name is missing"),
        ({"name": None, "annotations": {"topic": "t"}}, "name is missing"),
        ({"name": 7, "annotations": {"topic": "t"}}, "name is a number"),
        ({"name": ["x"]}, "name is an array"),
        ({"name": True}, "name is a boolean"),
    ],
)
def test_malformed_items_skipped(item: Any, reason: str) -> None:
    parsed = parse([item, function("ok", "t")])
    assert parsed.routes == (("ok.openfaas-fn", ("t",)),)
    assert len(parsed.skipped) == 1
    assert parsed.skipped[0].startswith("item 0: ")
    assert reason in parsed.skipped[0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\xfa", "not JSON"),
        ("[" * 100_000, "not JSON"),
        ('{"name": "x"}', "expected a JSON array, got an object"),
        ("null", "got null"),
        ('"fn"', "got a string"),
        ("3", "got a number"),
    ],
)
def test_bad_functions_payload(payload: bytes | str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=r"^invalid /system/functions response: .*" + message):
        parse_functions(payload, namespace=None, delimiter=",")


def test_empty_delimiter_is_an_error() -> None:
    with pytest.raises(ValueError, match="delimiter"):
        parse_functions("[]", namespace=None, delimiter="")


def test_empty_list_is_fine() -> None:
    assert parse_functions(b"[]", namespace=None, delimiter=",") == ParsedFunctions((), ())


# --- parse_namespaces ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'["openfaas-fn"]', ("openfaas-fn",)),
        ('["b", "a", "b", "", "  ", "c"]', ("b", "a", "c")),
        ("[]", ()),
        (" [ ] \n", ()),
    ],
)
def test_parse_namespaces(payload: bytes | str, expected: tuple[str, ...]) -> None:
    assert parse_namespaces(payload) == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("", "not JSON"),
        ("404 page not found", "not JSON"),
        ('{"namespaces": []}', "expected a JSON array, got an object"),
        ('["a", 1]', "item 1 is a number, not a string"),
        ('["a", null]', "item 1 is null"),
        ('[["a"]]', "item 0 is an array"),
    ],
)
def test_parse_namespaces_rejects(payload: str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=r"^invalid /system/namespaces response: .*" + message):
        parse_namespaces(payload)


# --- TopicMap --------------------------------------------------------------------------


def test_topic_map_build_merges_and_sorts() -> None:
    topic_map = TopicMap.build(
        [
            ("zeta.fn", ["orders", "payments"]),
            ("alpha.fn", ("orders",)),
            ("zeta.fn", ["orders"]),
            ("beta.fn", iter(["payments", "payments"])),
            ("idle.fn", []),
        ]
    )
    assert topic_map.functions_for("orders") == ("alpha.fn", "zeta.fn")
    assert topic_map.functions_for("payments") == ("beta.fn", "zeta.fn")
    assert topic_map.functions_for("unknown") == ()
    assert topic_map.functions_for("Orders") == ()  # exact match only
    assert topic_map.topics() == frozenset({"orders", "payments"})
    assert topic_map.function_count == 3  # idle.fn has no topic
    assert topic_map.as_dict() == {
        "orders": ("alpha.fn", "zeta.fn"),
        "payments": ("beta.fn", "zeta.fn"),
    }
    assert list(topic_map.as_dict()) == ["orders", "payments"]


def test_topic_map_as_dict_is_sorted_copy() -> None:
    topic_map = TopicMap.build([("f", ["b", "c", "a"])])
    copy = topic_map.as_dict()
    assert list(copy) == ["a", "b", "c"]
    copy["a"] = ("evil",)
    copy["new"] = ("x",)
    assert topic_map.functions_for("a") == ("f",)
    assert topic_map.functions_for("new") == ()


def test_topic_map_empty() -> None:
    assert TopicMap.EMPTY.functions_for("x") == ()
    assert TopicMap.EMPTY.topics() == frozenset()
    assert TopicMap.EMPTY.function_count == 0
    assert TopicMap.EMPTY.as_dict() == {}
    assert TopicMap.build([]) == TopicMap.EMPTY


def test_topic_map_equality_hash_repr() -> None:
    one = TopicMap.build([("a", ["t"]), ("b", ["t"])])
    two = TopicMap.build([("b", ["t"]), ("a", ["t"]), ("a", ["t"])])
    assert one == two
    assert hash(one) == hash(two)
    assert one != TopicMap.build([("a", ["t"])])
    assert repr(one) == "TopicMap(topics=1, functions=2)"


def test_topic_map_rejects_str_topics() -> None:
    with pytest.raises(TypeError, match="not a str"):
        TopicMap.build([("fn", "orders")])


def test_topic_map_from_parsed_functions() -> None:
    parsed = parse([function("a", "t1,t2"), function("b", "t2"), function("a", "t1")])
    topic_map = TopicMap.build(parsed.routes)
    assert topic_map.as_dict() == {
        "t1": ("a.openfaas-fn",),
        "t2": ("a.openfaas-fn", "b.openfaas-fn"),
    }
    assert topic_map.function_count == 2


# --- properties ------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    st.text(max_size=12),
    st.sampled_from(["..", "../x", "a/b", ".x", "x\n", "", "a%2F"]),
    JSON,
)
ANNOTATIONS = st.one_of(
    st.none(),
    JSON,
    st.fixed_dictionaries({"topic": st.one_of(st.text(max_size=30), JSON)}),
)
ITEMS = st.one_of(
    JSON,
    st.fixed_dictionaries({"name": NAMES, "annotations": ANNOTATIONS}, optional={"labels": JSON}),
)
NAMESPACES = st.one_of(st.none(), st.sampled_from(["", "openfaas-fn", "a/b", ".."]), st.text())


def _check_parsed(parsed: ParsedFunctions, namespace: str | None) -> None:
    for address, topics in parsed.routes:
        if namespace:
            assert address.endswith(f".{namespace}")
            assert SAFE_NAME_RE.fullmatch(namespace)
            name = address[: -len(namespace) - 1]
        else:
            name = address
        assert SAFE_NAME_RE.fullmatch(name)
        assert topics
        assert len(set(topics)) == len(topics)
        for topic in topics:
            assert topic
            assert topic == topic.strip()
            assert not any(unicodedata.category(c) == "Cc" for c in topic)
    for entry in parsed.skipped:
        assert entry.isprintable()


@given(st.lists(ITEMS, max_size=8), NAMESPACES, st.text(min_size=1, max_size=3))
def test_parse_functions_property(items: list[Any], namespace: str | None, delimiter: str) -> None:
    parsed = parse_functions(json.dumps(items), namespace=namespace, delimiter=delimiter)
    _check_parsed(parsed, namespace)
    # Every item is either routed, reported, or has no usable topic.
    assert len(parsed.routes) + len(parsed.skipped) <= len(items)


@given(st.one_of(JSON.map(json.dumps), st.text(), st.binary()), NAMESPACES)
def test_parse_functions_only_raises_discovery_error(
    payload: str | bytes, namespace: str | None
) -> None:
    try:
        parsed = parse_functions(payload, namespace=namespace, delimiter=",")
    except DiscoveryError as exc:
        message = str(exc)
    else:
        _check_parsed(parsed, namespace)
        return
    assert message.startswith("invalid /system/functions response: ")


@given(st.one_of(JSON.map(json.dumps), st.text(), st.binary()))
def test_parse_namespaces_only_raises_discovery_error(payload: str | bytes) -> None:
    try:
        namespaces = parse_namespaces(payload)
    except DiscoveryError as exc:
        message = str(exc)
    else:
        assert len(set(namespaces)) == len(namespaces)
        assert all(ns.strip() for ns in namespaces)
        return
    assert message.startswith("invalid /system/namespaces response: ")


@given(st.lists(st.tuples(st.text(max_size=5), st.lists(st.text(max_size=3), max_size=4))))
def test_topic_map_build_property(routes: list[tuple[str, list[str]]]) -> None:
    topic_map = TopicMap.build(routes)
    expected: dict[str, set[str]] = {}
    for address, topics in routes:
        for topic in topics:
            expected.setdefault(topic, set()).add(address)
    assert topic_map.as_dict() == {t: tuple(sorted(a)) for t, a in sorted(expected.items())}
    assert topic_map.function_count == len({a for addrs in expected.values() for a in addrs})
    assert topic_map.topics() == frozenset(expected)
