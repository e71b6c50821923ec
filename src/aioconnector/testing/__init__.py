"""Test helpers for aioconnector users: an in-memory OpenFaaS gateway.

:class:`FakeGateway` answers ``/system/namespaces``, ``/system/functions``, ``/function/`` and
``/async-function/`` like a real gateway, in-process (:meth:`FakeGateway.transport`) or over
loopback HTTP (:meth:`FakeGateway.serve`), records every request and injects faults::

    gw = FakeGateway(auth=("admin", "secret"))
    gw.add_function("echo", topics=["orders"])
    async with httpx.AsyncClient(transport=gw.transport(), base_url="http://gw.test") as client:
        response = await client.post("/function/echo", content=b"hi")
    assert gw.invocations("echo")[0].body == b"hi"

Each function can also have a capacity (``max_inflight`` answering 429 beyond it, like
of-watchdog, and a :class:`Latency` growing with the requests in progress), go down and come
back (:meth:`FakeGateway.set_down`, :meth:`FakeGateway.set_up`), and be counted
(:meth:`FakeGateway.function_stats`)::

    gw.add_function("model", max_inflight=4, retry_after=1, latency=Latency(base=0.02))
    gw.set_down("model", duration=5.0)  # 500s for five seconds, then it answers again
"""

from __future__ import annotations

from ._capacity import FunctionStats as FunctionStats
from ._capacity import Latency as Latency
from ._faults import SystemEndpoint as SystemEndpoint
from ._gateway import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE
from ._gateway import FakeGateway as FakeGateway
from ._models import FakeResponse as FakeResponse
from ._models import Handler as Handler
from ._models import RecordedRequest as RecordedRequest

__all__ = [
    "DEFAULT_NAMESPACE",
    "FakeGateway",
    "FakeResponse",
    "FunctionStats",
    "Handler",
    "Latency",
    "RecordedRequest",
    "SystemEndpoint",
]
