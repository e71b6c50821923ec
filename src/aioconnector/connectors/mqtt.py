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

MQTT has no negative acknowledgement and no delivery count, so in aioconnector's outcome model
(OutcomePolicy) every delivery is the last: a message whose invocation failed (after the
controller's own retries, see RetryPolicy), whose topic no function subscribes to, or that
cannot be invoked is dead-lettered at once (--unroutable drop: unmatched and invalid ones are
only logged), never redelivered. With --dead-letter-topic, a dead letter is published there
(QoS 1, its PUBACK awaited before the original is acknowledged) with the original payload;
under --protocol 5 it also carries the reason as user properties (dead_cause, dead_reason,
dead_function, dead_status, dead_error, dead_attempts, dead_topic, dead_message_id), besides
the original's; MQTT 3.1.1 has no headers, so there the reason is only logged. The topic must
not match --topics (its dead letters would come back). Without --dead-letter-topic, a dead
letter is logged and acknowledged: lost. Retained messages are delivered again on every
(re)subscription. Ordering: none across the max_concurrency messages
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
from .._outcome import OutcomeKind, OutcomePolicy, outcome_of
from .._source import SourceMessage, run_source
from ._base import (
    Connector,
    announce_ready,
    cloudevents_of,
    cloudevents_option,
    cloudevents_type_option,
    log_outcome,
    trace_context,
    unroutable,
)
from ._settings import option

if TYPE_CHECKING:
    import signal
    from collections.abc import Sequence

    import aiomqtt
    from anyio.abc import TaskStatus
    from paho.mqtt.properties import Properties

    from .._controller import AsyncController
    from .._outcome import OutcomeReason, Settlement
    from .._results import InvocationResult
    from .._source import SourceStats

__all__ = ["CONNECTOR", "Options", "message_id", "run"]

log = logging.getLogger("aioconnector.connectors.mqtt")
_QOS = 1
_PROTOCOLS = ("3.1.1", "5")
_NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5's session expiry interval for "never"
_FINAL = ("dead-letter", "drop")  # no redelivery: --unroutable cannot be retry


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
    dead_letter_topic: str = option(
        "", "publish dead letters here (QoS 1; reason as MQTT 5 user properties); empty: log"
    )
    unroutable: str = option(
        "dead-letter", "unmatched/invalid messages: dead-letter or drop", choices=_FINAL
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

    _check_dead_letter_topic(options)
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
            settle=_Settle(client, options, _policy(options), persistent=persistent),
            stop=stop,
            stop_signals=stop_signals,
            messaging_system="mqtt",  # no value in the semantic conventions: the broker's name
        )


def _check_dead_letter_topic(options: Options) -> None:
    """A topic to publish to, outside the filters consumed: ``ValueError`` otherwise."""
    import aiomqtt

    if not options.dead_letter_topic:
        return
    topic = aiomqtt.Topic(options.dead_letter_topic)  # ValueError for a wildcard
    for wildcard in options.topics:
        if topic.matches(wildcard):
            raise ValueError(
                f"dead_letter_topic {topic.value!r} matches the topic filter {wildcard!r}: its "
                "dead letters would come back to this connector; choose a topic outside it"
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


@attrs.frozen
class _Settle:
    """``settle`` for run_source: publish a dead letter (if there is a topic for them) or log
    what is not delivered; then acknowledge (with manual acks: now)."""

    client: aiomqtt.Client
    options: Options
    policy: OutcomePolicy
    persistent: bool = attrs.field(kw_only=True)

    async def __call__(
        self, message: aiomqtt.Message, verdict: Settlement, results: Sequence[InvocationResult]
    ) -> None:
        outcome = outcome_of(verdict, results, policy=self.policy)
        log_outcome(log, outcome, f"a message on {message.topic.value!r}")
        dead_letter_topic = self.options.dead_letter_topic
        if outcome.kind is OutcomeKind.DEAD_LETTER and outcome.reason and dead_letter_topic:
            await self.client.publish(
                dead_letter_topic,
                message.payload,
                qos=_QOS,
                properties=self._properties(message, outcome.reason),
            )
        if self.persistent:  # paho's manual ack; see the docstring
            self.client._client.ack(message.mid, message.qos)

    def _properties(self, message: aiomqtt.Message, reason: OutcomeReason) -> Properties | None:
        """MQTT 5: the original's user properties and the reason's; 3.1.1 has none."""
        if self.options.protocol != "5":
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        original = list(getattr(message.properties, "UserProperty", None) or ())
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [*original, *reason.fields().items()]
        return properties


def _policy(options: Options) -> OutcomePolicy:
    """No redelivery: every failure is final, on the first and only delivery."""
    return OutcomePolicy(max_deliveries=1, unroutable=unroutable(options.unroutable))


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
