"""A webhook connector on aiohttp: each POST becomes a message for the functions on a topic.

  POST /events/{topic}  The request body goes, as it is, to every OpenFaaS function whose
                        `topic` annotation names {topic}, with the request's X-Message-Id and
                        Content-Type headers. The answer comes once the message is admitted,
                        not when the functions have answered:
                          202 {"topic": ..., "matched": n}  n functions will be invoked;
                          404 {"topic": ..., "matched": 0, "detail": ...}  no function
                              subscribes to the topic: nothing is invoked, and the sender
                              learns it at once rather than never;
                          422 for a topic that cannot be sent (control characters),
                          503 while the server is shutting down (retry elsewhere or later).
                        While every invocation slot (max_concurrency) is busy, the request
                        waits: back-pressure reaches the sender.
  GET  /healthz         The controller's counters (ControllerStats) as JSON.

The functions' answers are not returned to the sender; a background task logs the failures.
aiohttp runs on asyncio only. The gateway and the rest come from the OpenFaaS connector
environment variables (gateway_url, upstream_timeout, basic_auth...):

  gateway_url=http://127.0.0.1:8080 python examples/aiohttp_webhook.py --port 8000
  curl -i -d '{"id": 1}' -H 'X-Message-Id: 42' http://127.0.0.1:8000/events/payment.received
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

import anyio
from aiohttp import web

from aioconnector import AsyncController, ControllerConfig, ControllerStateError, ResultStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)
CONTROLLER = web.AppKey("controller", AsyncController)


def create_app(config: ControllerConfig | None = None) -> web.Application:
    """The application; ``config`` defaults to ``ControllerConfig.from_env()``."""
    settings = ControllerConfig.from_env() if config is None else config

    async def controller_context(app: web.Application) -> AsyncIterator[None]:
        # Runs up to `yield` in runner.setup() and the rest in runner.cleanup(), after the
        # server has stopped taking requests. The task groups entered here need both calls in
        # one task and outside any cancel scope of their own (no `with move_on_after(...)`
        # around only one of them); web.run_app does it so.
        #
        # The task group encloses the controller: leaving the controller waits for the
        # invocations in flight (up to drain_timeout) and ends the results stream, so
        # log_failures sees every result, returns, and the task group closes.
        async with anyio.create_task_group() as tg, AsyncController(settings) as controller:
            tg.start_soon(log_failures, controller.results())  # subscribed before any message
            app[CONTROLLER] = controller
            yield

    app = web.Application()
    app.cleanup_ctx.append(controller_context)
    app.add_routes([web.post("/events/{topic}", publish), web.get("/healthz", healthz)])
    return app


async def log_failures(results: ResultStream) -> None:
    async with results:
        async for result in results:
            if not result.ok:
                logger.warning(
                    "message %s on %r: %s failed: %s",
                    result.context,  # the X-Message-Id given to submit() as context
                    result.topic,
                    result.function,
                    result.error,
                )


async def publish(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    topic = request.match_info["topic"]
    message_id = request.headers.get("X-Message-Id")
    given = {"X-Message-Id": message_id, "Content-Type": request.headers.get("Content-Type")}
    headers = {name: value for name, value in given.items() if value is not None}
    body = await request.read()
    try:
        # submit() returns once the first invocation has a slot; the rest runs in the
        # controller's task group, and the results go to log_failures.
        matched = await controller.submit(topic, body, headers=headers, context=message_id)
    except ValueError as exc:  # e.g. a control character in the topic
        return web.json_response({"topic": topic, "detail": str(exc)}, status=422)
    except ControllerStateError:
        return web.json_response({"topic": topic, "detail": "shutting down"}, status=503)
    if not matched:
        detail = "no function subscribes to this topic"
        return web.json_response({"topic": topic, "matched": 0, "detail": detail}, status=404)
    return web.json_response({"topic": topic, "matched": matched}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].stats().as_dict())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="%(default)s; 0.0.0.0 in a container")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    args = parser.parse_args()
    try:
        app = create_app()
    except (ValueError, OSError) as exc:  # a bad variable, or missing basic-auth secrets
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per invocation
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
