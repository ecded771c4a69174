"""The server as an ASGI app: ``create_app`` wires the routes, the engine bridge, metrics and errors.

    GET  /                    the playground page (playground.html, the schema's fields filled in)
    GET  /health              {"status": "ok", ...}; 503 while shutting down; never needs the key
    GET  /metrics             Prometheus text (metrics.py)
    POST /ai/run/{model}      and /client/v4/accounts/{id}/ai/run/{model}: workers_ai.py
    /v1/...                   and /client/v4/accounts/{id}/ai/v1/...: openai_api.py

With an API key every route but /health and the page itself needs ``Authorization: Bearer KEY``
(the page holds no data; it asks for the key and sends it with its requests). Errors take the
shape of the API they happen on (web.py), unknown routes included; an unexpected failure is a
500 in that shape, its traceback in the server's log only.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..frontend import SAMPLING_FIELDS
from .bridge import Engine
from .metrics import CONTENT_TYPE, Metrics
from .models import Models
from .openai_api import router as openai_router
from .service import ServerState, internal_error, state
from .web import ApiError, ClientGone, RequireKey, error_response, gone
from .workers_ai import router as workers_ai_router

ROUTE_ERRORS = {404: (7000, "No route for that URI"), 405: (7001, "Method not allowed for that URI")}


def create_app(models: Models, *, api_key: str | None = None, seed: int | None = None) -> FastAPI:
    """The app serving ``models``; how many generations run and wait is their schedulers' business (Models).
    ``seed``: the seed of requests that set none (None: each draws its own)."""
    metrics = Metrics()
    engine = Engine(metrics)
    metrics.bind(engine, models.llms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await engine.shutdown(0)  # after uvicorn's own shutdown: anything left is cancelled

    app = FastAPI(title="awqinfer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = ServerState(models, engine, metrics, api_key, seed)
    app.state.started = int(time.time())
    app.include_router(workers_ai_router)
    app.include_router(openai_router)
    app.add_api_route("/", playground, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics_text, methods=["GET"])
    app.add_exception_handler(ApiError, lambda request, e: error_response(e, request.url.path))
    app.add_exception_handler(ClientGone, lambda request, e: gone())
    app.add_exception_handler(HTTPException, _route_error)
    app.add_exception_handler(Exception, lambda request, e: error_response(internal_error(e, logged=True),
                                                                         request.url.path))
    app.add_middleware(RequireKey, key=api_key, open_paths=("/health", "/"))
    return app


def _route_error(request: Request, e: HTTPException) -> Response:
    code, message = ROUTE_ERRORS.get(e.status_code, (7000 + e.status_code, str(e.detail)))
    error = ApiError(e.status_code, code, f"{message}: {request.method} {request.url.path}",
                     oa_code="not_found" if e.status_code == 404 else None)
    return error_response(error, request.url.path)


async def health(request: Request):
    """GET /health: whether the server takes requests, and what it holds."""
    server = state(request)
    running, waiting = server.metrics.requests()
    body = {"status": "shutting down" if server.engine.closing else "ok",
            "models": [name for name, _ in server.models.loaded()], "running": running, "waiting": waiting}
    return JSONResponse(body, status_code=503 if server.engine.closing else 200)


async def metrics_text(request: Request):
    """GET /metrics: Prometheus text exposition."""
    return Response(state(request).metrics.render(), media_type=CONTENT_TYPE)


_PAGE: str | None = None


async def playground(request: Request):
    """GET /: the playground, one HTML file from the package with the schema's fields filled in."""
    global _PAGE
    if _PAGE is None:
        fields = [{"name": f.name, "low": f.low, "high": f.high, "integer": f.integer, "default": f.default,
                   "help": f.help, "allowed": f.allowed} for f in SAMPLING_FIELDS]
        page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
        config = json.dumps({"fields": fields}).replace("</", "<\\/")
        _PAGE = page.replace("__AWQINFER_CONFIG__", config)
    needs_key = json.dumps(state(request).api_key is not None)
    return HTMLResponse(_PAGE.replace("__AWQINFER_NEEDS_KEY__", needs_key))
