"""Asynchronous invocations from a FastAPI app, with the callback receiver mounted in it.

  POST /run/{topic}  The body goes to every function whose `topic` annotation names {topic}
                     through the gateway's /async-function/ route; the answer comes when all
                     their callbacks have arrived: 200 [{"function", "call_id", "status",
                     "ok", "body"}...], or 404 when no function subscribes to {topic}.
  POST /callbacks/…  Where the queue-worker posts results: `controller.callback_app`, a plain
                     ASGI app, mounted. Each callback URL carries a per-call token; others
                     are refused.

The gateway must reach this app at callback_public_url (the mount point included). The rest
comes from the OpenFaaS connector variables (gateway_url, upstream_timeout...):

  gateway_url=http://127.0.0.1:8080 callback_public_url=http://127.0.0.1:8000/callbacks \\
      python examples/fastapi_callbacks.py --port 8000
  curl -d 'make the report' http://127.0.0.1:8000/run/reports
"""

from __future__ import annotations

import argparse
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from aioconnector import AsyncController, ControllerConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def create_app(config: ControllerConfig | None = None) -> FastAPI:
    """The application; ``config`` defaults to ``ControllerConfig.from_env()``."""
    settings = ControllerConfig.from_env() if config is None else config
    if settings.callback_public_url is None:
        raise ValueError("set callback_public_url: where the gateway reaches /callbacks")
    # Made here, entered in the lifespan: its receiver must be mounted before serving.
    controller = AsyncController(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with controller:
            yield

    app = FastAPI(title="aioconnector async invocations", lifespan=lifespan)
    app.mount("/callbacks", controller.callback_app)

    @app.post("/run/{topic}")
    async def run(topic: str, request: Request) -> JSONResponse:
        accepted = await controller.invoke_async(topic, await request.body())
        if not accepted:
            return JSONResponse({"detail": f"no function subscribes to {topic!r}"}, 404)
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
        return JSONResponse(answers)

    return app


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
    uvicorn.run(app, host=args.host, port=args.port, lifespan="on")


if __name__ == "__main__":
    main()
