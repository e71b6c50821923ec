"""`FastInvoker`: invocations over a lean HTTP/1.1 keep-alive pool of our own.

The same results as `HttpxInvoker` for a fraction of its CPU: one cached request head per
function and header set, one write per request, a small response parser that follows h11's
rules (`_parse`, checked against h11 by property tests), idle connections in a LIFO list, no
task and no cancel scope per request: one periodic sweep enforces every call's deadline.

- `_parse`: response heads as pure functions (status, headers, body framing, keep-alive).
- `_wire`: the `Wire` a connection's bytes go through, and `AsyncioWire` (an
  ``asyncio.Protocol``); `_triowire`: `TrioWire`, on a plain socket. The runtime
  (`aioconnector._runtime`) picks one.
- `_connection`: one connection; one exchange, from request to a complete response
  (Content-Length, chunked, until EOF).
- `_invoker`: the pool and one invocation, from `Invocation` to `InvocationResult`.

Connection hygiene: a connection goes back to the pool only after a complete response that
allows keep-alive; after any error or cancellation it is closed. A pooled connection is used
again only if nothing arrived on it while it was idle (one ``poll`` of its socket), so one the
server closed is dropped before a request is sent on it. A request is sent twice only when it
carries an idempotency key and a pooled connection closed before any byte of its answer.
"""

from __future__ import annotations

from ._invoker import FastInvoker as FastInvoker

__all__ = ["FastInvoker"]
