"""Wildcard topic dialects (opt-in): which annotation topics are patterns, and a token trie that
matches a message topic against every pattern of a topic map at once.

Each dialect is its broker's: ``nats`` (``*`` one token, ``>`` one or more trailing tokens,
tokens separated by "."), ``mqtt`` (``+`` one level, ``#`` zero or more trailing levels, so
``a/#`` also matches ``a``; a topic starting with ``$`` is not matched by a wildcard at the
first level; levels separated by "/"), ``amqp`` (``*`` exactly one word, ``#`` zero or more
words anywhere; words separated by "."). A wildcard is a whole token or nothing: ``a#`` or
``a.*b`` is refused, as brokers refuse or misread them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "TOPIC_MATCHINGS",
    "Dialect",
    "TopicMatching",
    "Trie",
    "dialect_of",
]

TopicMatching = Literal["exact", "nats", "mqtt", "amqp"]
#: The values of ``ControllerConfig.topic_matching``; "exact" (no wildcard) is OpenFaaS's.
TOPIC_MATCHINGS: Final[tuple[TopicMatching, ...]] = ("exact", "nats", "mqtt", "amqp")

# A compiled pattern is a tuple of steps: a literal token (str), or one of these markers.
_ONE: Final = 1  # exactly one token
_MANY: Final = 2  # zero or more tokens
Step = str | int


@attrs.frozen
class Dialect:
    """One broker's wildcard syntax."""

    name: str
    separator: str
    one: str  # the one-token wildcard
    many: str  # the multi-token wildcard
    # nats ">": at least one token; "#": zero or more.
    many_is_one_or_more: bool = attrs.field(kw_only=True)
    # The multi-token wildcard may only end a pattern (nats, mqtt).
    many_last: bool = attrs.field(kw_only=True)
    # A pattern may have empty tokens ("a..b", "a//b").
    empty_tokens: bool = attrs.field(kw_only=True)
    # mqtt: "$SYS/x" is not matched by "+/x" or "#".
    dollar_rule: bool = attrs.field(kw_only=True)

    def is_pattern(self, topic: str) -> bool:
        """Whether ``topic`` holds a wildcard character (valid or not)."""
        return self.one in topic or self.many in topic

    def compile(self, topic: str) -> tuple[tuple[Step, ...] | None, str | None]:
        """``(steps, None)`` for a valid pattern, ``(None, None)`` for a plain topic (exact
        match), ``(None, why)`` for a pattern this dialect refuses."""
        if not self.is_pattern(topic):
            return None, None
        tokens = topic.split(self.separator)
        steps: list[Step] = []
        last = len(tokens) - 1
        for index, token in enumerate(tokens):
            if token == self.one:
                steps.append(_ONE)
            elif token == self.many:
                if self.many_last and index != last:
                    return None, f"has {self.many!r} before its last token ({self.name} topics)"
                if self.many_is_one_or_more:
                    steps.append(_ONE)
                if not steps or steps[-1] != _MANY:  # "#.#" is "#"
                    steps.append(_MANY)
            elif self.one in token or self.many in token:
                return None, (
                    f"has a wildcard inside the token {token!r}: {self.one!r} and "
                    f"{self.many!r} must be a whole token ({self.name} topics)"
                )
            elif not token and not self.empty_tokens:
                return None, f"has an empty token ({self.name} topics)"
            else:
                steps.append(token)
        return tuple(steps), None


_DIALECTS: Final = {
    "nats": Dialect(
        "nats",
        ".",
        "*",
        ">",
        many_is_one_or_more=True,
        many_last=True,
        empty_tokens=False,
        dollar_rule=False,
    ),
    "mqtt": Dialect(
        "mqtt",
        "/",
        "+",
        "#",
        many_is_one_or_more=False,
        many_last=True,
        empty_tokens=True,
        dollar_rule=True,
    ),
    "amqp": Dialect(
        "amqp",
        ".",
        "*",
        "#",
        many_is_one_or_more=False,
        many_last=False,
        empty_tokens=True,
        dollar_rule=False,
    ),
}


def dialect_of(matching: str) -> Dialect | None:
    """The dialect of a ``topic_matching`` value (None for "exact"); ValueError if unknown."""
    if matching == "exact":
        return None
    dialect = _DIALECTS.get(matching)
    if dialect is None:
        raise ValueError(
            f"topic_matching must be one of {', '.join(TOPIC_MATCHINGS)}, got {matching!r}"
        )
    return dialect


