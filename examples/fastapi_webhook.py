"""A webhook connector on FastAPI: each POST becomes a message for the functions on a topic.

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
  GET  /metrics         The same counters for Prometheus (README, Observability).

The functions' answers are not returned to the sender; a background task logs the failures.
The gateway and the rest come from the OpenFaaS connector environment variables (gateway_url,
upstream_timeout, basic_auth...):

  gateway_url=http://127.0.0.1:8080 python examples/fastapi_webhook.py --port 8000
  curl -i -d '{"id": 1}' -H 'X-Message-Id: 42' http://127.0.0.1:8000/events/payment.received
"""

from __future__ import annotations

import argparse
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, TypedDict

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from aioconnector import AsyncController, ControllerConfig, ControllerStateError, ResultStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

logger = logging.getLogger(__name__)


class State(TypedDict):
    """What the lifespan hands to every request, as ``request.state``."""

    controller: AsyncController


def create_app(config: ControllerConfig | None = None) -> FastAPI:
    """The application; ``config`` defaults to ``ControllerConfig.from_env()``."""
    settings = ControllerConfig.from_env() if config is None else config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        # The task group encloses the controller: leaving the controller waits for the
        # invocations in flight (up to drain_timeout) and ends the results stream, so
        # log_failures sees every result, returns, and the task group closes.
        # Metrics in a registry of the app's own (the default one would do as well).
        controller = AsyncController(settings, metrics=CollectorRegistry())
        async with anyio.create_task_group() as tg, controller:
            tg.start_soon(log_failures, controller.results())  # subscribed before any message
            yield {"controller": controller}

    app = FastAPI(title="aioconnector webhook", lifespan=lifespan)
    app.include_router(router)
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


def get_controller(request: Request) -> AsyncController:
    controller: AsyncController = request.state.controller
    return controller


Controller = Annotated[AsyncController, Depends(get_controller)]
router = APIRouter()


@router.post("/events/{topic}", status_code=202)
async def publish(
    topic: str,
    request: Request,
    controller: Controller,
    x_message_id: Annotated[str | None, Header()] = None,
    content_type: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    given = {"X-Message-Id": x_message_id, "Content-Type": content_type}
    headers = {name: value for name, value in given.items() if value is not None}
    body = await request.body()
    try:
        # submit() returns once the first invocation has a slot; the rest runs in the
        # controller's task group, and the results go to log_failures.
        matched = await controller.submit(topic, body, headers=headers, context=x_message_id)
    except ValueError as exc:  # e.g. a control character in the topic
        return JSONResponse({"topic": topic, "detail": str(exc)}, status_code=422)
    except ControllerStateError:
        return JSONResponse({"topic": topic, "detail": "shutting down"}, status_code=503)
    if not matched:
        detail = "no function subscribes to this topic"
        return JSONResponse({"topic": topic, "matched": 0, "detail": detail}, status_code=404)
    return JSONResponse({"topic": topic, "matched": matched}, status_code=202)


@router.get("/healthz")
async def healthz(controller: Controller) -> dict[str, object]:
    return controller.stats().as_dict()


@router.get("/metrics")
async def metrics(controller: Controller) -> Response:
    registry = controller.metrics_registry
    assert registry is not None  # noqa: S101 - created with metrics on
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


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
    # lifespan="on": if the controller cannot start (gateway down), the server does not either.
    uvicorn.run(app, host=args.host, port=args.port, lifespan="on")


if __name__ == "__main__":
    main()
