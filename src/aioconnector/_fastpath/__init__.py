"""`FastInvoker`: invocations over a lean HTTP/1.1 keep-alive pool on anyio byte streams.

The same results as `HttpxInvoker` for ~1/20 of the CPU: one cached request head per function
and header set, one ``send()`` per request, a small response parser with h11's rules (see
`parse_head`), idle connections in a LIFO list, no task per request. Runs on asyncio and trio.

Connection hygiene: a connection goes back to the pool only after a complete response that
allows keep-alive; after any error or cancellation it is closed. A pooled connection the server
has closed meanwhile is detected by the failing exchange (the send fails, or EOF arrives before
any byte of the answer) and the request is sent once more on a new connection: it was never
processed.
"""

from __future__ import annotations

from ._invoker import FastInvoker as FastInvoker

__all__ = ["FastInvoker"]
