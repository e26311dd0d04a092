"""Builds the FastAPI application the Gateway deployment serves (at replica start, never at import)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.body_limit import BodySizeLimitMiddleware
from serve_app.errors import error_body, install_error_handlers
from serve_app.metrics import RequestObservabilityMiddleware
from serve_app.metrics import router as metrics_router
from serve_app.routes import health, openai_compat, tei_compat
from serve_app.services import Services

# The one route whose body may exceed max_body_bytes (a whole document; serve_app/routes/vectors_documents.py).
DOCUMENTS_PATH = "/vectors/documents"
UNGATED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class InFlightGateMiddleware:
    """Answers 503 + Retry-After once the replica holds ``max_in_flight`` requests, instead of queueing."""

    def __init__(self, app: ASGIApp, gate: Any) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNGATED_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.gate.try_enter():
            body = orjson.dumps(error_body("service_unavailable", "overloaded",
                                           "too many requests in flight on this replica; retry shortly", None))
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", b"1"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


def create_api(services: Services, extra_routers: tuple[Any, ...] = ()) -> FastAPI:
    app = FastAPI(
        title="Heimdex",
        version="0.1.0",
        description="Multi-tenant embedding and semantic search on Ray Serve and Qdrant.",
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai_compat.router)
    app.include_router(tei_compat.router)
    app.include_router(metrics_router)
    for router in extra_routers:
        app.include_router(router)
    # Outermost first: body size is refused before anything reads it, then the in-flight gate.
    app.add_middleware(InFlightGateMiddleware, gate=services.gate)
    if services.settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=services.settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=services.settings.max_body_bytes,
                       path_limits={DOCUMENTS_PATH: services.settings.document_body_bytes})
    # Outermost of all: counts, times and logs every answer, refusals above included.
    app.add_middleware(RequestObservabilityMiddleware)
    return app
