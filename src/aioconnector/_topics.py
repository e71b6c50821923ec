"""Pure parsing of the gateway's ``/system/*`` JSON into an immutable topic map."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from ._errors import DiscoveryError
from ._message import topic_problem
from ._policy import POLICY_ANNOTATIONS
from ._wildcards import Dialect, Step, Trie, dialect_of

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "SAFE_NAME_RE",
    "ParsedFunctions",
    "TopicMap",
    "WildcardTopicMap",
    "parse_functions",
    "parse_namespaces",
]

#: A function or namespace name that is safe as one URL path segment: no "/", no dot-segment,
#: no whitespace, "%", "?" or "#". Use with ``fullmatch`` (``$`` would accept a trailing "\n").
SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")

_MAX_DESCRIPTION = 80
# Message topics whose routes a wildcard map keeps (all dropped when full): repeated topics
# cost one dict lookup, and a source sending endless distinct topics cannot grow it further.
MATCH_CACHE_SIZE = 4096


def _load(payload: bytes | str, endpoint: str) -> list[Any]:
    try:
        data = json.loads(payload)
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; absurd nesting is a RecursionError.
    except (ValueError, RecursionError) as exc:
        raise DiscoveryError(f"invalid {endpoint} response: not JSON ({exc})") from exc
    if not isinstance(data, list):
        raise DiscoveryError(
            f"invalid {endpoint} response: expected a JSON array, got {_json_type(data)}"
        )
    return data


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    return "an array"


def _describe(value: str) -> str:
    # repr() escapes control characters, so the text is safe to put in a log line.
    text = repr(value)
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 3] + "..."


def parse_namespaces(payload: bytes | str) -> tuple[str, ...]:
    """Parse ``GET /system/namespaces``: a JSON array of names, blanks and duplicates dropped."""
    data = _load(payload, "/system/namespaces")
    for index, item in enumerate(data):
        if not isinstance(item, str):
            raise DiscoveryError(
                f"invalid /system/namespaces response: item {index} is {_json_type(item)},"
                " not a string"
            )
    return tuple(dict.fromkeys(item for item in data if item.strip()))


@attrs.frozen
class ParsedFunctions:
    """What :func:`parse_functions` found: routes to use, and functions it had to leave out."""

    routes: tuple[tuple[str, tuple[str, ...]], ...]
    skipped: tuple[str, ...]
    annotations: tuple[tuple[str, Mapping[str, str]], ...] = ()
    """The policy annotations (``com.openfaas.retry.*``, ``com.aioconnector.*``) of the
    routed functions that have any, by address."""


def _topics_of(
    item: Mapping[str, Any], delimiter: str, dialect: Dialect | None, skipped: list[str]
) -> tuple[str, ...]:
    """The function's invokable topics; the others are reported in ``skipped``."""
    annotations = item.get("annotations")
    if not isinstance(annotations, dict):
        return ()
    annotation = annotations.get("topic")
    if not isinstance(annotation, str):
        return ()
    # dict.fromkeys keeps first-seen order, so a topic listed twice invokes the function once.
    parts = dict.fromkeys(p for p in (part.strip() for part in annotation.split(delimiter)) if p)
    topics: list[str] = []
    for topic in parts:
        # The check invoke() makes, so topics() never lists a topic that invoke() refuses.
        problem = topic_problem(topic)
        if problem is None and dialect is not None:
            problem = dialect.compile(topic)[1]
        if problem is None:
            topics.append(topic)
        else:
            skipped.append(f"{_describe(item['name'])}: topic {_describe(topic)} {problem}")
    return tuple(topics)


