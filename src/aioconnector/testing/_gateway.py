"""FakeGateway: an in-memory OpenFaaS gateway, one request handler behind two front ends."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timezone
from typing import TYPE_CHECKING, final
from urllib.parse import parse_qs

import anyio
import httpx

from . import _answers as answers
from ._capacity import Capacity, Load
from ._catalog import DEFAULT_NAMESPACE, Function, Route, address, check_name, parse_route
from ._faults import CallbackMode, FunctionFault, SystemEndpoint, SystemFault
from ._models import FakeResponse, RecordedRequest
from ._server import Server
from ._transport import FakeTransport
from ._wire import DROP, Background, Incoming, Outcome

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

    from ._capacity import FunctionStats, Latency
    from ._models import Handler

__all__ = ["DEFAULT_NAMESPACE", "FakeGateway"]


@final
class FakeGateway:
    """An in-memory OpenFaaS gateway that answers like the real one, for tests.

    Register functions with :meth:`add_function`, then talk to the gateway either in-process
    through :meth:`transport` or over loopback HTTP/1.1 through :meth:`serve`; both front ends
    share one request handler and behave the same. The gateway answers:

    - ``GET /system/namespaces``: a JSON array of namespace names (404 when
      ``namespace_support`` is off, like an older gateway);
    - ``GET /system/functions?namespace=ns``: a JSON array of FunctionStatus objects;
    - ``/function/{name}[.{ns}][/path][?query]``: the function's answer, plus the gateway's
      ``X-Call-Id``, ``X-Start-Time`` and ``X-Duration-Seconds`` headers; 404 for an unknown
      function;
    - ``/async-function/{name}[.{ns}][/path]``: 202 at once, with a new ``X-Call-Id`` unless
      the request gave one (kept, not echoed, as the gateway does); the function then runs in
      the background of the front end that took the request, and its answer is POSTed to
      ``X-Callback-Url`` when the request had one, with the queue-worker's ``X-Call-Id``,
      ``X-Function-Status``, ``X-Function-Name`` and ``X-Duration-Seconds`` headers
      (:meth:`set_callbacks` adds retries, lost, duplicate and late callbacks);
    - anything else: 404.

    ``/system/*`` requires HTTP basic ``auth`` when it is set (401 with ``WWW-Authenticate``
    otherwise); ``/function/`` never does. ``base_path`` (e.g. ``"/gw"``) puts the whole API
    under a prefix, as behind a reverse proxy. Callback POSTs go over the network unless
    ``callback_transport`` is given (e.g. another gateway's :meth:`transport`); it is used, not
    closed.

    Every request is appended to :attr:`requests`. Functions, faults and recordings may be
    changed at any time, also while serving.

    Each function may have a capacity (:meth:`set_capacity`, or the same arguments to
    :meth:`add_function`): at most ``max_inflight`` requests in progress, the next ones
    answered 429 at once like of-watchdog (with ``Retry-After`` when ``retry_after`` is set),
    and a :class:`Latency` that grows with the requests in progress. :meth:`set_down` and
    :meth:`set_up` take a function out and back (an outage, optionally for a time window);
    :meth:`function_stats` counts each function's requests, 429s and peak concurrency.

    ``sleep`` is awaited for every delay the gateway makes (fault latencies and the
    :class:`Latency` model); it defaults to :func:`anyio.sleep`. A test can pass one that
    records the delays or skips them.

    An exception raised by a handler is a bug in the test: through :meth:`transport` it
    propagates to the caller; in :meth:`serve` (or in background async work) it ends the front
    end's ``async with`` block with an exception group.
    """

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        namespaces: Iterable[str] = (DEFAULT_NAMESPACE,),
        namespace_support: bool = True,
        base_path: str = "",
        callback_transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        if sleep is not None and not callable(sleep):
            raise TypeError(f"sleep must be an async callable taking seconds, got {sleep!r}")
        if base_path and (not base_path.startswith("/") or base_path.endswith("/")):
            raise ValueError(f"base_path must start with '/' and not end with one: {base_path!r}")
        if isinstance(namespaces, str):
            raise TypeError("namespaces must be an iterable of names, not one string")
        self._auth = auth
        self._namespaces = tuple(check_name("namespace", ns) for ns in namespaces)
        self._namespace_support = namespace_support
        self._base_path = base_path
        self._callback_transport = callback_transport
        self._sleep = sleep or anyio.sleep
        self._loads: dict[str, Load] = {}  # by address
        self._functions: dict[tuple[str, str], Function] = {}
        self._faults: dict[str, FunctionFault] = {}  # by address
        self._system_faults: list[SystemFault] = []
        self._callback_modes: dict[str, CallbackMode] = {}  # by address
        self._in_flight = 0
        self._invoking = 0
        self._pending = 0
        self._idle_waiters: list[anyio.Event] = []
        self._urls: list[str] = []

        self.requests: list[RecordedRequest] = []
        """Every request received, in order of arrival. Clear it at will."""
        self.peak_in_flight = 0
        """The most ``/function/`` requests handled at once so far. Reset it at will."""

    # -- registration --------------------------------------------------------------------

    def add_function(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        topics: Sequence[str] | str | None = None,
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        handler: Handler | None = None,
        max_inflight: int | None = None,
        retry_after: int | None = None,
        latency: Latency | None = None,
    ) -> None:
        """Deploy (or redeploy, replacing) the function ``name`` in ``namespace``.

        ``topics`` becomes the ``topic`` annotation, a list joined with ``","`` and a string
        kept as it is (so ``" orders, ,payments"`` tests a parser's stripping), merged with
        ``annotations``. ``labels`` and ``annotations`` are listed as ``null`` when there are
        none. ``handler`` answers invocations: ``None`` echoes the request body with status
        200 (and its ``Content-Type``), a :class:`FakeResponse` is returned as it is, and a
        callable gets the :class:`RecordedRequest` and returns (or, if async, awaits to) a
        :class:`FakeResponse`.

        ``annotations`` are listed as given, any key and value (e.g.
        ``{"com.openfaas.retry.attempts": "5"}``), so a test can also list invalid ones.
        ``max_inflight``, ``retry_after`` and ``latency`` set its capacity, as
        :meth:`set_capacity` does (none by default: every request admitted, no added delay).
        """
        check_name("name", name)
        check_name("namespace", namespace)
        capacity = Capacity(max_inflight=max_inflight, retry_after=retry_after, latency=latency)
        merged = dict(annotations) if annotations is not None else None
        if topics is not None:
            if merged is not None and "topic" in merged:
                raise ValueError("give the topic either as topics= or in annotations=, not both")
            topic = topics if isinstance(topics, str) else ",".join(topics)
            merged = {**(merged or {}), "topic": topic}
        if handler is not None and not (isinstance(handler, FakeResponse) or callable(handler)):
            raise TypeError(f"handler must be a FakeResponse or a callable, got {handler!r}")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._functions[name, namespace] = Function(
            name=name,
            namespace=namespace,
            annotations=merged,
            labels=dict(labels) if labels is not None else None,
            handler=handler,
            created_at=created,
            capacity=capacity,
        )

    def remove_function(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete the function; it is no longer listed and invoking it answers 404.

        Raises :class:`KeyError` when there is no such function.
        """
        try:
            del self._functions[name, namespace]
        except KeyError:
            raise KeyError(f"no function {name}.{namespace}") from None

    def set_capacity(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_inflight: int | None = None,
        retry_after: int | None = None,
        latency: Latency | None = None,
    ) -> None:
        """Set what the deployed function can take, replacing its previous capacity.

        ``max_inflight`` works like of-watchdog's: while that many of the function's requests
        are in progress, the next ones are answered 429 at once, body ``Concurrent request
        limit exceeded. Max concurrent requests: N``, without running the handler; ``None``
        admits all. ``retry_after`` (whole seconds, needs ``max_inflight``) adds
        ``Retry-After`` to those 429s. ``latency`` (a :class:`Latency`) makes each admitted
        request sleep longer the more requests are in progress. All apply behind the
        function's fault, to ``/async-function/`` work too (its callback then carries the
        429), and take effect for the next request; those in progress keep their place.

        Raises :class:`KeyError` when there is no such function.
        """
        capacity = Capacity(max_inflight=max_inflight, retry_after=retry_after, latency=latency)
        try:
            function = self._functions[name, namespace]
        except KeyError:
            raise KeyError(f"no function {name}.{namespace}") from None
        function.capacity = capacity

    # -- faults --------------------------------------------------------------------------

    def set_fault(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        latency: float = 0.0,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        drop_connection: bool = False,
        times: int | None = None,
        duration: float | None = None,
    ) -> None:
        """Make the gateway misbehave for requests to one function, replacing its fault.

        The fault decides how the gateway answers ``/function/`` and ``/async-function/``
        requests for the function (known or not): first wait ``latency`` seconds
        (cancellable), then answer ``status`` with ``headers`` and ``body`` (default: the
        reason phrase) instead of calling the function, or close the connection without an
        answer (``drop_connection``; the in-process transport raises
        :class:`httpx.RemoteProtocolError`), or, with only a latency, answer normally.
        ``times=N`` applies it to the next N requests only; ``None`` until :meth:`clear_fault`.
        ``duration`` ends it that many seconds (of :func:`time.monotonic`) from now, even with
        ``times`` left.
        """
        fault = FunctionFault(
            latency=latency,
            status=status,
            headers=headers or {},
            body=body.encode() if isinstance(body, str) else body,
            drop_connection=drop_connection,
            times=times,
            duration=duration,
        )
        self._faults[address(name, namespace)] = fault

    def clear_fault(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Remove the function's fault, if any."""
        self._faults.pop(address(name, namespace), None)

    def set_down(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        status: int | None = 500,
        duration: float | None = None,
    ) -> None:
        """Take the function down: an outage, until :meth:`set_up` or for ``duration`` seconds.

        Every ``/function/`` and ``/async-function/`` request for it gets what the gateway
        answers when the function cannot be reached, without running the handler: by default
        500 ``Can't reach service for: name.`` (faas-provider's proxy, when the call fails);
        ``status=503`` answers ``No endpoints available for: name.`` (no replica ready), any
        other status its reason phrase, and ``None`` closes the connection without an answer.
        It is a :meth:`set_fault` (replacing the function's fault), so :meth:`clear_fault`
        ends it too; ``duration`` counts in :func:`time.monotonic` seconds from now.
        """
        ref = name if namespace == DEFAULT_NAMESPACE else f"{name}.{namespace}"
        if status is None:
            self.set_fault(name, namespace=namespace, drop_connection=True, duration=duration)
            return
        self.set_fault(
            name,
            namespace=namespace,
            status=status,
            body=answers.unreachable_body(status, ref),
            duration=duration,
        )

    def set_up(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        """End the function's outage (or any fault of it): :meth:`clear_fault` by its name."""
        self.clear_fault(name, namespace=namespace)

    def system_fault(
        self,
        *,
        endpoint: SystemEndpoint | None = None,
        latency: float = 0.0,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        malformed_json: bool = False,
        truncated: bool = False,
        drop_connection: bool = False,
        times: int | None = None,
    ) -> None:
        """Make ``/system/namespaces`` and/or ``/system/functions`` misbehave.

        ``endpoint`` picks ``"namespaces"`` or ``"functions"`` (``None``: both). After
        ``latency`` seconds the answer is ``status`` with ``headers`` and ``body``;
        ``malformed_json`` answers 200 (or ``status``) with a body that is not JSON,
        ``truncated`` with the real JSON array cut in the middle; ``drop_connection`` closes
        the connection without an answer; a latency alone delays the normal answer. Faults
        apply before authentication. ``times=N`` applies it to the next N matching requests
        only. Several system faults queue up: each request takes the first one that matches.
        """
        self._system_faults.append(
            SystemFault(
                endpoint=endpoint,
                latency=latency,
                status=status,
                headers=headers or {},
                body=body.encode() if isinstance(body, str) else body,
                malformed_json=malformed_json,
                truncated=truncated,
                drop_connection=drop_connection,
                times=times,
            )
        )

    def set_callbacks(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        attempts: int = 1,
        retry_statuses: Iterable[int] = (408, 429, 500, 502, 503, 504),
        lose: bool = False,
        duplicates: int = 0,
        delay: float = 0.0,
    ) -> None:
        """Change how the queue-worker calls back after an ``/async-function/`` invocation of
        one function (until :meth:`clear_faults`).

        ``attempts > 1`` acts as OpenFaaS Pro's queue-worker with retries: while the function
        answers one of ``retry_statuses`` it is invoked again, up to ``attempts`` times, and
        every attempt is called back with ``X-Retry`` (1, 2...) and ``X-Retry-Max``
        (``attempts``). ``lose`` sends no callback at all; ``duplicates=N`` sends the last
        callback N more times; ``delay`` waits that many seconds before each callback (a late
        one).
        """
        self._callback_modes[address(name, namespace)] = CallbackMode(
            attempts=attempts,
            retry_statuses=frozenset(retry_statuses),
            lose=lose,
            duplicates=duplicates,
            delay=delay,
        )

    def clear_faults(self) -> None:
        """Remove every fault, of functions and of /system/ endpoints."""
        self._faults.clear()
        self._system_faults.clear()
        self._callback_modes.clear()

    # -- observation ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """The number of requests being handled right now."""
        return self._in_flight

    @property
    def url(self) -> str:
        """The base URL of the most recent :meth:`serve` still running.

        Raises :class:`RuntimeError` when not serving.
        """
        if not self._urls:
            raise RuntimeError("the gateway is not serving: use `async with gw.serve()` first")
        return self._urls[-1]

    def function_stats(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> FunctionStats:
        """A snapshot of the counters of the function's requests since the last reset.

        They count by address, so they outlive a redeploy or removal. Raises
        :class:`KeyError` for a function neither deployed nor ever requested.
        """
        key = address(name, namespace)
        load = self._loads.get(key)
        if load is None:
            if (name, namespace) not in self._functions:
                raise KeyError(f"no function {key}, nor any request for it")
            load = Load()
        return load.snapshot()

    def reset_stats(self) -> None:
        """Zero every function's counters; each peak restarts from what is in progress."""
        for load in self._loads.values():
            load.reset()

    def invocations(self, function: str | None = None) -> list[RecordedRequest]:
        """The recorded ``/function/`` and ``/async-function/`` requests, in order.

        ``function`` keeps only those for one function, as ``name.namespace`` or as ``name``
        (meaning the default namespace).
        """
        if function is None:
            return [r for r in self.requests if r.function is not None]
        if "." not in function:
            function = f"{function}.{DEFAULT_NAMESPACE}"
        return [r for r in self.requests if r.function == function]

    async def wait_idle(self) -> None:
        """Wait until no ``/async-function/`` work (function call, callback) is pending.

        Bound it with :func:`anyio.fail_after`; work pending in a front end that has closed
        was cancelled and does not count.
        """
        while self._pending:
            event = anyio.Event()
            self._idle_waiters.append(event)
            await event.wait()

    # -- front ends ----------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        """A new in-process transport to this gateway, for ``httpx.AsyncClient(transport=...)``.

        Any base URL will do (e.g. ``http://gateway.test``). Honours the client's read timeout
        (:class:`httpx.ReadTimeout`). ``/async-function/`` work runs in a task group that lives
        while the transport is open: ``async with httpx.AsyncClient(transport=...)`` opens it
        (so does ``async with`` on the transport itself; nesting is fine), and leaving cancels
        what is left. Async invocations through a transport that is not open raise
        :class:`RuntimeError`.
        """
        return FakeTransport(self._dispatch, callback_transport=self._callback_transport)

    @asynccontextmanager
    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[str]:
        """Serve the gateway over HTTP/1.1 on ``host``:``port`` (0: an ephemeral port).

        Yields the base URL, e.g. ``http://127.0.0.1:41234`` (with ``base_path`` appended),
        also available as :attr:`url` meanwhile. One task per connection, keep-alive,
        Content-Length and chunked request bodies. Leaving closes the listener, every
        connection and the background work.

        With a server-side ``ssl_context`` (e.g. one a ``trustme`` certificate configured,
        optionally requiring client certificates) the gateway speaks HTTPS and the URL starts
        with ``https://``; a connection whose TLS handshake fails is closed, nothing else.
        """
        async with Server(
            self._dispatch,
            host=host,
            port=port,
            callback_transport=self._callback_transport,
            ssl_context=ssl_context,
        ) as (bound_host, bound_port):
            netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
            scheme = "http" if ssl_context is None else "https"
            url = f"{scheme}://{netloc}:{bound_port}{self._base_path}"
            self._urls.append(url)
            try:
                yield url
            finally:
                self._urls.remove(url)

    # -- the request handler -------------------------------------------------------------

    def _lookup(self, route: Route) -> Function | None:
        if route.namespace:
            return self._functions.get((route.name, route.namespace))
        if self._namespace_support:
            return self._functions.get((route.name, DEFAULT_NAMESPACE))
        found = self._functions.get((route.name, DEFAULT_NAMESPACE))
        if found is None:  # an older gateway knows a function by its name alone
            found = next((f for f in self._functions.values() if f.name == route.name), None)
        return found

    def _address(self, route: Route) -> str:
        found = self._lookup(route)
        if found is not None:
            return found.address
        return address(route.name, route.namespace)

    async def _dispatch(self, incoming: Incoming, background: Background | None) -> Outcome:
        path, _, query = incoming.target.partition("?")
        route = parse_route(path, self._base_path)
        invocation = route.kind in ("function", "async")
        self._in_flight += 1
        record = RecordedRequest(
            method=incoming.method,
            path=path,
            query=query,
            headers=incoming.headers,
            body=incoming.body,
            time=anyio.current_time(),
            in_flight=self._in_flight,
            function=self._address(route) if invocation else None,
            extra_path=route.extra_path,
            is_async=route.kind == "async",
        )
        self.requests.append(record)
        if invocation:
            self._load(self._address(route)).requests += 1
        counted = route.kind == "function"
        if counted:
            self._invoking += 1
            self.peak_in_flight = max(self.peak_in_flight, self._invoking)
        try:
            if route.kind in ("namespaces", "functions"):
                return await self._system(route.kind, record)
            if route.kind == "function":
                return await self._invoke(route, record)
            if route.kind == "async":
                return await self._invoke_async(route, record, background)
            return answers.NOT_FOUND
        finally:
            self._in_flight -= 1
            if counted:
                self._invoking -= 1

    # /system/*

    def _take_system_fault(self, endpoint: SystemEndpoint) -> SystemFault | None:
        for fault in self._system_faults:
            if fault.matches(endpoint):
                if fault.consume():
                    self._system_faults.remove(fault)
                return fault
        return None

    def _authorized(self, record: RecordedRequest) -> bool:
        if self._auth is None:
            return True
        scheme, _, encoded = record.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        return bool(colon) and (user, password) == self._auth

    def _listing(self, endpoint: SystemEndpoint, query: str) -> FakeResponse | None:
        if endpoint == "namespaces":
            if not self._namespace_support:
                return None
            names = dict.fromkeys(self._namespaces)
            names.update(dict.fromkeys(ns for _, ns in self._functions))
            return FakeResponse(body=answers.json_body(list(names)), headers=answers.JSON)
        functions = list(self._functions.values())
        if self._namespace_support:
            wanted = parse_qs(query).get("namespace", [""])[0] or DEFAULT_NAMESPACE
            functions = [f for f in functions if f.namespace == wanted]
        statuses = [f.status(with_namespace=self._namespace_support) for f in functions]
        return FakeResponse(body=answers.json_body(statuses), headers=answers.JSON)

    async def _system(self, endpoint: SystemEndpoint, record: RecordedRequest) -> Outcome:
        fault = self._take_system_fault(endpoint)
        if fault is not None:
            if fault.latency:
                await self._sleep(fault.latency)
            if fault.drop_connection:
                return DROP
            if fault.malformed_json or fault.truncated:
                if fault.malformed_json:
                    body = answers.MALFORMED_JSON
                else:
                    listing = self._listing(endpoint, record.query)
                    full = listing.body if listing is not None else b"[]"
                    body = full[: max(1, len(full) // 2)]
                return FakeResponse(
                    status=fault.status or 200,
                    body=body,
                    headers=answers.merge(answers.JSON, fault.headers),
                )
            if fault.status is not None:
                return answers.fault(fault.status, fault.body, fault.headers)
        if record.method != "GET":
            return FakeResponse(
                status=405, body=b"Method Not Allowed\n", headers={**answers.TEXT, "Allow": "GET"}
            )
        if not self._authorized(record):
            return FakeResponse(
                status=401,
                body=b"invalid credentials\n",
                headers={**answers.TEXT, "WWW-Authenticate": 'Basic realm="Restricted"'},
            )
        return self._listing(endpoint, record.query) or answers.NOT_FOUND

    # /function/ and /async-function/

    def _take_fault(self, route: Route) -> FunctionFault | None:
        key = self._address(route)
        fault = self._faults.get(key)
        if fault is not None and fault.expired():
            del self._faults[key]
            return None
        if fault is not None and fault.consume():
            del self._faults[key]
        return fault

    def _load(self, key: str) -> Load:
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = Load()
        return load

    def _count(self, route: Route, outcome: Outcome) -> Outcome:
        """Count ``outcome`` in the function's statistics; return it."""
        load = self._load(self._address(route))
        if outcome is DROP:
            load.dropped += 1
        else:
            load.statuses[outcome.status] += 1
        return outcome

    async def _run(self, function: Function, record: RecordedRequest) -> FakeResponse:
        """Run the function within its capacity: 429 when full, else its latency, its answer."""
        capacity, load = function.capacity, self._load(function.address)
        if capacity.max_inflight is not None and capacity.full(load.inflight):
            load.throttled += 1
            return answers.throttled(capacity.max_inflight, capacity.retry_after)
        others = load.enter()
        try:
            if capacity.latency is not None:
                delay = capacity.latency.delay(others)
                if delay:
                    await self._sleep(delay)
            return await function.call(record)
        finally:
            load.leave()

    async def _call(self, route: Route, record: RecordedRequest) -> tuple[FakeResponse, float]:
        """Run the function (or answer 404 for an unknown one); also return its duration."""
        started = anyio.current_time()
        function = self._lookup(route)
        if function is None:
            where = address(route.name, route.namespace)
            response = answers.text(404, f"error finding function {where}")
        else:
            response = await self._run(function, record)
        return response, anyio.current_time() - started

    async def _faulted(self, route: Route, headers: Mapping[str, str]) -> Outcome | None:
        """Apply the function's fault, if any: the answer it imposes, or None to go on."""
        fault = self._take_fault(route)
        if fault is None:
            return None
        if fault.latency:
            await self._sleep(fault.latency)
        if fault.drop_connection:
            return DROP
        if fault.status is not None:
            response = answers.fault(fault.status, fault.body, fault.headers)
            return answers.with_headers(response, headers)
        return None

    async def _invoke(self, route: Route, record: RecordedRequest) -> Outcome:
        call_id, start_ns = str(uuid.uuid4()), time.time_ns()
        faulted = await self._faulted(route, answers.gateway_headers(call_id, start_ns))
        if faulted is not None:
            return self._count(route, faulted)
        response, duration = await self._call(route, record)
        headers = answers.gateway_headers(call_id, start_ns, duration)
        return self._count(route, answers.with_headers(response, headers))

    async def _invoke_async(
        self, route: Route, record: RecordedRequest, background: Background | None
    ) -> Outcome:
        # Like the gateway, keep a call id the client gave (and, then, do not echo it).
        given = record.headers.get("x-call-id")
        call_id, start_ns = given or str(uuid.uuid4()), time.time_ns()
        accepted = answers.gateway_headers(call_id, start_ns)
        if given:
            del accepted["X-Call-Id"]
        faulted = await self._faulted(route, accepted)
        if faulted is not None:
            return self._count(route, faulted)
        if background is None:
            raise RuntimeError(
                "an /async-function/ request needs the fake gateway's transport to be open: "
                "use `async with httpx.AsyncClient(transport=gw.transport())` "
                "(or `async with gw.transport() as transport`)"
            )

        async def run(background: Background) -> None:
            try:
                await self._complete_async(route, record, call_id, background)
            finally:
                self._pending -= 1
                if not self._pending:
                    waiters, self._idle_waiters = self._idle_waiters, []
                    for event in waiters:
                        event.set()

        self._pending += 1
        background.start_soon(run)
        return FakeResponse(status=202, headers=accepted)

    async def _complete_async(
        self, route: Route, record: RecordedRequest, call_id: str, background: Background
    ) -> None:
        mode = self._callback_modes.get(self._address(route), CallbackMode())
        attempt = 0
        while True:
            attempt += 1
            response, duration = await self._call(route, record)
            self._count(route, response)
            last = attempt >= mode.attempts or response.status not in mode.retry_statuses
            callback_url = record.headers.get("x-callback-url")
            if not callback_url or mode.lose:
                if last:
                    return
                continue
            headers = answers.merge(
                response.headers,
                {
                    "X-Call-Id": call_id,
                    "X-Function-Status": str(response.status),
                    "X-Function-Name": route.ref,
                    "X-Duration-Seconds": f"{duration:f}",
                },
            )
            if mode.attempts > 1:  # OpenFaaS Pro's queue-worker, with retries
                headers |= {"X-Retry": str(attempt), "X-Retry-Max": str(mode.attempts)}
            for _ in range(1 + (mode.duplicates if last else 0)):
                if mode.delay:
                    await self._sleep(mode.delay)
                # Like the queue-worker, a failed callback is logged (here: not even) and
                # forgotten.
                with suppress(httpx.HTTPError, httpx.InvalidURL):
                    await background.client().post(
                        callback_url, content=response.body, headers=headers
                    )
            if last:
                return
