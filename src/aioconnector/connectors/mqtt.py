"""MQTT to OpenFaaS (aiomqtt): topic filters subscribed with QoS 1; the MQTT topic is the topic.

Each message published on a topic matching --topics (e.g. 'sensors/#') goes to the OpenFaaS
functions whose `topic` annotation names that exact topic ('sensors/kitchen/temp'), with
X-Message-Id set to a hash of its topic and payload. That id is the same for a redelivered
copy, which is what functions deduplicate, but also for two messages with the same payload on
the same topic: put a unique id in the payload if that matters. (The MQTT packet id would be
worse: it is reused for unrelated messages within seconds.)

What QoS 1 guarantees here depends on --client-id:

- Without it (the default): a clean session, and aiomqtt 2.x acknowledges (PUBACK) each message
  as soon as it is received, before any function is invoked: it has no manual acks (aiomqtt
  issue #345). So delivery is at most once from the moment the broker hands a message over: a
  crash or a stop loses what was received but not yet invoked, and messages published while the
  connector is down are not kept for it.
- With --client-id: a persistent session (clean_session=False) under that id, and acks sent
  only after the message is settled, through paho-mqtt's manual acks (reached through aiomqtt's
  private `_client`, until aiomqtt exposes them). The broker keeps the QoS 1 messages
  published while the connector is down and resends those it did not get a PUBACK for when the
  same id reconnects: at least once across stops and crashes. Run a single instance per id.
  The broker's in-flight window (mosquitto's max_inflight_messages, 20) then also bounds the
  messages in flight. Acks may go out of the order of arrival, which mosquitto accepts.

--protocol picks the MQTT version: 3.1.1 (the default) or 5. With 5, the session is a clean
start without --client-id; with it, no clean start and a session expiry interval of
0xFFFFFFFF, which MQTT 5 defines as never expiring: the session outlives stops and reconnects
as a 3.1.1 persistent session does (until the broker's own limit, e.g. mosquitto's
persistent_client_expiration, or a clean start under that id). A publisher's MQTT 5 user
properties ``traceparent`` and ``tracestate`` then continue its trace (under 3.1.1, only a
structured CloudEvent payload can carry one); other user properties are not forwarded, but
for a CloudEvent's attributes.

--cloudevents (default keep): a CloudEvent (MQTT 5 user properties named as its attributes and
the Content Type property, or a structured payload) goes to functions in HTTP binary mode, or
structured as it came; binary converts structured ones, wrap also wraps plain messages (source
aioconnector/mqtt/<host>:<port>, type --cloudevents-type). See docs/connectors.md, CloudEvents.

MQTT has no negative acknowledgement: a message whose invocation failed (after the controller's
own retries, see RetryPolicy), whose topic no function subscribes to, or that cannot be invoked
is acknowledged and logged, never redelivered nor dead-lettered. Retained messages are
delivered again on every (re)subscription. Ordering: none across the max_concurrency messages
in flight. SIGTERM/SIGINT: stop taking messages, finish those in flight (within drain_timeout),
disconnect. One replica per --client-id (in Kubernetes: replicas 1, strategy Recreate).
Needs ``pip install 'aioconnector[mqtt]'``:

    gateway_url=http://127.0.0.1:8080 aioconnector connect mqtt --topics 'sensors/#' \\
        --client-id openfaas-connector
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._cloudevents import CloudEvents, CloudEventsMode, forward, mqtt_attributes, wrap_source
from .._source import Settlement, SourceMessage, run_source
from ._base import (
    Connector,
    announce_ready,
    cloudevents_of,
    cloudevents_option,
    cloudevents_type_option,
    describe,
    trace_context,
)
from ._settings import option

if TYPE_CHECKING:
    import signal
    from collections.abc import Sequence

    import aiomqtt
    from anyio.abc import TaskStatus

    from .._controller import AsyncController
    from .._results import InvocationResult
    from .._source import SourceStats

__all__ = ["CONNECTOR", "Options", "message_id", "run"]

log = logging.getLogger("aioconnector.connectors.mqtt")
_QOS = 1
_PROTOCOLS = ("3.1.1", "5")
_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5's session expiry interval for "never"


@attrs.frozen(kw_only=True)
class Options:
    """What to subscribe to; each field is also a flag (env ``mqtt_<field>``)."""

    host: str = option("127.0.0.1", "MQTT broker host")
    port: int = option(1883, "MQTT broker port")
    topics: tuple[str, ...] = option(("#",), "topic filters, comma-separated", also_env=("topics",))
    client_id: str = option("", "persistent session id: acks after settling, at least once")
    username: str = option("", "user name, if the broker wants one")
    password: str = option("", "password (prefer the variable mqtt_password)")
    protocol: str = option(
        "3.1.1",
        "MQTT version, 3.1.1 or 5 (5: trace context from user properties)",
        choices=_PROTOCOLS,
    )
    cloudevents: str = cloudevents_option()
    cloudevents_type: str = cloudevents_type_option("mqtt")


async def run(
    controller: AsyncController,
    options: Options,
    *,
    stop: anyio.Event | None = None,
    stop_signals: Sequence[signal.Signals] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> SourceStats:
    """Subscribe and invoke until ``stop`` is set or one of ``stop_signals`` arrives.

    With ``tg.start(run, ...)``, ready once subscribed.
    """
    CONNECTOR.require()
    import aiomqtt

    events = cloudevents_of(options)
    persistent = bool(options.client_id)
    client = aiomqtt.Client(
        options.host,
        options.port,
        identifier=options.client_id or None,
        username=options.username or None,
        password=options.password or None,
        **_session(options.protocol, persistent),
    )
    if persistent:  # before connecting: the broker resends the unacked messages at once
        client._client.manual_ack_set(on=True)
    async with client:
        for topic in options.topics:
            await client.subscribe(topic, qos=_QOS)
        announce_ready(log, f"{', '.join(options.topics)} on {options.host}:{options.port}")
        task_status.started()
        return await run_source(
            controller,
            client.messages,
            convert=partial(
                _convert, events, wrap_source("mqtt", f"{options.host}:{options.port}")
            ),
            settle=partial(_settle, client if persistent else None),
            stop=stop,
            stop_signals=stop_signals,
            messaging_system="mqtt",  # no value in the semantic conventions: the broker's name
        )


def _session(protocol: str, persistent: bool) -> dict[str, Any]:
    """aiomqtt's arguments for the protocol version and a clean or persistent session."""
    import aiomqtt

    if protocol == "3.1.1":
        return {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": not persistent}
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:  # else 0, the default: the session ends with the connection
        properties.SessionExpiryInterval = _NEVER_EXPIRES
    return {
        "protocol": aiomqtt.ProtocolVersion.V5,
        "clean_start": not persistent,
        "properties": properties,
    }


def message_id(topic: str, payload: bytes) -> str:
    """A hash of the topic and the payload: the same for a redelivered copy."""
    return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


def _convert(events: CloudEvents, source: str, message: aiomqtt.Message) -> SourceMessage:
    """The MQTT topic is the topic, the payload the body; a CloudEvent (MQTT 5 user
    properties, or structured) is forwarded as ``events`` says."""
    topic = message.topic.value
    pairs = getattr(message.properties, "UserProperty", None) or []  # MQTT 5 only
    converted = SourceMessage(
        topic=topic,
        body=message.payload,
        message_id=message_id(topic, message.payload),
        trace_context=trace_context(dict(pairs)),  # where a publisher puts ``traceparent``
    )
    if events.mode is CloudEventsMode.OFF:
        return converted
    return forward(
        converted,
        events,
        source=source,
        attributes=mqtt_attributes(pairs),
        content_type=getattr(message.properties, "ContentType", None),
    )


async def _settle(
    client: aiomqtt.Client | None,
    message: aiomqtt.Message,
    verdict: Settlement,
    results: Sequence[InvocationResult],
) -> None:
    """Log what could not be delivered; acknowledge it all (with manual acks: now)."""
    if verdict is not Settlement.ACK:
        why = describe(verdict, results)
        log.warning("dropping a message on %s (%s): %s", message.topic, verdict.value, why)
    if client is not None:
        client._client.ack(message.mid, message.qos)  # paho's manual ack; see the docstring


def _errors() -> tuple[type[BaseException], ...]:
    import aiomqtt

    return (aiomqtt.MqttError,)


CONNECTOR: Connector[Options] = Connector(
    name="mqtt",
    summary="MQTT: topic filters subscribed with QoS 1; the MQTT topic is the topic",
    description=__doc__ or "",
    options=Options,
    env_prefix="mqtt_",
    client="aiomqtt",
    modules=("aiomqtt",),
    run=run,
    errors=_errors,
)
"""The MQTT connector, for ``aioconnector connect mqtt``."""
