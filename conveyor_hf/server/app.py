"""``create_app``: the FastAPI application of ``conveyor-hf serve``.

Routes: ``POST /v1/chat/completions`` (:mod:`~conveyor_hf.server.chat_completion`),
``GET /v1/models``, ``GET /health`` (engine, tools, sandbox, pool and queue state; 503
when the tools cannot start) and ``GET /metrics`` (Prometheus text). No HTTP middleware
wraps the routes: streamed answers go straight to the client, and a disconnect reaches
the handler at once. Shutting the app down closes the pool (every kernel) and the engine.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from openai.types import Model
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor_hf.server.errors import APIError
from conveyor_hf.server.runtime import ServerRuntime

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_app(runtime: ServerRuntime) -> FastAPI:
    """The app serving ``runtime`` (built by :meth:`ServerRuntime.start`)."""
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runtime.close()

    app = FastAPI(title="conveyor-hf serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = " (routes: POST /v1/chat/completions, GET /v1/models, /health, /metrics)" if exc.status_code in (
            404, 405) else ""
        return APIError(exc.status_code, f"{exc.detail}{hint}").response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(400, f"invalid request: {exc.errors()}").response()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await runtime.handler.handle(request)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        entry = Model(id=runtime.serving.model_id, created=created, object="model", owned_by="conveyor_hf")
        body = entry.model_dump()
        if runtime.serving.context_length is not None:
            body["max_model_len"] = runtime.serving.context_length
        return JSONResponse({"object": "list", "data": [body]})

    @app.get("/health")
    async def health() -> JSONResponse:
        state = runtime.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(runtime.metrics.render(runtime.gauges()), media_type=PROMETHEUS_CONTENT_TYPE)

    return app
