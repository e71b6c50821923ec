"""Pending asynchronous invocations, and the callbacks that complete them.

An async invocation is registered (`CallbackRegistry.register`) *before* its request is sent,
under a call id we make (a UUID4, sent as ``X-Call-Id``: the gateway keeps a call id it is
given), so a callback that comes back faster than the gateway's 202 finds its entry. Its
callback URL ends in ``/{call id}/{token}``, the token being an HMAC-SHA256 of the call id
under a random per-controller secret: callbacks carry no credentials, so only the holder of
the URL the gateway was given can complete the invocation.

A receiver (the ASGI app, the built-in server, or a framework's handler through
`CallbackRegistry.receive`) hands each callback over in two steps: `admit` (path and headers:
a forged, unknown or repeated callback is answered at once, before its body is read), then
`settle` (the body, or ``None`` when it was too large). Both are plain calls that never wait:
completed results go to the publisher through a queue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from typing import TYPE_CHECKING, Final, final

import anyio
import attrs

from ._errors import (
    InvocationCancelledError,
    ResponseTooLargeError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ._results import InvocationResult

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._invoke import Invocation

__all__ = ["CallbackRegistry", "CallbackStats", "PendingInvocation", "Reply", "callback_headers"]

# A call id is a UUID (36 characters); anything much longer is not ours and not worth a MAC.
_MAX_CALL_ID: Final = 100
# The statuses OpenFaaS Pro's queue-worker retries by default (its httpRetryCodes): a callback
# with one of these, and attempts left, is not the last one.
_RETRYABLE: Final = frozenset({408, 429, 500, 502, 503, 504})
# Call ids of ended invocations remembered, to tell a duplicate or late callback (409, 410)
# from one we never issued or forgot (404). Oldest forgotten first.
_REMEMBERED: Final = 4096
# Headers of the callback request itself (the queue-worker's HTTP client's), not of the
# function's response: never response headers, so no function's header is lost.
_NOT_COPIED: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "expect",
        "te",
        "user-agent",
        "accept",
        "accept-encoding",
    }
)


@attrs.frozen
class Reply:
    """What a receiver answers to one callback."""

    status: int
    text: str

    @property
    def body(self) -> bytes:
        return self.text.encode() + b"\n"


ACCEPTED: Final = Reply(200, "accepted")
ATTEMPT: Final = Reply(202, "attempt recorded; waiting for the final one")
MALFORMED: Final = Reply(400, "bad callback: X-Function-Status missing or invalid")
MISMATCH: Final = Reply(400, "bad callback: X-Call-Id does not match the URL")
FORGED: Final = Reply(403, "forbidden")
UNKNOWN: Final = Reply(404, "unknown call id")
NOT_POST: Final = Reply(405, "method not allowed: callbacks are POSTed")
DUPLICATE: Final = Reply(409, "duplicate callback: this invocation already has its result")
LATE: Final = Reply(410, "late callback: this invocation already ended (timeout or shutdown)")
TOO_LARGE: Final = Reply(413, "callback body too large")


@attrs.frozen(kw_only=True)
class CallbackStats:
    """Counters of the callback receiver, from :meth:`AsyncController.callback_stats`."""

    pending: int
    """Async invocations accepted by the gateway and waiting for their callback."""
    accepted: int
    """Callbacks that completed an invocation."""
    attempts: int
    """Callbacks of a failed attempt that the queue-worker retries (``X-Retry``): recorded,
    not final."""
    timed_out: int
    """Invocations ended because no callback came within their timeout."""
    forged: int
    """Callbacks rejected for a missing or wrong token (403)."""
    unknown: int
    """Callbacks with a valid token for a call id no longer remembered (404)."""
    duplicate: int
    """Callbacks for an invocation that already had its result (409): the first one wins."""
    late: int
    """Callbacks for an invocation that had already timed out or been cancelled (410)."""
    too_large: int
    """Callbacks whose body was over ``max_response_bytes`` (413)."""
    malformed: int
    """Callbacks without a valid ``X-Function-Status``, or whose ``X-Call-Id`` header differs
    from the URL's (400)."""
    not_post: int
    """Requests to the receiver with another method than POST (405)."""


