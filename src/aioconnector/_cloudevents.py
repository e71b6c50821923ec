"""CloudEvents: recognised in a broker's message, forwarded to functions over HTTP.

A source message is a CloudEvent when its broker's protocol binding says so:

- *binary mode*: the attributes travel as the broker's headers (``ce-*`` headers for NATS and
  HTTP; ``cloudEvents_*``, ``cloudEvents:*`` or ``ce-*`` application headers for AMQP; MQTT 5
  user properties named as the attributes; ``ce_*`` fields for Redis), with ``specversion``
  among them, the data as the payload and ``datacontenttype`` as the broker's content type;
- *structured mode*: the payload is the JSON event format, declared by the content type
  ``application/cloudevents+json`` or, where no content type was given (the NATS and MQTT 3.1.1
  bindings imply it; Redis and PostgreSQL have none), recognised as a JSON object with the
  required attributes ``specversion``, ``id``, ``source`` and ``type``.

`forward` makes of it what functions receive, by `CloudEventsMode`, per the CloudEvents HTTP
protocol binding 1.0.2: in HTTP binary mode, each attribute as a ``ce-<name>`` header whose
value is percent-encoded (space, ``"``, ``%`` and all but printable ASCII, as UTF-8 ``%XX``),
``datacontenttype`` as ``Content-Type`` and the data as the body (``data_base64`` decoded,
JSON ``data`` serialised, with the implied ``application/json`` made explicit as the JSON
format says); in structured mode, the body as it came with ``Content-Type:
application/cloudevents+json``. A batch (``application/cloudevents-batch+json``) or another
event format (``application/cloudevents+avro``...) goes on as it came, with its content type.

Everything here is a pure function. A message that claims to be a CloudEvent but breaks its
binding (an attribute name that is not lower-case letters and digits, a value that is not a
CloudEvents type, bad percent-encoding, a structured event that is not a JSON event of
specversion 1.0 when it must be converted) raises ``ValueError`` (``TypeError`` for a JSON
member of the wrong type), which `run_source` settles INVALID, logging why.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote

import attrs

from ._message import coerce_body

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._message import Body
    from ._source import SourceMessage

__all__ = [
    "MODES",
    "STRUCTURED_JSON",
    "CloudEvents",
    "CloudEventsMode",
    "amqp_attributes",
    "binary_headers",
    "canonical",
    "decode_header_value",
    "encode_header_value",
    "find_header",
    "format_time",
    "forward",
    "http_attributes",
    "is_json_media_type",
    "mqtt_attributes",
    "parse_structured",
    "prefixed_attributes",
    "wrap_source",
]

STRUCTURED_JSON: Final = "application/cloudevents+json"
_CLOUDEVENTS_MEDIA: Final = "application/cloudevents"  # also -batch+json, +avro, ...
_SPECVERSION: Final = "1.0"
_REQUIRED: Final = ("specversion", "id", "source", "type")
_DATA_MEMBERS: Final = ("data", "data_base64")
_NAME: Final = re.compile(r"[a-z0-9]+")  # the spec's attribute names
# Kept as they are in a header value: printable ASCII but space, double quote and percent.
_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')
_QUOTED_PAIR: Final = re.compile(r"\\(.)", re.DOTALL)
_HEADER_TEXT: Final = re.compile(r"[\t\x20-\x7e]*")
_OBJECT: Final = re.compile(rb"[ \t\r\n]*\{")  # JSON whitespace, then an object
_ABSENT: Final = object()
_SEGMENT: Final = "!$&'()*+,;=:@"  # what a URI path segment may hold besides unreserved
_AMQP_PREFIXES: Final = ("cloudEvents_", "cloudEvents:", "ce-")  # the spec's two, the SDK's one


class CloudEventsMode(enum.Enum):
    """What `forward` does with CloudEvents and with plain messages."""

    OFF = "off"
    """Nothing: every message is forwarded as it is today, broker headers not read."""
    KEEP = "keep"
    """Each CloudEvent in the mode it came in: binary mode as HTTP binary mode (``ce-*``
    headers added, the body unchanged), structured mode with its body unchanged and
    ``Content-Type: application/cloudevents+json``. Plain messages unchanged."""
    BINARY = "binary"
    """Every CloudEvent in HTTP binary mode: structured ones are converted. Plain messages
    unchanged."""
    WRAP = "wrap"
    """As BINARY, and each plain message wrapped as a CloudEvent in HTTP binary mode."""


MODES: Final = tuple(mode.value for mode in CloudEventsMode)
"""The modes by name, as the connectors' ``--cloudevents`` flag takes them."""


