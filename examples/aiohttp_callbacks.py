"""Asynchronous invocations from an aiohttp app, which receives the callbacks itself.

  POST /run/{topic}                     As in fastapi_callbacks.py: invoke every function on
                                        {topic} through /async-function/, answer with their
                                        results once all callbacks have arrived (404: none).
  POST /callbacks/{call_id}/{token}     Where the queue-worker posts results. aiohttp does not
                                        serve ASGI apps, so the handler gives each callback to
                                        `controller.handle_callback` and answers its status.

The gateway must reach this app at callback_public_url (with /callbacks). aiohttp runs on
asyncio only. The rest comes from the OpenFaaS connector variables (gateway_url...):

  gateway_url=http://127.0.0.1:8080 callback_public_url=http://127.0.0.1:8000/callbacks \\
      python examples/aiohttp_callbacks.py --port 8000
  curl -d 'make the report' http://127.0.0.1:8000/run/reports
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from aiohttp import web

from aioconnector import AsyncController, ControllerConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CONTROLLER = web.AppKey("controller", AsyncController)


def create_app(config: ControllerConfig | None = None) -> web.Application:
    """The application; ``config`` defaults to ``ControllerConfig.from_env()``."""
    settings = ControllerConfig.from_env() if config is None else config
    if settings.callback_public_url is None:
        raise ValueError("set callback_public_url: where the gateway reaches /callbacks")

    async def controller_context(app: web.Application) -> AsyncIterator[None]:
        async with AsyncController(settings) as controller:
            app[CONTROLLER] = controller
            yield

    # A callback carries the function's whole answer: allow what the controller accepts.
    app = web.Application(client_max_size=settings.max_response_bytes + 1)
    app.cleanup_ctx.append(controller_context)
    app.add_routes(
        [web.post("/run/{topic}", run), web.post("/callbacks/{call_id}/{token}", callback)]
    )
    return app


async def callback(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    status = controller.handle_callback(request.path, request.headers, await request.read())
    return web.Response(status=status)


async def run(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    topic = request.match_info["topic"]
    accepted = await controller.invoke_async(topic, await request.read())
    if not accepted:
        return web.json_response({"detail": f"no function subscribes to {topic!r}"}, status=404)
    answers = []
    for pending in accepted:
        result = await pending.result()
        answers.append(
            {
                "function": result.function,
                "call_id": result.call_id,
                "status": result.status,
                "ok": result.ok,
                "body": result.body.decode(errors="replace"),
            }
        )
    return web.json_response(answers)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="%(default)s; 0.0.0.0 in a container")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    args = parser.parse_args()
    try:
        app = create_app()
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
