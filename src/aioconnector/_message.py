"""Checking what a caller hands to ``invoke``/``submit``, and merging the headers to send."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

__all__ = [
    "IDEMPOTENCY_KEY",
    "MAX_TOPIC_LENGTH",
    "Body",
    "HeaderBlock",
    "base_headers",
    "check_topic",
    "coerce_body",
    "idempotency_key",
    "keyed_message_id",
    "merge_headers",
    "rekeyed",
    "topic_problem",
]

Body = bytes | bytearray | memoryview | str
HeaderBlock = dict[str, tuple[str, str]]  # lower-cased name -> (name as given, value)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed in header values
_TOPIC_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Framing is ours to set from the body; a caller's value could desynchronise the connection.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "host"})
#: The longest topic accepted, in characters (all ASCII, so bytes too). A topic travels as the
#: ``X-Topic`` header; this is four times AMQP's routing-key limit and Kafka's topic-name limit.
MAX_TOPIC_LENGTH = 1024
_SHOWN = 60  # characters of a rejected topic quoted in the error


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be sent as the ``X-Topic`` header, or None when it can."""
    if not topic:
        return "must not be empty"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"is {len(topic)} characters long, over the limit of {MAX_TOPIC_LENGTH}"
    if _TOPIC_CONTROL.search(topic):
        return "must not contain control characters (CR, LF, ...)"
    if not topic.isascii():
        return "must be ASCII (it is sent as the X-Topic header)"
    return None


def check_topic(topic: object) -> str:
    """``topic`` if it can be invoked; else TypeError or ValueError saying why."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, got {type(topic).__name__}")
    problem = topic_problem(topic)
    if problem is not None:
        shown = topic if len(topic) <= _SHOWN else topic[:_SHOWN] + "..."
        raise ValueError(f"topic {problem}: {shown!r}")
    return topic


def coerce_body(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    raise TypeError(f"body must be bytes, bytearray, memoryview or str, got {type(body).__name__}")


def base_headers(values: Mapping[str, str | None]) -> HeaderBlock:
    """The controller's own headers, prepared once; ``None`` values are left out."""
    return {name.lower(): (name, value) for name, value in values.items() if value is not None}


def merge_headers(
    base: HeaderBlock, topic: str, extra: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    """Base headers, ``X-Topic``, then the caller's, which replace ours case-insensitively."""
    merged = dict(base)
    merged["x-topic"] = ("X-Topic", topic)
    if extra:
        if not isinstance(extra, Mapping):
            raise TypeError(f"headers must be a mapping of str to str, got {type(extra).__name__}")
        for name, value in extra.items():
            _check_header(name, value)
            merged[name.lower()] = (name, value)
    return tuple(merged.values())


def _check_header(name: object, value: object) -> None:
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(
            f"header {name!r}: names and values must be str, got {type(value).__name__}"
        )
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP token")
    if name.lower() in _FRAMING:
        raise ValueError(f"header {name!r} is set by aioconnector and cannot be given")
    if _CONTROL.search(value):
        raise ValueError(f"header {name!r}: value must not contain CR, LF or control characters")
    if not value.isascii():
        raise ValueError(f"header {name!r}: value must be ASCII (encode it, e.g. as UTF-8 %XX)")


#: Sent with every invocation of a message that has an ``X-Message-Id``: the IETF
#: ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-key-header), as Stripe and
#: others read it, so a function can deduplicate redelivered messages across processes.
IDEMPOTENCY_KEY = "Idempotency-Key"


def keyed_message_id(headers: Mapping[str, str]) -> str | None:
    """The ``X-Message-Id`` of a message whose invocations get an ``Idempotency-Key``: one
    with a message id and without an ``Idempotency-Key`` of the caller's own."""
    message_id = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "idempotency-key":
            return None  # the caller's own key is sent as it is
        if lowered == "x-message-id":
            message_id = value
    return message_id


def idempotency_key(message_id: str, function: str) -> str:
    """The same for every delivery of the message to the function, in every process: 32 hex
    digits of SHA-256 over the message id and the function's address."""
    digest = hashlib.sha256(f"{message_id}\n{function}".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


def rekeyed(
    headers: tuple[tuple[str, str], ...], message_id: str, function: str
) -> tuple[tuple[str, str], ...]:
    """A message's headers for another of its functions: its ``Idempotency-Key`` (the last
    header) made for that function."""
    return (*headers[:-1], (IDEMPOTENCY_KEY, idempotency_key(message_id, function)))
