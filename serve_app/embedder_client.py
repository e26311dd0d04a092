"""How the gateway reaches the Embedder replicas: one DeploymentHandle per served model.

Large requests are split into slices so several replicas can work on one request, and Serve's
back-pressure (``max_queued_requests``) becomes a 503 with Retry-After instead of an unbounded queue.
Every call names its tenant, which the Embedder queues it under (fair passes, deployments/fair_queue.py);
with an ``admission`` (the Gateway's) a tenant past its share of calls in flight gets 429 + Retry-After
before anything reaches the Embedder.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from deployments.backends import EmbeddingBackend, EmbedOutput
from deployments.tenant_labels import UNNAMED_TENANT
from serve_app.errors import ApiError, too_busy
from serve_app.rate_limit import retry_after_seconds
from serve_app.tenant_admission import CONCURRENCY_RETRY_AFTER_S

# Texts per call to one replica: big enough to batch well, small enough to spread a 2,048-item
# request over the replicas there are.
REQUEST_SLICE = 256


class EmbedderClient(Protocol):
    def served_models(self) -> list[str]: ...

    async def embed(self, model: str, texts: list[str], tenant: str = UNNAMED_TENANT) -> EmbedOutput: ...

    async def info(self, model: str) -> dict[str, Any]: ...


class ServeEmbedderClient:
    """Calls Embedder deployments through their Serve handles."""

    def __init__(self, handles: dict[str, Any], timeout_s: float, *, tenant: str = UNNAMED_TENANT,
                 admission: Any = None) -> None:
        self._handles = handles
        self._timeout_s = timeout_s
        self._tenant = tenant  # for calls that name none (the relay names its own)
        self._admission = admission  # serve_app.tenant_admission.TenantAdmission, or None

    def served_models(self) -> list[str]:
        return sorted(self._handles)

    def _handle(self, model: str) -> Any:
        try:
            return self._handles[model]
        except KeyError:
            raise ApiError(400, "model_not_served", f"model {model!r} is not served by this deployment",
                           field="model") from None

    async def embed(self, model: str, texts: list[str], tenant: str | None = None) -> EmbedOutput:
        handle = self._handle(model)
        tenant = tenant or self._tenant
        if self._admission is None:
            return await self._embed(handle, texts, tenant)
        if not self._admission.enter(tenant):
            from serve_app.metrics import gateway_metrics

            gateway_metrics().refused(tenant, "concurrency")
            raise ApiError(429, "tenant_concurrency_limited",
                           "this tenant has its share of embedding calls in flight while other tenants are "
                           "active; retry after the indicated delay",
                           headers={"Retry-After": str(retry_after_seconds(CONCURRENCY_RETRY_AFTER_S))})
        try:
            return await self._embed(handle, texts, tenant)
        finally:
            self._admission.leave(tenant)

    async def _embed(self, handle: Any, texts: list[str], tenant: str) -> EmbedOutput:
        from ray.serve.exceptions import BackPressureError

        slices = [texts[i : i + REQUEST_SLICE] for i in range(0, len(texts), REQUEST_SLICE)]
        try:
            parts = await asyncio.wait_for(
                asyncio.gather(*(handle.embed.remote(s, tenant) for s in slices)), self._timeout_s)
        except BackPressureError:
            raise too_busy("the embedder queue is full; retry shortly", 1.0) from None
        except TimeoutError:
            raise too_busy("the embedder did not answer in time; retry shortly", 2.0) from None
        return EmbedOutput.concat(list(parts))

    async def info(self, model: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle(model).info.remote()
        return result


class LocalEmbedderClient:
    """Runs backends in-process (unit tests and tools); no Serve, no batching across callers."""

    def __init__(self, backends: dict[str, EmbeddingBackend]) -> None:
        self._backends = backends

    def served_models(self) -> list[str]:
        return sorted(self._backends)

    async def embed(self, model: str, texts: list[str], tenant: str = UNNAMED_TENANT) -> EmbedOutput:
        if model not in self._backends:
            raise ApiError(400, "model_not_served", f"model {model!r} is not served", field="model")
        return self._backends[model].embed(texts)

    async def info(self, model: str) -> dict[str, Any]:
        backend = self._backends[model]
        return {"model": model, "backend": backend.name, "dimension": backend.dimension}