def _check_type(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"cloudevents_type must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("cloudevents_type must not be empty (it is a required attribute)")


@attrs.frozen(kw_only=True)
class CloudEvents:
    """How a connector forwards CloudEvents: its mode, and the ``type`` of wrapped messages."""

    mode: CloudEventsMode = attrs.field(default=CloudEventsMode.KEEP, converter=CloudEventsMode)
    type: str = attrs.field(default="aioconnector.message", validator=_check_type)

    @property
    def wraps(self) -> bool:
        """Whether plain messages are wrapped (and so need their ``time``)."""
        return self.mode is CloudEventsMode.WRAP


def forward(
    message: SourceMessage,
    settings: CloudEvents,
    *,
    source: str,
    attributes: Mapping[str, str] | None = None,
    content_type: str | None = None,
    time: datetime | None = None,
) -> SourceMessage:
    """``message`` as functions get it under ``settings.mode``.

    ``attributes``: the binary-mode attributes the broker's headers carried (see
    `http_attributes` and its kin), decoded; ``content_type``: the content type the broker's
    message declared (not one the connector chose). A wrapped message (WRAP) gets ``id`` =
    ``message.message_id`` (a random one when it has none), ``source``, ``type`` =
    ``settings.type``, ``subject`` = its topic, ``time`` when given, and ``datacontenttype``
    = ``content_type`` or the ``Content-Type`` among ``message.headers``. ``ValueError`` (or
    ``TypeError``) when the message claims to be a CloudEvent but breaks its binding.
    """
    mode = settings.mode
    if mode is CloudEventsMode.OFF:
        return message
    media = _media_type(content_type)
    if media == STRUCTURED_JSON or (
        media is None and not _is_binary(attributes) and _looks_structured(message.body)
    ):
        if mode is CloudEventsMode.KEEP:
            return _replace(
                message, message.body, {"Content-Type": content_type or STRUCTURED_JSON}
            )
        event, data = parse_structured(coerce_body(message.body))
        return _replace(message, data, binary_headers(event))
    if media is not None and media.startswith(_CLOUDEVENTS_MEDIA):
        return _replace(message, message.body, {"Content-Type": content_type or media})
    if attributes is not None and "specversion" in attributes:
        declared = {"datacontenttype": content_type} if content_type else {}
        return _replace(message, message.body, binary_headers({**attributes, **declared}))
    if mode is CloudEventsMode.WRAP:
        return _wrap(message, settings, source, content_type, time)
    return message


def _wrap(
    message: SourceMessage,
    settings: CloudEvents,
    source: str,
    content_type: str | None,
    time: datetime | None,
) -> SourceMessage:
    event = {
        "specversion": _SPECVERSION,
        "id": message.message_id or uuid.uuid4().hex,  # REQUIRED: a random one, at worst
        "source": source,
        "type": settings.type,
        "subject": message.topic,
    }
    if time is not None:
        event["time"] = format_time(time)
    data_type = content_type or find_header(message.headers, "content-type")
    if data_type:
        event["datacontenttype"] = data_type
    return _replace(message, message.body, binary_headers(event))


def _replace(message: SourceMessage, body: Body, headers: Mapping[str, str]) -> SourceMessage:
    """The message with ``body``, and ``headers`` in place of its content type and ``ce-*``."""
    kept = {
        name: value
        for name, value in (message.headers or {}).items()
        if name.lower() != "content-type" and not name.lower().startswith("ce-")
    }
    return attrs.evolve(message, body=body, headers={**kept, **headers})


def find_header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of header ``name`` (lower case) among ``headers`` in any case, or None."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _is_binary(attributes: Mapping[str, str] | None) -> bool:
    return attributes is not None and "specversion" in attributes


def _media_type(content_type: str | None) -> str | None:
    """``type/subtype`` in lower case, without parameters; None when there is none."""
    if content_type is None:
        return None
    media = content_type.partition(";")[0].strip().lower()
    return media or None


def is_json_media_type(content_type: str) -> bool:
    """Whether ``content_type`` declares JSON data: ``*/json`` or ``*/*+json`` (JSON format
    3.1.1)."""
    subtype = (_media_type(content_type) or "").partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def _looks_structured(body: Body) -> bool:
    """Whether an undeclared payload is a JSON event: an object with the required attributes."""
    data = coerce_body(body)
    if not _OBJECT.match(data) or b'"specversion"' not in data:
        return False  # the cheap test: most payloads stop here
    try:
        event = json.loads(data)
    except ValueError:
        return False
    return isinstance(event, dict) and all(isinstance(event.get(name), str) for name in _REQUIRED)


# -- HTTP binary mode: attributes as headers ------------------------------------------------


def binary_headers(attributes: Mapping[str, str]) -> dict[str, str]:
    """The HTTP headers of a binary-mode event: ``ce-<name>`` for each attribute (value
    percent-encoded), ``Content-Type`` for ``datacontenttype``."""
    headers: dict[str, str] = {}
    for name, value in attributes.items():
        _check_name(name)
        if name == "datacontenttype":
            if not _HEADER_TEXT.fullmatch(value):
                raise ValueError(f"datacontenttype {value!r} cannot be an HTTP Content-Type")
            headers["Content-Type"] = value.strip()
        else:
            headers[f"ce-{name}"] = encode_header_value(value)
    return headers


def encode_header_value(value: str) -> str:
    """An attribute's canonical string as an HTTP header value (HTTP binding 3.1.3.2): each
    space, double quote, percent and character outside U+0021-U+007E as its UTF-8 bytes
    ``%XX``, upper-case."""
    return quote(value, safe=_SAFE)


def decode_header_value(value: str) -> str:
    """A ``ce-*`` header value as the attribute's string: a double-quoted string unescaped,
    then one round of percent-decoding; ``ValueError`` for bytes that are not UTF-8 (an
    overlong ``%C0%A0`` included)."""
    text = value.strip(" \t")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = _QUOTED_PAIR.sub(r"\1", text[1:-1])
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"header value {value!r} is not percent-encoded UTF-8") from None


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a CloudEvents attribute name (lower-case letters and digits)"
        )


