"""Scenario h: what routing a message topic costs at 10,000 subscriptions, per topic dialect.

No gateway and no event loop: ``TopicMap.build`` and ``functions_for``, timed in this (fresh)
child process. Each function has one annotation topic over a three-level hierarchy
``s<a>.d<b>.<c>`` (``/`` for mqtt), a in 0..99, b in 0..99, a quarter each of:
``s<a>.d<b>.*`` (one token), ``s<a>.*.m<b>``, ``s<a>.d<b>.>`` (``#`` in mqtt and amqp: the
rest), and the plain topic ``s<a>.d<b>.m<b>``. In the exact dialect the same strings are all
plain topics (a wildcard is a literal there), as OpenFaaS routes them.

Measured, in µs per ``functions_for`` call (the loop included, best of 5 rounds):

- plain: a topic some annotation names (worked out when the map is built: one dict lookup);
- hit: a message topic looked up before (in the cache: one dict lookup);
- miss: a message topic never seen (matched by the trie, then cached; the cache's emptying
  every 4,096 new topics included);
- for the exact dialect, ``plain`` is a subscribed topic and ``miss`` an unknown one.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any, Final

from aioconnector._topics import TopicMap
from aioconnector._wildcards import dialect_of

Job = dict[str, Any]
ROUNDS: Final = 5
_SYNTAX: Final = {  # separator, one-token wildcard, rest-of-topic wildcard
    "exact": (".", "*", ">"),
    "nats": (".", "*", ">"),
    "mqtt": ("/", "+", "#"),
    "amqp": (".", "*", "#"),
}


def subscriptions(matching: str, count: int) -> list[tuple[str, list[str]]]:
    """``count`` functions, one annotation topic each (see the module docstring)."""
    sep, one, rest = _SYNTAX[matching]
    routes = []
    for i in range(count):
        a, b = i % 100, i // 100 % 100
        shape = i % 4
        last = (one, f"m{b}", rest, f"m{b}")[shape]
        middle = one if shape == 1 else f"d{b}"
        # Past 10,000 (a: 100 x b: 100), a fourth level keeps every subscription distinct.
        extra = f"{sep}x{i // 10_000}" if i >= 10_000 and shape == 3 else ""
        routes.append((f"fn{i}", [f"s{a}{sep}{middle}{sep}{last}{extra}"]))
    return routes


def _per_call(topic_map: TopicMap, topics: list[str]) -> float:
    """µs per call over ``topics``, once."""
    functions_for = topic_map.functions_for
    began = time.perf_counter()
    for topic in topics:
        functions_for(topic)
    return (time.perf_counter() - began) / len(topics) * 1e6


def measure(matching: str, count: int, lookups: int) -> dict[str, Any]:
    """The figures of one dialect (see the module docstring)."""
    sep = _SYNTAX[matching][0]
    routes = subscriptions(matching, count)
    began = time.perf_counter()
    topic_map = TopicMap.build(routes, matching=matching)
    build_ms = (time.perf_counter() - began) * 1000
    tracemalloc.start()  # a second build, traced (tracing slows it: not the one timed)
    traced = TopicMap.build(routes, matching=matching)
    map_kib = tracemalloc.get_traced_memory()[0] / 1024
    tracemalloc.stop()
    del traced
    dialect = dialect_of(matching)
    patterns = 0 if dialect is None else sum(map(dialect.is_pattern, topic_map.topics()))

    # The annotations' plain topics (every fourth function), over and over.
    named = [topics[0] for _, topics in routes[3::4]]
    plain = [named[k % len(named)] for k in range(lookups)]
    seen = [f"s{k % 100}{sep}d{k % 97}{sep}x{k % 10}" for k in range(1000)]
    hits = [seen[k % len(seen)] for k in range(lookups)]
    for topic in seen:
        topic_map.functions_for(topic)
    best = {"plain": math.inf, "hit": math.inf, "miss": math.inf}
    matched = 0.0
    for round_ in range(ROUNDS):
        # New names every round: each one is a miss (the trie, then into the cache).
        fresh = [f"s{k % 100}{sep}d{k // 100 % 100}{sep}r{round_}n{k}" for k in range(lookups)]
        best["plain"] = min(best["plain"], _per_call(topic_map, plain))
        best["hit"] = min(best["hit"], _per_call(topic_map, hits))
        best["miss"] = min(best["miss"], _per_call(topic_map, fresh))
        if round_ == 0:
            sample = fresh[:1000]
            matched = sum(len(topic_map.functions_for(t)) for t in sample) / len(sample)
    return {
        "subscriptions": count,
        "patterns": patterns,
        "build_ms": build_ms,
        "map_kib": map_kib,
        "plain_us": best["plain"],
        "hit_us": best["hit"],
        "miss_us": best["miss"],
        "matched_per_miss": matched,
        "lookups": lookups,
    }


async def run_matching(job: Job) -> None:
    """One dialect's row (the event loop only hosts it: nothing here awaits)."""
    from _measure import emit  # noqa: PLC0415  (no import cycle at load time)

    row = measure(job["mode"], job["subscriptions"], job["lookups"])
    emit(
        {
            "scenario": job["scenario"],
            "case": "matching",
            "backend": job["backend"],
            "client": job["client"],
            "mode": job["mode"],
            "concurrency": 1,
            "failed": 0,
            "error": None,
            **row,
        }
    )
