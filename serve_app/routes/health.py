"""Liveness and readiness probes (no token needed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from serve_app.deps import ServicesDep
from serve_app.errors import json_response
from serve_app.switches import real_embeddings_enabled

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the gateway replica answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> Response:
    """Readiness: every served model is loaded, the vector store and the database answer.

    ``real_embeddings`` reports the live switch (``on``/``off``). It does not decide readiness: with
    real embeddings off the service is still up (``/vectors/mock``, vector search, jobs and stats
    work; the real-model routes answer 503 with Retry-After), and a readiness failure would make
    load balancers and ``heimdex up`` treat a deliberate rollback as an outage.
    """
    checks: dict[str, str] = {}

    async def check(name: str, probe: asyncio.Future[object] | object) -> None:
        try:
            await asyncio.wait_for(probe, READY_TIMEOUT_S)  # type: ignore[arg-type]
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"

    probes = [check(f"model:{m}", services.embedders.info(m)) for m in services.embedders.served_models()]
    if services.store is not None:
        probes.append(check("vector_store", services.store.ping()))
    if services.db is not None:
        probes.append(check("database", asyncio.to_thread(services.db.ping)))
    await asyncio.gather(*probes)
    ready = bool(checks) and all(v == "ok" for v in checks.values())
    real = "on" if await real_embeddings_enabled(services) else "off"
    return json_response({"status": "ok" if ready else "unavailable", "checks": checks, "real_embeddings": real},
                         200 if ready else 503, None if ready else {"Retry-After": "5"})