# -- the JSON event format --------------------------------------------------------------------


def parse_structured(body: bytes) -> tuple[dict[str, str], bytes]:
    """A JSON-format event's attributes (canonical strings, ``null`` ones left out) and its
    data as bytes: ``data_base64`` decoded, ``data`` serialised as JSON when
    ``datacontenttype`` is JSON or absent (then set to the implied ``application/json``),
    else the string it must be. ``ValueError`` when it is not a JSON event of specversion 1.0.
    """
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"a structured CloudEvent must be JSON: {exc}") from None
    if not isinstance(event, dict):
        raise TypeError(
            f"a structured CloudEvent must be a JSON object, got {type(event).__name__}"
        )
    attributes = {
        name: canonical(name, value)
        for name, value in event.items()
        if name not in _DATA_MEMBERS and value is not None
    }
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        raise ValueError(f"the structured CloudEvent lacks {', '.join(missing)}")
    if attributes["specversion"] != _SPECVERSION:
        raise ValueError(
            f"specversion {attributes['specversion']!r} cannot be converted (only {_SPECVERSION})"
        )
    return attributes, _data(event, attributes)


def _data(event: dict[str, object], attributes: dict[str, str]) -> bytes:
    encoded, value = event.get("data_base64"), event.get("data", _ABSENT)
    if encoded is not None and value is not _ABSENT:
        raise ValueError("a CloudEvent has data or data_base64, not both")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise ValueError(f"data_base64 must be a string, got {type(encoded).__name__}")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"data_base64 is not base64: {exc}") from None
    if value is _ABSENT:
        return b""
    data_type = attributes.get("datacontenttype")
    if data_type is None or is_json_media_type(data_type):
        attributes.setdefault("datacontenttype", "application/json")  # JSON format 3.1.2
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
    if value is None:
        return b""
    if not isinstance(value, str):
        raise TypeError(
            f"data must be a string when datacontenttype {data_type!r} is not JSON, "
            f"got {type(value).__name__}"
        )
    return value.encode()


