"""The packaged broker connectors: run one with ``aioconnector connect <broker>``, or embed it.

Each module (``nats``, ``redis``, ``rabbitmq``, ``mqtt``, ``postgres``) has an ``Options``
class (each field also a flag and a variable, see ``docs/connectors.md``) and
``run(controller, options, *, stop=None, stop_signals=(), task_status=...)``, which consumes
from the broker into the :class:`~aioconnector.AsyncController` you give it through
:func:`~aioconnector.run_source`, and returns its :class:`~aioconnector.SourceStats`::

    from aioconnector import AsyncController, ControllerConfig
    from aioconnector.connectors import nats

    async with AsyncController(ControllerConfig.from_env()) as controller:
        await nats.run(controller, nats.Options(stream="EVENTS", subjects=("events.>",)))

A broker's client is an extra (``pip install 'aioconnector[nats]'``, ``[redis]``,
``[rabbitmq]``, ``[mqtt]``, ``[postgres]``, ``[all]``), imported only when its ``run`` is
called: importing this package imports none. Without it, ``run`` raises
:class:`~aioconnector.MissingExtraError`, whose message names the ``pip install`` to run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import mqtt as mqtt
from . import nats as nats
from . import postgres as postgres
from . import rabbitmq as rabbitmq
from . import redis as redis
from ._base import Connector as Connector

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CONNECTORS", "Connector", "mqtt", "nats", "postgres", "rabbitmq", "redis"]

CONNECTORS: Final[Mapping[str, Connector[Any]]] = {
    module.CONNECTOR.name: module.CONNECTOR for module in (mqtt, nats, postgres, rabbitmq, redis)
}
"""Every packaged connector by name, as ``aioconnector connect <name>`` knows it."""