@attrs.define
class _Counts:
    accepted: int = 0
    attempts: int = 0
    timed_out: int = 0
    forged: int = 0
    unknown: int = 0
    duplicate: int = 0
    late: int = 0
    too_large: int = 0
    malformed: int = 0
    not_post: int = 0


@final
class PendingInvocation:
    """One asynchronous invocation: accepted by the gateway, its result to come by callback.

    ``await pending.result()`` waits for the callback and returns the `InvocationResult`
    built from it (the function's status, body, headers and duration). The same result goes to
    every results stream. Made by :meth:`AsyncController.invoke_async`.
    """

    __slots__ = (
        "_deadline",
        "_done",
        "_invocation",
        "_registry",
        "_result",
        "_started",
        "attempts",
        "call_id",
    )

    def __init__(
        self,
        registry: CallbackRegistry,
        invocation: Invocation,
        call_id: str,
        started: float,
        deadline: float,
    ) -> None:
        self._registry = registry
        self._invocation = invocation
        self.call_id: Final = call_id
        """The ``X-Call-Id`` sent with the request; the callback carries it back."""
        self._started = started
        self._deadline = deadline
        self._done = anyio.Event()
        self._result: InvocationResult | None = None
        self.attempts = 0  # callbacks of failed attempts seen so far (X-Retry)

    @property
    def function(self) -> str:
        """The function's address on the gateway, ``name.namespace`` (or ``name``)."""
        return self._invocation.function

    @property
    def topic(self) -> str:
        """The message's topic."""
        return self._invocation.topic

    @property
    def context(self) -> object:
        """Whatever the caller passed as ``context=`` to ``invoke_async``."""
        return self._invocation.context

    def done(self) -> bool:
        """True once the result is known (callback, refusal, timeout or shutdown)."""
        return self._result is not None

    async def result(self, timeout: float | None = None) -> InvocationResult:  # noqa: ASYNC109
        """Wait for the invocation's result and return it.

        ``timeout``: seconds to wait at most (``None``: until the callback, or the
        controller's ``callback_timeout``). When it passes first, the invocation ends with an
        `UpstreamTimeoutError` result (a callback arriving later is rejected as late).
        Cancelling this call does not end the invocation.
        """
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be None or a number, got {timeout!r}")
            if not timeout >= 0:  # NaN too
                raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        if self._result is None:
            with anyio.move_on_after(timeout):
                await self._done.wait()
            if self._result is None:
                self._registry.time_out(self, f"no callback within timeout={timeout}s")
        assert self._result is not None  # noqa: S101 - set by every way of ending
        return self._result

    def __repr__(self) -> str:
        state = "pending" if self._result is None else ("ok" if self._result.ok else "failed")
        return f"<PendingInvocation {self.function} call_id={self.call_id} {state}>"


