"""`FastInvoker`: invocations over a lean HTTP/1.1 keep-alive pool of our own.

The same results as `HttpxInvoker` for a fraction of its CPU: one cached request head per
function and header set, one ``send()`` per request, a small response parser that follows h11's
rules (`_parse`, checked against h11 by property tests), idle connections in a LIFO list, no
task per request. On asyncio (and uvloop) each connection is an `AsyncioWire` protocol and
deadlines are swept for; on trio, connections are anyio streams and each call has a cancel scope.

- `_parse`: response heads as pure functions (status, headers, body framing, keep-alive).
- `_wire`: one connection's bytes on asyncio, straight from an ``asyncio.Protocol``.
- `_connection`: one connection; reads heads and bodies (Content-Length, chunked, until EOF).
- `_invoker`: the pool and one exchange, from `Invocation` to `InvocationResult`.

Connection hygiene: a connection goes back to the pool only after a complete response that
allows keep-alive; after any error or cancellation it is closed. A pooled connection is used
again only if nothing arrived on it while it was idle (the protocol's state on asyncio, a
``MSG_PEEK`` elsewhere), so one the server closed is dropped before a request is sent on it. A
request is never sent twice: once sent, a broken connection is an error for the retry policy.
"""

from __future__ import annotations

from ._invoker import FastInvoker as FastInvoker

__all__ = ["FastInvoker"]
