"""A lean HTTP/1.1 stub of the OpenFaaS gateway for benchmarks, on ``asyncio.Protocol``.

Run it as its own process, so that it never competes with the client for the same event loop::

    python benchmarks/stub_server.py --host 127.0.0.1 --port 0 [--delay SECONDS] [--uvloop]
                                     [--functions K]

Once listening it prints ``PORT <n>`` on its own line (flushed). It answers:

- ``GET /system/namespaces``: ``["openfaas-fn"]``;
- ``GET /system/functions?namespace=openfaas-fn``: functions ``fn0`` .. ``fn{K-1}``: ``fn0`` has
  topic ``bench``, ``fn0`` .. ``fn3`` have topic ``fanout``, and all of them topic ``all``
  (another namespace: ``[]``);
- ``POST /function/...`` and ``POST /async-function/...``: ``200 ok`` (``202`` for async)
  after ``--delay`` seconds (``loop.call_later``; at once, with no timer, when the delay is 0);
- anything else: 404.

Keep-alive, pipelining, Content-Length and chunked request bodies, ``Connection: close`` and
HTTP/1.0. Responses are prepared once; a request costs a few microseconds. SIGTERM or SIGINT
stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from typing import Final, cast

_MAX_HEAD: Final = 64 * 1024
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?[ \t]*\r\n")
_CALL_ID: Final = "5b1f6a26-0c3f-4b8e-9d0a-6c1d2e3f4a5b"


def _response(status: str, body: bytes, content_type: bytes, *, close: bool = False) -> bytes:
    head = [
        f"HTTP/1.1 {status}".encode(),
        b"Content-Type: " + content_type,
        f"Content-Length: {len(body)}".encode(),
    ]
    if status.startswith("20") and content_type.startswith(b"text/"):
        # What the gateway adds to a function's answer (values fixed: the stub measures clients).
        head += [
            f"X-Call-Id: {_CALL_ID}".encode(),
            b"X-Duration-Seconds: 0.000100",
            b"X-Start-Time: 1700000000000000000",
        ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _functions(count: int) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for index in range(count):
        topics = (["bench"] if index == 0 else []) + (["fanout"] if index < 4 else []) + ["all"]
        items.append(
            {
                "name": f"fn{index}",
                "namespace": "openfaas-fn",
                "image": "stub:latest",
                "replicas": 1,
                "availableReplicas": 1,
                "invocationCount": 0,
                "labels": {"faas_function": f"fn{index}"},
                "annotations": {"topic": ",".join(topics)},
            }
        )
    return items


class _Answers:
    """Every response the stub can give, as bytes prepared once."""

    def __init__(self, functions: int, delay: float) -> None:
        self.delay = delay
        text = b"text/plain; charset=utf-8"
        listing = json.dumps(_functions(functions)).encode()
        self.by_route: dict[tuple[bytes, bytes], bytes] = {
            (b"GET", b"/system/namespaces"): json.dumps(["openfaas-fn"]).encode(),
            (b"GET", b"/system/functions"): listing,
        }
        self.function = _response("200 OK", b"ok", text)
        self.async_function = _response("202 Accepted", b"", text)
        self.not_found = _response("404 Not Found", b"not found\n", text)
        self.bad_request = _response("400 Bad Request", b"bad request\n", text, close=True)

    def answer(self, method: bytes, target: bytes) -> bytes:
        path, _, query = target.partition(b"?")
        if method == b"POST":
            if path.startswith(b"/function/"):
                return self.function
            if path.startswith(b"/async-function/"):
                return self.async_function
            return self.not_found
        body = self.by_route.get((method, path))
        if body is None:
            return self.not_found
        if path == b"/system/functions" and query:
            namespaces = [
                v for k, _, v in (p.partition(b"=") for p in query.split(b"&")) if k == b"namespace"
            ]
            if namespaces and namespaces[0] != b"openfaas-fn":
                body = b"[]"
        return _response("200 OK", body, b"application/json")


class _StubProtocol(asyncio.Protocol):
    """One connection: parse requests as they complete, answer each in order."""

    def __init__(self, answers: _Answers, connections: set[_StubProtocol]) -> None:
        self._answers = answers
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # The request whose head is parsed and whose body is awaited.
        self._method = b""
        self._target = b""
        self._length = -1  # -1: no head parsed; -2: chunked body
        self._close = False
        self._done = False  # answered a request with Connection: close; ignore the rest
        self._pending = 0  # delayed answers not yet written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._connections.discard(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        while self._next_request():
            pass

    def _next_request(self) -> bool:
        """Parse and answer one request from the buffer; False when more data is needed."""
        buffer = self._buffer
        if self._done or self._transport is None:
            return False
        if self._length == -1 and not self._parse_head(buffer):
            return False
        if self._length >= 0:
            if len(buffer) < self._length:
                return False
            del buffer[: self._length]
        elif not self._skip_chunked(buffer):
            return False
        self._length = -1
        self._done = self._close
        self._respond(self._answers.answer(self._method, self._target), close=self._close)
        return True

    def _parse_head(self, buffer: bytearray) -> bool:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._refuse()
            return False
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse()
            return False
        self._method, self._target = parts[0], parts[1]
        length = 0
        close = parts[2] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                if not value.strip().isdigit():
                    self._refuse()
                    return False
                length = int(value)
            elif name == b"transfer-encoding":
                length = -2
            elif name == b"connection":
                tokens = value.lower()
                close = b"close" in tokens or (close and b"keep-alive" not in tokens)
        self._length = length
        self._close = close
        return True

    def _skip_chunked(self, buffer: bytearray) -> bool:
        """Drop one complete chunked body (and its trailers) from the buffer, if it is there."""
        position = 0
        while True:
            match = _CHUNK_SIZE.match(buffer, position)
            if match is None:
                if buffer.find(b"\r\n", position) >= 0:
                    self._refuse()
                return False
            size = int(match.group(1), 16)
            position = match.end()
            if size == 0:
                end = buffer.find(b"\r\n\r\n", position - 2)
                if end < 0:
                    return False
                del buffer[: end + 4]
                return True
            if len(buffer) < position + size + 2:
                return False
            position += size + 2

    def _respond(self, response: bytes, *, close: bool) -> None:
        delay = self._answers.delay
        if delay <= 0 and not self._pending:
            self._write(response, close)
        else:
            self._pending += 1
            asyncio.get_running_loop().call_later(delay, self._write_later, response, close)

    def _write_later(self, response: bytes, close: bool) -> None:
        self._pending -= 1
        self._write(response, close)

    def _write(self, response: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(response)
        if close:
            transport.close()
            self._transport = None

    def _refuse(self) -> None:
        self._done = True
        if self._transport is not None:
            self._transport.write(self._answers.bad_request)
            self._transport.close()
            self._transport = None


async def serve(host: str, port: int, answers: _Answers) -> None:
    loop = asyncio.get_running_loop()
    connections: set[_StubProtocol] = set()
    server = await loop.create_server(
        lambda: _StubProtocol(answers, connections), host, port, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        for connection in tuple(connections):
            connection.abort()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--functions", type=int, default=4, help="how many functions to list")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop when importable")
    args = parser.parse_args(argv)
    if args.delay < 0 or args.functions < 0:
        parser.error("--delay and --functions must not be negative")
    answers = _Answers(args.functions, args.delay)
    coroutine = serve(args.host, args.port, answers)
    if args.uvloop:
        try:
            import uvloop  # noqa: PLC0415  (optional)
        except ImportError:
            print("uvloop is not installed; running on asyncio", file=sys.stderr)
        else:
            uvloop.run(coroutine)
            return
    asyncio.run(coroutine)


if __name__ == "__main__":
    main()