@final
class CallbackRegistry:
    """The pending async invocations by call id, and the checks and parsing of callbacks.

    ``finish(result)`` is called once for every invocation that ends, whichever way; it must
    not wait (the publisher takes it from there).
    """

    def __init__(
        self,
        *,
        max_body: int,
        timeout: float | None,
        finish: Callable[[InvocationResult], None],
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._secret = secrets.token_bytes(32)
        self._max_body = max_body
        self._timeout = timeout
        self._finish = finish
        self.clock = clock
        self.base_url: str | None = None  # where the gateway sends callbacks; set at start
        # Insertion order is deadline order: every entry gets the same timeout.
        self.pending: dict[str, PendingInvocation] = {}
        self._ended: dict[str, bool] = {}  # call id -> completed by a callback (else late)
        self.counts = _Counts()
        # Set when an entry is added to an empty registry: the expiry loop sleeps until then.
        self.changed: anyio.Event | None = None

    # -- tokens and URLs ---------------------------------------------------------------------

    def token(self, call_id: str) -> str:
        """The per-call token: an HMAC-SHA256 of the call id, URL-safe base64."""
        digest = hmac.new(self._secret, call_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def url_for(self, call_id: str) -> str:
        """The callback URL of one call: ``{base}/{call id}/{token}``."""
        assert self.base_url is not None  # noqa: S101 - checked by the caller
        return f"{self.base_url}/{call_id}/{self.token(call_id)}"

    # -- entries -----------------------------------------------------------------------------

    def register(self, invocation: Invocation) -> PendingInvocation:
        """A new pending entry under a fresh call id, before its request is sent."""
        call_id = str(uuid.uuid4())
        now = self.clock()
        deadline = float("inf") if self._timeout is None else now + self._timeout
        entry = PendingInvocation(self, invocation, call_id, now, deadline)
        self.pending[call_id] = entry
        if len(self.pending) == 1 and self.changed is not None:
            self.changed.set()
        return entry

    def complete(
        self, entry: PendingInvocation, result: InvocationResult, *, by_callback: bool
    ) -> bool:
        """End ``entry`` with ``result``, unless it has ended already (the first one wins).
        Returns whether it was ended now."""
        if entry._result is not None:
            return False
        entry._result = result
        entry._done.set()
        self.pending.pop(entry.call_id, None)
        if len(self._ended) >= _REMEMBERED:
            del self._ended[next(iter(self._ended))]
        self._ended[entry.call_id] = by_callback
        self._finish(result)
        return True

    def time_out(self, entry: PendingInvocation, why: str) -> None:
        """End ``entry`` as an `UpstreamTimeoutError` result, if it is still pending."""
        if entry.done():
            return
        error = UpstreamTimeoutError(f"{entry.function}: {why}")
        if self.complete(entry, self._failed(entry, error), by_callback=False):
            self.counts.timed_out += 1

    def cancel(self, entry: PendingInvocation, why: str) -> None:
        """End ``entry`` as an `InvocationCancelledError` result (shutdown)."""
        error = InvocationCancelledError(f"{entry.function}: {why}")
        self.complete(entry, self._failed(entry, error), by_callback=False)

    def expire(self, now: float) -> float | None:
        """End the entries past their deadline; the next deadline, or None when none is left."""
        while self.pending:
            entry = next(iter(self.pending.values()))
            if entry._deadline > now:
                return entry._deadline
            self.time_out(entry, f"no callback within callback_timeout={self._timeout}s")
        return None

    def _failed(self, entry: PendingInvocation, error: Exception) -> InvocationResult:
        invocation = entry._invocation
        return InvocationResult(
            topic=invocation.topic,
            function=invocation.function,
            status=None,
            duration=self.clock() - entry._started,
            error=error,  # type: ignore[arg-type]  # an InvocationError
            call_id=entry.call_id,
            attempts=max(1, entry.attempts),
            context=invocation.context,
        )

    # -- callbacks ---------------------------------------------------------------------------

    def admit(self, path: str) -> PendingInvocation | Reply:
        """The pending invocation a callback to ``path`` completes, or the answer that rejects
        it (counted). Decided from the path alone, before the body is read."""
        call_id, token = _route(path)
        # The MAC is checked first, for known and unknown ids alike, in constant time.
        if not token or len(call_id) > _MAX_CALL_ID or not call_id.isascii():
            self.counts.forged += 1
            return FORGED
        if not hmac.compare_digest(token.encode("ascii", "replace"), self.token(call_id).encode()):
            self.counts.forged += 1
            return FORGED
        entry = self.pending.get(call_id)
        if entry is not None:
            return entry
        return self._stale(call_id)

    def _stale(self, call_id: str) -> Reply:
        by_callback = self._ended.get(call_id)
        if by_callback is None:
            self.counts.unknown += 1
            return UNKNOWN
        if by_callback:
            self.counts.duplicate += 1
            return DUPLICATE
        self.counts.late += 1
        return LATE

    def too_large(self, declared: str | None) -> bool:
        """Whether a declared ``Content-Length`` is over the limit (read no body then)."""
        return declared is not None and declared.isdigit() and int(declared) > self._max_body

    @property
    def max_body(self) -> int:
        return self._max_body

    def settle(
        self, entry: PendingInvocation, headers: Mapping[str, str], body: bytes | None
    ) -> Reply:
        """Complete ``entry`` from its callback (names in ``headers`` lower-cased); ``body``
        is None when it was over the limit. Returns the answer to give."""
        if entry.done():  # another callback won while this one's body was read
            return self._stale(entry.call_id)
        given_id = headers.get("x-call-id")
        if given_id is not None and given_id.strip() != entry.call_id:
            self.counts.malformed += 1
            return MISMATCH
        status = _status(headers.get("x-function-status"))
        if status is None:
            self.counts.malformed += 1
            return MALFORMED
        if body is None:
            self.counts.too_large += 1
            error = ResponseTooLargeError(
                f"{entry.function}: callback body over max_response_bytes={self._max_body}"
            )
            result = attrs.evolve(self._failed(entry, error), status=status)
            self.complete(entry, result, by_callback=True)
            return TOO_LARGE
        entry.attempts += 1
        if not _final(status, headers):
            self.counts.attempts += 1
            return ATTEMPT
        self.counts.accepted += 1
        self.complete(entry, self._from_callback(entry, status, headers, body), by_callback=True)
        return ACCEPTED

    def receive(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """`admit` and `settle` in one call, for a receiver that has read the body already."""
        admitted = self.admit(path)
        if isinstance(admitted, Reply):
            return admitted
        too_large = len(body) > self._max_body
        return self.settle(admitted, headers, None if too_large else body)

    def _from_callback(
        self, entry: PendingInvocation, status: int, headers: Mapping[str, str], body: bytes
    ) -> InvocationResult:
        invocation = entry._invocation
        duration = _seconds(headers.get("x-duration-seconds"))
        if duration is None:
            duration = self.clock() - entry._started
        kept = {name: value for name, value in headers.items() if name not in _NOT_COPIED}
        return InvocationResult(
            topic=invocation.topic,
            function=invocation.function,
            status=status,
            body=body,
            headers=kept,
            duration=duration,
            error=None if 200 <= status < 300 else UpstreamStatusError(status),
            call_id=entry.call_id,
            attempts=entry.attempts,
            context=invocation.context,
        )

    def stats(self) -> CallbackStats:
        return CallbackStats(pending=len(self.pending), **attrs.asdict(self.counts))


def callback_headers(pairs: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> dict[str, str]:
    """Header pairs as one dict, names lower-cased, repeated headers joined with ``", "``."""
    flat: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        name = name.lower()
        flat[name] = f"{flat[name]}, {value}" if name in flat else value
    return flat


def _route(path: str) -> tuple[str, str]:
    """The call id and token at the end of a callback path (wherever the receiver is
    mounted); an empty token when the path has no room for one."""
    parts = path.rstrip("/").rsplit("/", 2)
    if len(parts) < 3:
        return parts[-1], ""
    return parts[1], parts[2]


def _status(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    status = int(text.strip())
    return status if 100 <= status <= 599 else None


def _seconds(text: str | None) -> float | None:
    try:
        seconds = float(text) if text is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < float("inf") else None


def _final(status: int, headers: Mapping[str, str]) -> bool:
    """Whether no other callback follows this one: OpenFaaS Pro's queue-worker calls back once
    per failed attempt with ``X-Retry`` (this attempt) and ``X-Retry-Max``; it retries only a
    retryable status, and only while ``X-Retry < X-Retry-Max``. Without them: final."""
    if status not in _RETRYABLE:
        return True
    retry, most = headers.get("x-retry", "").strip(), headers.get("x-retry-max", "").strip()
    if not (retry.isdigit() and most.isdigit()):
        return True
    return int(retry) >= int(most)