def parse_functions(
    payload: bytes | str, *, namespace: str | None, delimiter: str, matching: str = "exact"
) -> ParsedFunctions:
    """Parse ``GET /system/functions`` into ``(address, topics)`` routes.

    Malformed items, unsafe names, topics that ``invoke`` would refuse (not ASCII, control
    characters, longer than 1024 characters) and, with a wildcard ``matching`` dialect,
    patterns it refuses (``a.>.b`` in nats, ``a/#/b`` in mqtt, ``a#`` in any) are reported in
    ``skipped``, never raised: one odd function must not stop the connector from serving all
    the others.
    """
    if not delimiter:
        raise ValueError(f"delimiter must be a non-empty str, got {delimiter!r}")
    dialect = dialect_of(matching)
    data = _load(payload, "/system/functions")
    ns_ok = not namespace or SAFE_NAME_RE.fullmatch(namespace) is not None
    routes: list[tuple[str, tuple[str, ...]]] = []
    skipped: list[str] = []
    policies: list[tuple[str, Mapping[str, str]]] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            skipped.append(f"item {index}: {_json_type(item)}, not an object")
            continue
        name = item.get("name")
        if not isinstance(name, str):
            what = "missing" if name is None else f"{_json_type(name)}, not a string"
            skipped.append(f"item {index}: name is {what}")
            continue
        topics = _topics_of(item, delimiter, dialect, skipped)
        if not topics:
            # Not routed anyway, so an odd name here is no reason for a warning.
            continue
        if SAFE_NAME_RE.fullmatch(name) is None:
            skipped.append(f"{_describe(name)}: not a safe function name")
        elif not ns_ok:
            skipped.append(f"{_describe(name)}: namespace {_describe(namespace or '')} not safe")
        else:
            address = f"{name}.{namespace}" if namespace else name
            routes.append((address, topics))
            declared = _policy_annotations(item)
            if declared:
                policies.append((address, declared))
    return ParsedFunctions(
        routes=tuple(routes), skipped=tuple(skipped), annotations=tuple(policies)
    )


def _policy_annotations(item: Mapping[str, Any]) -> dict[str, str]:
    """The function's annotations that set its delivery policy (text values only)."""
    annotations = item.get("annotations")
    if not isinstance(annotations, dict):
        return {}
    return {
        name: value
        for name in POLICY_ANNOTATIONS.intersection(annotations)
        if isinstance(value := annotations[name], str)
    }


@attrs.frozen(repr=False)
class TopicMap:
    """Which function addresses each topic routes to. Immutable: replaced whole on refresh.

    With ``matching="exact"`` (the default, as OpenFaaS) a topic routes to the functions whose
    annotation names it. With a wildcard dialect, `build` gives a `WildcardTopicMap`.
    """

    EMPTY: ClassVar[TopicMap]

    # A plain dict, never handed out, so functions_for() is one dict lookup.
    _by_topic: Mapping[str, tuple[str, ...]] = attrs.field(hash=False)
    _function_count: int
    _annotations: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, hash=False)

    @classmethod
    def build(
        cls,
        routes: Iterable[tuple[str, Iterable[str]]],
        annotations: Iterable[tuple[str, Mapping[str, str]]] = (),
        *,
        matching: str = "exact",
    ) -> TopicMap:
        """Build a map from ``(address, topics)`` pairs; repeated pairs are merged.
        ``annotations``: ``(address, policy annotations)`` pairs, for `annotations_of`.
        ``matching``: "exact", or the wildcard dialect of the annotation topics ("nats",
        "mqtt", "amqp"); a pattern the dialect refuses raises ValueError (`parse_functions`
        leaves them out first)."""
        dialect = dialect_of(matching)
        by_topic: dict[str, set[str]] = {}
        addresses: set[str] = set()
        for address, topics in routes:
            if isinstance(topics, str):
                # Iterating a str would route every single character as a topic.
                raise TypeError(f"topics of {address!r} must be an iterable of str, not a str")
            for topic in topics:
                by_topic.setdefault(topic, set()).add(address)
                addresses.add(address)
        declared = {address: dict(values) for address, values in annotations if values}
        subscribed = {t: tuple(sorted(a)) for t, a in by_topic.items()}
        if dialect is None:
            return TopicMap(subscribed, len(addresses), declared)
        return WildcardTopicMap._make(subscribed, len(addresses), declared, dialect)

    def functions_for(self, topic: str) -> tuple[str, ...]:
        """The sorted addresses of the functions subscribed to ``topic``; ``()`` if none."""
        return self._by_topic.get(topic, ())

    def annotations_of(self, address: str) -> Mapping[str, str]:
        """The policy annotations of a function (``{}`` when it declares none)."""
        return self._annotations.get(address, {})

    def addresses(self) -> frozenset[str]:
        """Every function address with at least one topic."""
        return frozenset(a for addresses in self._by_topic.values() for a in addresses)

    def topics(self) -> frozenset[str]:
        """Every topic that routes to at least one function (with a wildcard dialect: the
        annotations' topics and patterns, as written)."""
        return frozenset(self._by_topic)

    @property
    def function_count(self) -> int:
        """How many distinct function addresses have at least one topic."""
        return self._function_count

    @property
    def matching(self) -> str:
        """How annotation topics match message topics: "exact", "nats", "mqtt" or "amqp"."""
        return "exact"

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        """A new ``{topic: addresses}`` dict sorted by topic, for display or JSON (with a
        wildcard dialect: each annotation topic or pattern and the functions that name it)."""
        return {topic: self._by_topic[topic] for topic in sorted(self._by_topic)}

    def __repr__(self) -> str:
        return f"TopicMap(topics={len(self._by_topic)}, functions={self._function_count})"