# Shared by every node without children or subscribers (most leaves, most inner nodes): a
# 10,000-pattern trie is then a few MiB, not tens. Never mutated: _add replaces them.
_NO_CHILDREN: Final[dict[str, _Node]] = {}
_NO_SUBSCRIBERS: Final[tuple[str, ...]] = ()


@final
class _Node:
    __slots__ = ("children", "many", "one", "self_loop", "subscribers")

    def __init__(self, *, self_loop: bool = False) -> None:
        self.children: dict[str, _Node] = _NO_CHILDREN
        self.one: _Node | None = None
        self.many: _Node | None = None  # reached without consuming a token
        self.self_loop = self_loop  # a "many" node: stays here on any token
        # A list: a third of a set's size, and matching makes a set of them anyway.
        self.subscribers: tuple[str, ...] | list[str] = _NO_SUBSCRIBERS


@final
class Trie:
    """Every pattern of a topic map, sharing prefixes; matched as an NFA over the tokens, so a
    lookup costs O(tokens x live states), never a scan of the patterns."""

    __slots__ = ("_dialect", "_root", "size")

    def __init__(self, dialect: Dialect, patterns: Iterable[tuple[tuple[Step, ...], str]]) -> None:
        self._dialect = dialect
        self._root = _Node()
        self.size = 0
        for steps, address in patterns:
            self._add(steps, address)

    def _add(self, steps: tuple[Step, ...], address: str) -> None:
        node = self._root
        for step in steps:
            if step == _ONE:
                node.one = node.one or _Node()
                node = node.one
            elif step == _MANY:
                node.many = node.many or _Node(self_loop=True)
                node = node.many
            else:
                assert isinstance(step, str)  # noqa: S101 - a literal token
                if node.children is _NO_CHILDREN:
                    node.children = {}
                child = node.children.get(step)
                if child is None:
                    child = node.children[step] = _Node()
                node = child
        if node.subscribers is _NO_SUBSCRIBERS:
            node.subscribers = []
            self.size += 1  # distinct patterns ("#.#" is "#")
        assert isinstance(node.subscribers, list)  # noqa: S101 - made just above
        node.subscribers.append(address)

    def match(self, topic: str) -> set[str]:
        """The addresses of every pattern that ``topic`` matches."""
        dialect = self._dialect
        tokens = topic.split(dialect.separator)
        root = self._root
        if dialect.dollar_rule and topic.startswith("$"):
            # MQTT 4.7.2: a wildcard at the first level never matches a "$" topic.
            first = root.children.get(tokens[0])
            if first is None:
                return set()
            start, tokens = first, tokens[1:]
        else:
            start = root
        walk = _walk if dialect.many_last else _walk_nfa
        states: Iterable[_Node] = walk(start, tokens)
        found: set[str] = set()
        for node in states:
            if node.subscribers:
                found.update(node.subscribers)
        return found


def _walk(start: _Node, tokens: list[str]) -> list[_Node]:
    """The nodes ``tokens`` lead to when a "many" node ends its pattern (nats, mqtt): a node
    is then reached by one path only, so a list never holds one twice."""
    states = [start] if start.many is None else [start, start.many]
    for token in tokens:
        following: list[_Node] = []
        for node in states:
            child = node.children.get(token)
            if child is not None:
                following.append(child)
                if child.many is not None:
                    following.append(child.many)
            one = node.one
            if one is not None:
                following.append(one)
                if one.many is not None:
                    following.append(one.many)
            if node.self_loop:
                following.append(node)
        if not following:
            return following
        states = following
    return states


def _walk_nfa(start: _Node, tokens: list[str]) -> set[_Node]:
    """The nodes ``tokens`` lead to when "many" nodes may have children (amqp: "a.#.b"), so
    that several paths reach the same node: a set of states, as an NFA."""
    states = _closure({start})
    for token in tokens:
        following: set[_Node] = set()
        for node in states:
            child = node.children.get(token)
            if child is not None:
                following.add(child)
            if node.one is not None:
                following.add(node.one)
            if node.self_loop:
                following.add(node)
        if not following:
            return following
        states = _closure(following)
    return states


def _closure(states: set[_Node]) -> set[_Node]:
    """``states`` and the "many" nodes they reach without consuming a token."""
    pending = [node.many for node in states if node.many is not None]
    while pending:
        node = pending.pop()
        if node not in states:
            states.add(node)
            if node.many is not None:
                pending.append(node.many)
    return states
