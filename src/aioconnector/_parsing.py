"""Parsing the text of environment variables and annotations: Go durations and booleans."""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["parse_bool", "parse_duration"]

_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_MICRO = Fraction(1, 10**6)
_UNITS = {"ns": Fraction(1, 10**9), "us": _MICRO, "ms": Fraction(1, 1000), "s": Fraction(1)}
_UNITS |= {"m": Fraction(60), "h": Fraction(3600)}
_UNITS |= {"\u00b5s": _MICRO, "\u03bcs": _MICRO}  # Go accepts both micro signs
_DURATION_HINT = "(use e.g. 30s, 1m30s, 500ms or plain seconds)"


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``"1m30s"``, ``"500ms"``) or a plain number of seconds."""
    value = text.strip()
    if value.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    # No real duration is this long; the cap also bounds the Fraction arithmetic.
    if not value or len(value) > 100:
        raise ValueError(f"invalid duration {text!r} {_DURATION_HINT}")
    if _PLAIN_NUMBER.fullmatch(value):
        return float(Fraction(value))
    total, position = Fraction(0), 0
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r} {_DURATION_HINT}")
        total += Fraction(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return float(total)


_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no`` or ``on/off``, in any case."""
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid boolean {text!r} (use true or false)") from None