def canonical(name: str, value: object) -> str:
    """An attribute value as its canonical string: a JSON or AMQP Boolean, Integer, String,
    Binary (base64) or Timestamp (RFC 3339; an AMQP integer ``time`` is ms since the epoch).
    ``ValueError`` for a bad name or any other type."""
    _check_name(name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        if name == "time":  # a native AMQP timestamp, as the cloudevents SDK sends it
            return format_time(datetime.fromtimestamp(value / 1000, timezone.utc))
        return str(value)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    raise ValueError(f"attribute {name!r}: a {type(value).__name__} is not a CloudEvents value")


def format_time(time: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; a naive datetime is taken as UTC."""
    if time.tzinfo is None:
        time = time.replace(tzinfo=timezone.utc)
    return time.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def wrap_source(broker: str, name: str) -> str:
    """The ``source`` of a wrapped message: ``aioconnector/<broker>/<name>`` (``name``, the
    stream, exchange, channel... percent-encoded where a URI path segment needs it)."""
    return f"aioconnector/{broker}/{quote(name, safe=_SEGMENT)}"


# -- the brokers' bindings: where binary-mode attributes are --------------------------------


def http_attributes(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The ``ce-*`` headers of an HTTP or NATS message, names in lower case, values
    percent-decoded."""
    return {
        name[3:].lower(): decode_header_value(value)
        for name, value in (headers or {}).items()
        if name[:3].lower() == "ce-"
    }


def amqp_attributes(headers: Mapping[str, object] | None) -> dict[str, str]:
    """The AMQP application headers ``cloudEvents_<name>`` and ``cloudEvents:<name>`` (the
    AMQP binding) and ``ce-<name>`` (the cloudevents SDK's RabbitMQ binding), native AMQP
    values as canonical strings."""
    found: dict[str, str] = {}
    for header, value in (headers or {}).items():
        prefix = next((p for p in _AMQP_PREFIXES if header.startswith(p)), None)
        if prefix is not None:
            name = header[len(prefix) :].lower()
            found[name] = canonical(name, value)
    return found


def mqtt_attributes(user_properties: Iterable[tuple[str, str]] | None) -> dict[str, str]:
    """MQTT 5 user properties named as attributes, when ``specversion`` is one of them (other
    user properties share the space and are left out)."""
    pairs = list(user_properties or ())
    if not any(name == "specversion" for name, _ in pairs):
        return {}
    return {name: value for name, value in pairs if _NAME.fullmatch(name)}


def prefixed_attributes(fields: Mapping[bytes, bytes], prefix: bytes) -> dict[str, str]:
    """Fields named ``<prefix><attribute>`` (Redis entries: ``ce_``), as UTF-8 text."""
    found: dict[str, str] = {}
    for field, value in fields.items():
        if field.startswith(prefix):
            try:
                name, text = field[len(prefix) :].decode().lower(), value.decode()
            except UnicodeDecodeError:
                raise ValueError(
                    f"field {field!r}: a CloudEvents attribute must be UTF-8"
                ) from None
            found[name] = text
    return found
