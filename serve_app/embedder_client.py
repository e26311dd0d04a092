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
from serve_app.call_merger import DEFAULT_MAX_IN_FLIGHT, CallMerger
from serve_app.errors import ApiError, too_busy
from serve_app.rate_limit import retry_after_seconds
from serve_app.tenant_admission import CONCURRENCY_RETRY_AFTER_S

# Texts per call to one replica: big enough to batch well, small enough to spread a 2,048-item
# request over the replicas there are.
REQUEST_SLICE = 256
# Requests (slices) this small go through the tenant's call merger; larger ones already fill a call of
# their own, so they go straight out, as many at once as there are (spread over every replica).
MERGE_BELOW_TEXTS = 64


class EmbedderClient(Protocol):
    def served_models(self) -> list[str]: ...

    async def embed(self, model: str, texts: list[str], tenant: str = UNNAMED_TENANT) -> EmbedOutput: ...

    async def info(self, model: str) -> dict[str, Any]: ...


class ServeEmbedderClient:
    """Calls Embedder deployments through their Serve handles; concurrent small requests of one tenant and
    model share handle calls (:class:`~serve_app.call_merger.CallMerger`)."""

    def __init__(self, handles: dict[str, Any], timeout_s: float, *, tenant: str = UNNAMED_TENANT,
                 admission: Any = None, calls_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        self._handles = handles
        self._calls_in_flight = calls_in_flight
        self._mergers: dict[tuple[str, str], CallMerger] = {}  # (model, tenant) -> its merger while it has work
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

    def _merger(self, model: str, tenant: str) -> CallMerger:
        merger = self._mergers.get((model, tenant))
        if merger is None:
            def drop(idle: CallMerger) -> None:  # memory stays bounded by the tenants with requests out
                if self._mergers.get((model, tenant)) is idle:
                    del self._mergers[(model, tenant)]

            merger = CallMerger(_sender(self._handle(model)), max_in_flight=self._calls_in_flight,
                                max_texts=REQUEST_SLICE, on_idle=drop)
            self._mergers[(model, tenant)] = merger
        return merger

    async def embed(self, model: str, texts: list[str], tenant: str | None = None) -> EmbedOutput:
        tenant = tenant or self._tenant
        self._handle(model)  # an unknown model is a 400 before anything else
        if self._admission is not None and not self._admission.enter(tenant):
            from serve_app.metrics import gateway_metrics

            gateway_metrics().refused(tenant, "concurrency")
            raise ApiError(429, "tenant_concurrency_limited",
                           "this tenant has its share of embedding calls in flight while other tenants are "
                           "active; retry after the indicated delay",
                           headers={"Retry-After": str(retry_after_seconds(CONCURRENCY_RETRY_AFTER_S))})
        try:
            return await self._embed(model, texts, tenant)
        finally:
            if self._admission is not None:
                self._admission.leave(tenant)

    def _call(self, model: str, texts: list[str], tenant: str) -> Any:
        if len(texts) < MERGE_BELOW_TEXTS:
            return self._merger(model, tenant).embed(texts, tenant)
        return self._handles[model].embed.remote(texts, tenant)

    async def _embed(self, model: str, texts: list[str], tenant: str) -> EmbedOutput:
        from ray.serve.exceptions import BackPressureError

        slices = [texts[i : i + REQUEST_SLICE] for i in range(0, len(texts), REQUEST_SLICE)]
        try:
            parts = await asyncio.wait_for(
                asyncio.gather(*(self._call(model, s, tenant) for s in slices)), self._timeout_s)
        except BackPressureError:
            raise too_busy("the embedder queue is full; retry shortly", 1.0) from None
        except TimeoutError:
            raise too_busy("the embedder did not answer in time; retry shortly", 2.0) from None
        return EmbedOutput.concat(list(parts))

    async def info(self, model: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle(model).info.remote()
        return result


def _sender(handle: Any) -> Any:
    """The merger's way to one model's replicas: one ``embed_many`` handle call per merged group."""

    async def send(calls: list[tuple[list[str], str]]) -> list[EmbedOutput | Exception]:
        results: list[EmbedOutput | Exception] = await handle.embed_many.remote(calls)
        return results

    return send


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