TopicMap.EMPTY = TopicMap.build(())


@attrs.frozen(repr=False)
class WildcardTopicMap(TopicMap):
    """A `TopicMap` whose annotation topics may be patterns of a wildcard dialect.

    `functions_for` takes a message topic (a pattern given to it is matched as plain text) and
    answers every function whose annotation names that topic or has a pattern matching it.
    The answers for the annotations' plain topics are worked out when the map is built; other
    topics are matched by the trie once, then kept in a cache of `MATCH_CACHE_SIZE` topics
    (emptied when full), so a repeated topic costs one dict lookup.
    """

    _dialect: Dialect = attrs.field(kw_only=True, hash=False)
    _trie: Trie = attrs.field(kw_only=True, eq=False, hash=False)
    # The plain topics' answers, and the cache on top of them (a copy, refilled from them).
    _plain: Mapping[str, tuple[str, ...]] = attrs.field(kw_only=True, eq=False, hash=False)
    _routes: dict[str, tuple[str, ...]] = attrs.field(kw_only=True, eq=False, hash=False)

    @classmethod
    def _make(
        cls,
        subscribed: dict[str, tuple[str, ...]],
        function_count: int,
        declared: dict[str, dict[str, str]],
        dialect: Dialect,
    ) -> WildcardTopicMap:
        patterns: list[tuple[tuple[Step, ...], str]] = []
        plain: dict[str, tuple[str, ...]] = {}
        for topic, addresses in subscribed.items():
            steps, problem = dialect.compile(topic)
            if problem is not None:
                raise ValueError(f"topic {topic!r} of {addresses[0]!r} {problem}")
            if steps is None:
                plain[topic] = addresses
            else:
                patterns.extend((steps, address) for address in addresses)
        trie = Trie(dialect, patterns)
        # An annotation's plain topic may also match other functions' patterns.
        answers = {
            topic: tuple(sorted(trie.match(topic).union(addresses)))
            for topic, addresses in plain.items()
        }
        return cls(
            subscribed,
            function_count,
            declared,
            dialect=dialect,
            trie=trie,
            plain=answers,
            routes=dict(answers),
        )

    def functions_for(self, topic: str) -> tuple[str, ...]:
        """The sorted addresses of the functions whose annotation topic is ``topic`` or whose
        pattern matches it; ``()`` if none."""
        found = self._routes.get(topic)
        if found is None:
            found = self._plain.get(topic)  # only while the cache is being refilled
            if found is not None:
                return found
            found = tuple(sorted(self._trie.match(topic)))
            routes = self._routes
            if len(routes) >= len(self._plain) + MATCH_CACHE_SIZE:
                routes.clear()
                routes.update(self._plain)
            routes[topic] = found
        return found

    @property
    def matching(self) -> str:
        """How annotation topics match message topics: "nats", "mqtt" or "amqp"."""
        return self._dialect.name

    def __repr__(self) -> str:
        return (
            f"WildcardTopicMap(matching={self._dialect.name!r}, topics={len(self._by_topic)}, "
            f"patterns={self._trie.size}, functions={self._function_count})"
        )
