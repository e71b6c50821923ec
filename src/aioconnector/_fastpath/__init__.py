"""`FastInvoker`: invocations over a lean HTTP/1.1 keep-alive pool on anyio byte streams.

The same results as `HttpxInvoker` for a fraction of its CPU: one cached request head per
function and header set, one ``send()`` per request, a small response parser that follows h11's
rules (`_parse`, checked against h11 by property tests), idle connections in a LIFO list, no
task per request. Runs on asyncio and trio.

- `_parse`: response heads as pure functions (status, headers, body framing, keep-alive).
- `_connection`: one connection; reads heads and bodies (Content-Length, chunked, until EOF).
- `_invoker`: the pool and one exchange, from `Invocation` to `InvocationResult`.

Connection hygiene: a connection goes back to the pool only after a complete response that
allows keep-alive; after any error or cancellation it is closed. A pooled connection that the
server closed while it was idle shows as a failed send, or as EOF before any byte of an answer;
the request then goes once more over a new connection, taken not to have been processed.
"""

from __future__ import annotations

from ._invoker import FastInvoker as FastInvoker

__all__ = ["FastInvoker"]
