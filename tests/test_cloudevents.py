"""The CloudEvents mapping (aioconnector._cloudevents): from the spec's own text and examples,
by property, and against the cloudevents SDK as an oracle (its HTTP binding and JSON format).

The connectors' use of it against the real brokers is in ``tests/brokers/test_cloudevents.py``.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aioconnector import SourceMessage
from aioconnector._cloudevents import (
    MODES,
    STRUCTURED_JSON,
    CloudEvents,
    CloudEventsMode,
    amqp_attributes,
    binary_headers,
    canonical,
    decode_header_value,
    encode_header_value,
    forward,
    http_attributes,
    is_json_media_type,
    mqtt_attributes,
    parse_structured,
    prefixed_attributes,
    wrap_source,
)
from aioconnector._message import coerce_body
from aioconnector.connectors import CONNECTORS

OFF, KEEP, BINARY, WRAP = (CloudEvents(mode=mode) for mode in CloudEventsMode)
SOURCE = "aioconnector/test/STREAM"
REQUIRED = {"specversion": "1.0", "id": "A234-1234-1234", "source": "/mycontext", "type": "t"}

# Any Unicode a string attribute may hold: no lone surrogates (not UTF-8 encodable).
texts = st.text(st.characters(codec="utf-8"), min_size=1)


def message(body: bytes | str = b"payload", **changes: Any) -> SourceMessage:
    return SourceMessage(topic="orders", body=body, message_id="m-1", **changes)


def structured(**members: object) -> bytes:
    return json.dumps({**REQUIRED, **members}).encode()


def body_of(result: SourceMessage) -> bytes:
    return coerce_body(result.body)


def ce_headers(result: SourceMessage) -> dict[str, str]:
    """The ``ce-*`` headers and Content-Type of a forwarded message (lower-case names)."""
    headers = {name.lower(): value for name, value in (result.headers or {}).items()}
    return {k: v for k, v in headers.items() if k.startswith("ce-") or k == "content-type"}


# -- HTTP header values (HTTP protocol binding 3.1.3.2) ---------------------------------------


def test_the_specs_example_is_encoded_as_it_says() -> None:
    assert encode_header_value("Euro \u20ac \U0001f600") == "Euro%20%E2%82%AC%20%F0%9F%98%80"


def test_space_quote_percent_and_non_printable_ascii_are_encoded_the_rest_kept() -> None:
    printable = "".join(chr(c) for c in range(0x21, 0x7F))
    kept = printable.replace('"', "").replace("%", "")
    assert encode_header_value(kept) == kept
    assert encode_header_value(' "%') == "%20%22%25"
    assert encode_header_value("\x00\x1f\x7f\x85\t") == "%00%1F%7F%C2%85%09"


@given(texts)
def test_header_values_round_trip_and_are_printable_ascii(text: str) -> None:
    encoded = encode_header_value(text)
    assert all(0x21 <= ord(c) <= 0x7E and c != '"' for c in encoded)
    assert decode_header_value(encoded) == text


def test_decoding_accepts_lower_case_unneeded_escapes_and_double_quoted_strings() -> None:
    assert decode_header_value("%e2%82%ac") == "\u20ac"
    assert decode_header_value("%41BC") == "ABC"  # unnecessarily encoded: accepted
    assert decode_header_value(' "a \\"b\\" c" ') == 'a "b" c'  # RFC 7230 quoted-string


@pytest.mark.parametrize("value", ["%C0%A0", "%FF", "%E2%82"])
def test_decoding_rejects_bytes_that_are_not_utf8(value: str) -> None:
    with pytest.raises(ValueError, match="not percent-encoded UTF-8"):
        decode_header_value(value)  # %C0%A0: the spec's overlong space


# -- the JSON event format (its section 3.2 examples, re-encoded in HTTP binary mode) ---------


def test_binary_data_is_base64_decoded() -> None:
    raw = bytes(range(256))
    body = structured(
        time="2018-04-05T17:31:00Z",
        comexampleextension1="value",
        comexampleothervalue=5,
        datacontenttype="application/vnd.apache.thrift.binary",
        data_base64=base64.b64encode(raw).decode(),
    )
    result = forward(message(body), BINARY, source=SOURCE, content_type=STRUCTURED_JSON)
    assert result.body == raw
    assert ce_headers(result) == {
        "ce-specversion": "1.0",
        "ce-type": "t",
        "ce-source": "/mycontext",
        "ce-id": "A234-1234-1234",
        "ce-time": "2018-04-05T17:31:00Z",
        "ce-comexampleextension1": "value",
        "ce-comexampleothervalue": "5",
        "content-type": "application/vnd.apache.thrift.binary",
    }


def test_string_data_of_a_non_json_type_is_the_body_as_it_is() -> None:
    body = structured(
        unsetextension=None, datacontenttype="application/xml", data='<much wow="xml"/>'
    )
    result = forward(message(body), BINARY, source=SOURCE, content_type=STRUCTURED_JSON)
    assert result.body == b'<much wow="xml"/>'
    assert ce_headers(result)["content-type"] == "application/xml"
    assert "ce-unsetextension" not in ce_headers(result)  # null: unset


def test_json_data_is_serialised() -> None:
    data = {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True, "text": "\u20ac"}
    body = structured(subject=None, datacontenttype="application/json", data=data)
    result = forward(message(body), BINARY, source=SOURCE, content_type=STRUCTURED_JSON)
    assert json.loads(body_of(result)) == data
    assert "\u20ac".encode() in body_of(result)  # UTF-8, as application/json says
    assert ce_headers(result)["content-type"] == "application/json"
    assert "ce-subject" not in ce_headers(result)


def test_data_without_a_content_type_is_json_and_says_so() -> None:
    result = forward(
        message(structured(data="I'm just a string")),
        BINARY,
        source=SOURCE,
        content_type=STRUCTURED_JSON,
    )
    assert result.body == b'"I\'m just a string"'  # a JSON string, quoted
    assert ce_headers(result)["content-type"] == "application/json"  # the implied, explicit


@pytest.mark.parametrize(
    ("content_type", "json_data"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/json", True),
        ("application/geo+json", True),
        ("APPLICATION/VND.API+JSON ;x=1", True),
        ("text/plain", False),
        ("application/jsonx", False),
        ("application/xml", False),
    ],
)
def test_json_content_types_are_subtype_json_or_plus_json(
    content_type: str, json_data: bool
) -> None:
    assert is_json_media_type(content_type) is json_data


def test_null_json_data_is_the_json_null_and_no_data_is_no_body() -> None:
    _, data = parse_structured(structured(data=None))
    assert data == b"null"  # an explicit null payload (JSON format 3.1.1)
    attributes, data = parse_structured(structured())
    assert data == b""
    assert "datacontenttype" not in attributes


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "must be JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (structured(data="x", data_base64="eA=="), "not both"),
        (structured(data_base64="!!"), "not base64"),
        (structured(datacontenttype="text/plain", data={"a": 1}), "must be a string"),
        (structured(id=""), "lacks id"),
        (json.dumps({"specversion": "1.0", "data": 1}).encode(), "lacks id, source, type"),
        (structured(specversion="0.3"), "specversion '0.3'"),
        (structured(Bad_Name="x"), "not a CloudEvents attribute name"),
        (structured(ratio=0.5), "a float is not a CloudEvents value"),
        (structured(nested={"a": 1}), "a dict is not a CloudEvents value"),
        (structured(datacontenttype="text/plain\r\nX-Evil: 1", data="x"), "Content-Type"),
    ],
)
def test_a_structured_event_that_cannot_be_converted_says_why(body: bytes, problem: str) -> None:
    with pytest.raises((ValueError, TypeError), match=problem):
        forward(message(body), BINARY, source=SOURCE, content_type=STRUCTURED_JSON)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (-5, "-5"),
        ("x y", "x y"),
        (bytearray(b"\x00\xff"), "AP8="),  # Binary: base64
        (datetime(2018, 4, 5, 17, 31, tzinfo=timezone(timedelta(hours=2))), "2018-04-05T15:31:00Z"),
    ],
)
def test_values_become_their_canonical_strings(value: object, text: str) -> None:
    assert canonical("attr", value) == text


# -- the modes ------------------------------------------------------------------------------


def test_off_changes_nothing_even_for_a_cloudevent() -> None:
    for body in (b"plain", structured(data=1)):
        original = message(body)
        attributes = {"specversion": "1.0", "id": "1"}
        assert forward(original, OFF, source=SOURCE, attributes=attributes) is original


@pytest.mark.parametrize("settings", [KEEP, BINARY])
def test_plain_messages_are_unchanged_unless_wrapped(settings: CloudEvents) -> None:
    for original in (
        message(b"plain"),
        message(b'{"specversion": "1.0"}'),  # not the required attributes: not an event
        message(structured(data=1), headers={"Content-Type": "application/json"}),
    ):
        content_type = (original.headers or {}).get("Content-Type")
        assert forward(original, settings, source=SOURCE, content_type=content_type) is original


@pytest.mark.parametrize("settings", [KEEP, BINARY, WRAP])
def test_a_binary_mode_event_is_forwarded_in_http_binary_mode(settings: CloudEvents) -> None:
    attributes = {**REQUIRED, "subject": "Euro \u20ac", "traceparent": "00-abc-def-01"}
    original = message(b"<data/>", headers={"X-Delivery-Count": "2", "ce-stale": "x"})
    result = forward(
        original, settings, source=SOURCE, attributes=attributes, content_type="text/xml"
    )
    assert result.body == b"<data/>"
    assert result.headers == {
        "X-Delivery-Count": "2",  # the connector's own headers stay
        "ce-specversion": "1.0",
        "ce-id": "A234-1234-1234",
        "ce-source": "/mycontext",
        "ce-type": "t",
        "ce-subject": "Euro%20%E2%82%AC",
        "ce-traceparent": "00-abc-def-01",
        "Content-Type": "text/xml",
    }


def test_a_binary_mode_datacontenttype_attribute_becomes_the_content_type() -> None:
    attributes = {**REQUIRED, "datacontenttype": "application/json"}
    result = forward(message(b"{}"), KEEP, source=SOURCE, attributes=attributes)
    assert ce_headers(result)["content-type"] == "application/json"
    assert "ce-datacontenttype" not in ce_headers(result)  # HTTP binding 3.1.1: MUST NOT


def test_keep_passes_a_structured_event_through_with_its_media_type() -> None:
    body = structured(data={"a": 1})
    declared = forward(
        message(body), KEEP, source=SOURCE, content_type=STRUCTURED_JSON + "; charset=utf-8"
    )
    assert declared.body == body
    assert ce_headers(declared) == {"content-type": STRUCTURED_JSON + "; charset=utf-8"}
    sniffed = forward(message(b"  \n" + body, headers={"Content-Type": "x/y"}), KEEP, source=SOURCE)
    assert sniffed.body == b"  \n" + body
    assert sniffed.headers == {"Content-Type": STRUCTURED_JSON}  # the connector's replaced


def test_binary_and_wrap_convert_a_structured_event_declared_or_recognised() -> None:
    body = structured(datacontenttype="text/plain", data="hello", traceparent="00-t-s-01")
    for settings in (BINARY, WRAP):
        for content_type in (STRUCTURED_JSON, None):
            result = forward(message(body), settings, source=SOURCE, content_type=content_type)
            assert result.body == b"hello"
            assert ce_headers(result) == {
                **{f"ce-{name}": value for name, value in REQUIRED.items()},
                "ce-traceparent": "00-t-s-01",
                "content-type": "text/plain",
            }


def test_a_str_body_is_recognised_and_converted_too() -> None:
    result = forward(message(structured(data=[1]).decode()), BINARY, source=SOURCE)
    assert result.body == b"[1]"


@pytest.mark.parametrize("settings", [KEEP, BINARY, WRAP])
@pytest.mark.parametrize(
    "content_type", ["application/cloudevents-batch+json", "application/cloudevents+avro"]
)
def test_a_batch_or_another_event_format_goes_on_as_it_came(
    settings: CloudEvents, content_type: str
) -> None:
    result = forward(message(b"[]"), settings, source=SOURCE, content_type=content_type)
    assert result.body == b"[]"
    assert ce_headers(result) == {"content-type": content_type}


def test_wrap_makes_a_plain_message_a_binary_mode_event() -> None:
    settings = CloudEvents(mode="wrap", type="com.example.order")
    original = message(b"plain", headers={"Content-Type": "text/plain", "X-Delivery-Count": "1"})
    time = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
    result = forward(original, settings, source=wrap_source("nats", "EVENTS"), time=time)
    assert result.body == b"plain"
    assert result.headers == {
        "X-Delivery-Count": "1",
        "ce-specversion": "1.0",
        "ce-id": "m-1",
        "ce-source": "aioconnector/nats/EVENTS",
        "ce-type": "com.example.order",
        "ce-subject": "orders",
        "ce-time": "2024-05-06T07:08:09.123000Z",
        "Content-Type": "text/plain",
    }


def test_wrap_gives_a_message_without_an_id_a_random_one_and_omits_what_it_lacks() -> None:
    first, second = (
        forward(SourceMessage(topic="t", body=b"x"), WRAP, source=SOURCE) for _ in range(2)
    )
    assert ce_headers(first)["ce-id"] != ce_headers(second)["ce-id"]
    assert set(ce_headers(first)) == {
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-subject",
    }


def test_the_source_of_wrapped_messages_is_one_path_segment_per_name() -> None:
    assert wrap_source("redis", "orders") == "aioconnector/redis/orders"
    assert wrap_source("mqtt", "host:1883") == "aioconnector/mqtt/host:1883"
    assert wrap_source("rabbitmq", "a/b c") == "aioconnector/rabbitmq/a%2Fb%20c"


def test_settings_take_a_mode_by_name_and_refuse_an_empty_type() -> None:
    assert CloudEvents(mode="binary").mode is CloudEventsMode.BINARY
    assert CloudEvents().mode is CloudEventsMode.KEEP  # the default keeps plain messages
    assert MODES == ("off", "keep", "binary", "wrap")
    with pytest.raises(ValueError, match="'sometimes' is not a valid CloudEventsMode"):
        CloudEvents(mode="sometimes")
    with pytest.raises(ValueError, match="cloudevents_type must not be empty"):
        CloudEvents(type=" ")


def test_binary_headers_refuse_what_http_cannot_carry() -> None:
    with pytest.raises(ValueError, match="'bad-name' is not a CloudEvents attribute name"):
        binary_headers({"bad-name": "x"})
    with pytest.raises(ValueError, match="cannot be an HTTP Content-Type"):
        binary_headers({"datacontenttype": "text/\u00e9"})


# -- the brokers' bindings ------------------------------------------------------------------


def test_http_and_nats_attributes_are_the_ce_headers_decoded() -> None:
    headers = {"Ce-Id": "1", "ce-SUBJECT": "a%20b", "ce-x": '"q"', "Nats-Msg-Id": "9"}
    assert http_attributes(headers) == {"id": "1", "subject": "a b", "x": "q"}


def test_amqp_attributes_take_all_three_prefixes_and_native_values() -> None:
    headers: dict[str, object] = {
        "cloudEvents_id": "1",
        "cloudEvents:specversion": "1.0",
        "ce-source": "/s",
        "cloudEvents_flag": True,
        "cloudEvents_count": 7,
        "cloudEvents_time": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "cloudEvents_blob": bytearray(b"\x01"),
        "x-delivery-count": 2,
        "traceparent": "00-x",
    }
    assert amqp_attributes(headers) == {
        "id": "1",
        "specversion": "1.0",
        "source": "/s",
        "flag": "true",
        "count": "7",
        "time": "2024-01-02T03:04:05Z",
        "blob": "AQ==",
    }
    # The cloudevents SDK's AMQP binding sends ``time`` as milliseconds since the epoch.
    assert amqp_attributes({"cloudEvents_time": 1704164645000}) == {"time": "2024-01-02T03:04:05Z"}
    with pytest.raises(ValueError, match="a float is not a CloudEvents value"):
        amqp_attributes({"cloudEvents_ratio": 0.5})


def test_mqtt_attributes_are_user_properties_when_specversion_is_one() -> None:
    pairs = [("specversion", "1.0"), ("id", "1"), ("my prop", "x"), ("traceparent", "00-y")]
    assert mqtt_attributes(pairs) == {"specversion": "1.0", "id": "1", "traceparent": "00-y"}
    assert mqtt_attributes([("id", "1"), ("traceparent", "00-y")]) == {}  # not an event
    assert mqtt_attributes(None) == {}


def test_redis_attributes_are_the_ce_underscore_fields() -> None:
    fields = {b"ce_id": b"1", b"ce_Subject": "\u20ac".encode(), b"body": b"x", b"topic": b"t"}
    assert prefixed_attributes(fields, b"ce_") == {"id": "1", "subject": "\u20ac"}
    with pytest.raises(ValueError, match="must be UTF-8"):
        prefixed_attributes({b"ce_id": b"\xff"}, b"ce_")


@pytest.mark.parametrize("broker", sorted(CONNECTORS))
def test_every_connector_has_the_flags_and_variables(broker: str) -> None:
    connector = CONNECTORS[broker]
    default = connector.settings({}, {}).options
    assert (default.cloudevents, default.cloudevents_type) == (
        "keep",
        f"aioconnector.{broker}.message",
    )
    environ = {f"{broker}_cloudevents": "wrap", f"{broker}_cloudevents_type": "com.example.x"}
    options = connector.settings({}, environ).options
    assert (options.cloudevents, options.cloudevents_type) == ("wrap", "com.example.x")
    flagged = connector.settings({"cloudevents": "binary"}, environ).options
    assert flagged.cloudevents == "binary"  # the flag wins
    with pytest.raises(ValueError, match=f"{broker}_cloudevents: expected one of off, keep"):
        connector.settings({}, {f"{broker}_cloudevents": "yes"})
    with pytest.raises(ValueError, match="cloudevents_type must not be blank"):
        connector.options(cloudevents_type=" ")  # at once, not when the connector runs


# -- trace context: a CloudEvent's traceparent extension still parents the consumer span -----


@pytest.mark.parametrize("settings", [KEEP, BINARY])
def test_the_traceparent_extension_is_found_after_forwarding(settings: CloudEvents) -> None:
    from aioconnector._tracing import _carrier

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = structured(traceparent=parent, data=1)
    converted = forward(message(body), settings, source=SOURCE, content_type=STRUCTURED_JSON)
    assert _carrier(converted)["traceparent"] == parent
    attributes = {**REQUIRED, "traceparent": parent}
    binary = forward(message(b"x"), settings, source=SOURCE, attributes=attributes)
    assert _carrier(binary)["traceparent"] == parent


# -- the cloudevents SDK as an oracle ---------------------------------------------------------


def _sdk() -> Any:
    return pytest.importorskip(
        "cloudevents.core.bindings.http", reason="the oracle: pip install cloudevents"
    )


@given(texts)
def test_header_values_are_encoded_as_the_sdk_encodes_them(text: str) -> None:
    http = _sdk()
    assert encode_header_value(text) == http._encode_header_value(text)


names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda n: (
        n
        not in {
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "data",
            "datacontenttype",
            "dataschema",
        }
    )
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
payloads = st.one_of(
    st.tuples(
        st.sampled_from(["application/json", "application/cloudevents-data+json", None]),
        st.dictionaries(texts, json_values, min_size=1, max_size=4),
    ),
    st.tuples(st.sampled_from(["text/plain", "application/xml; charset=utf-8"]), texts),
    st.tuples(st.just("application/octet-stream"), st.binary(min_size=1)),
)


@given(
    id=texts,
    source=texts,
    type=texts,
    subject=st.none() | texts,
    time=st.datetimes(timezones=st.just(timezone.utc)),
    extensions=st.dictionaries(names, texts, max_size=3),
    payload=payloads,
)
def test_structured_to_binary_agrees_with_the_sdk(
    *,
    id: str,
    source: str,
    type: str,
    subject: str | None,
    time: datetime,
    extensions: dict[str, str],
    payload: tuple[str | None, dict[str, object] | str | bytes],
) -> None:
    """An event the SDK writes in structured mode, converted by us to HTTP binary mode, is
    read back by the SDK as the same event (the implied application/json made explicit)."""
    http = _sdk()
    from cloudevents.core.v1.event import CloudEvent

    content_type, data = payload
    attributes: dict[str, Any] = {"id": id, "source": source, "type": type, "time": time}
    attributes |= extensions
    if subject is not None:
        attributes["subject"] = subject
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    event = CloudEvent(dict(attributes), data)
    sent = http.to_structured_event(event)

    result = forward(
        message(sent.body), BINARY, source=SOURCE, content_type=sent.headers["content-type"]
    )
    received = http.from_binary_event(
        http.HTTPMessage(headers=dict(result.headers or {}), body=body_of(result))
    )
    expected = {**event.get_attributes(), "datacontenttype": content_type or "application/json"}
    assert received.get_attributes() == expected
    got = received.get_data()
    if isinstance(data, bytes):  # the SDK reads UTF-8 bytes back as str
        got = got.encode() if isinstance(got, str) else got
    assert got == data
