"""Liveness and readiness probes (no token needed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from serve_app.deps import ServicesDep
from serve_app.errors import json_response

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the gateway replica answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> Response:
    """Readiness: every served model is loaded, the vector store and the database answer."""
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
    return json_response({"status": "ok" if ready else "unavailable", "checks": checks},
                         200 if ready else 503, None if ready else {"Retry-After": "5"})
