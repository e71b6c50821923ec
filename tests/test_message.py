"""The pure checks on what callers pass to invoke/submit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioconnector._message import base_headers, check_topic, coerce_body, merge_headers

BASE = base_headers({"User-Agent": "ua", "X-Connector": "c", "Content-Type": None})


def test_base_headers_leave_out_unset_values() -> None:
    assert BASE == {"user-agent": ("User-Agent", "ua"), "x-connector": ("X-Connector", "c")}


def test_caller_headers_replace_ours_case_insensitively_in_place() -> None:
    merged = merge_headers(BASE, "t", {"x-CONNECTOR": "mine", "X-Topic": "other", "X-Id": "1"})
    assert merged == (
        ("User-Agent", "ua"),
        ("x-CONNECTOR", "mine"),
        ("X-Topic", "other"),
        ("X-Id", "1"),
    )


def _has_control(text: str, *, allow_tab: bool) -> bool:
    return any((ord(ch) < 32 and not (allow_tab and ch == "\t")) or ord(ch) == 127 for ch in text)


@given(st.text())
def test_header_values_with_control_characters_never_pass(value: str) -> None:
    if _has_control(value, allow_tab=True):
        with pytest.raises(ValueError, match=r"'X-Value'.*CR, LF"):
            merge_headers(BASE, "t", {"X-Value": value})
    elif not value.isascii():
        with pytest.raises(ValueError, match=r"'X-Value'.*must be ASCII"):
            merge_headers(BASE, "t", {"X-Value": value})
    else:
        assert merge_headers(BASE, "t", {"X-Value": value})[-1] == ("X-Value", value)


@given(st.text())
def test_topics_are_accepted_only_without_control_characters(topic: str) -> None:
    if not topic or _has_control(topic, allow_tab=False):
        with pytest.raises(ValueError, match="topic must not"):
            check_topic(topic)
    elif not topic.isascii():
        with pytest.raises(ValueError, match="topic must be ASCII"):
            check_topic(topic)
    else:
        assert check_topic(topic) == topic


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"a", b"a"), (bytearray(b"b"), b"b"), (memoryview(b"c"), b"c"), ("\u00e9", b"\xc3\xa9")],
)
def test_bodies_become_bytes(body: object, expected: bytes) -> None:
    assert coerce_body(body) == expected
