"""How the gateway reaches the Embedder replicas: one DeploymentHandle per served model.

Large requests are split into slices so several replicas can work on one request, and Serve's
back-pressure (``max_queued_requests``) becomes a 503 with Retry-After instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np

from deployments.backends import EmbeddingBackend, EmbedOutput
from serve_app.errors import ApiError, too_busy

# Texts per call to one replica: big enough to batch well, small enough to spread a 2,048-item
# request over the replicas there are.
REQUEST_SLICE = 256


class EmbedderClient(Protocol):
    def served_models(self) -> list[str]: ...

    async def embed(self, model: str, texts: list[str]) -> EmbedOutput: ...

    async def info(self, model: str) -> dict[str, Any]: ...


def _merge(parts: list[EmbedOutput]) -> EmbedOutput:
    if len(parts) == 1:
        return parts[0]
    return EmbedOutput(
        vectors=np.concatenate([p.vectors for p in parts]),
        token_counts=[c for p in parts for c in p.token_counts],
        truncated=[t for p in parts for t in p.truncated],
    )


class ServeEmbedderClient:
    """Calls Embedder deployments through their Serve handles."""

    def __init__(self, handles: dict[str, Any], timeout_s: float) -> None:
        self._handles = handles
        self._timeout_s = timeout_s

    def served_models(self) -> list[str]:
        return sorted(self._handles)

    def _handle(self, model: str) -> Any:
        try:
            return self._handles[model]
        except KeyError:
            raise ApiError(400, "model_not_served", f"model {model!r} is not served by this deployment",
                           field="model") from None

    async def embed(self, model: str, texts: list[str]) -> EmbedOutput:
        from ray.serve.exceptions import BackPressureError

        handle = self._handle(model)
        slices = [texts[i : i + REQUEST_SLICE] for i in range(0, len(texts), REQUEST_SLICE)]
        try:
            parts = await asyncio.wait_for(
                asyncio.gather(*(handle.embed.remote(s) for s in slices)), self._timeout_s)
        except BackPressureError:
            raise too_busy("the embedder queue is full; retry shortly", 1.0) from None
        except TimeoutError:
            raise too_busy("the embedder did not answer in time; retry shortly", 2.0) from None
        return _merge(list(parts))

    async def info(self, model: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._handle(model).info.remote()
        return result


class LocalEmbedderClient:
    """Runs backends in-process (unit tests and tools); no Serve, no batching across callers."""

    def __init__(self, backends: dict[str, EmbeddingBackend]) -> None:
        self._backends = backends

    def served_models(self) -> list[str]:
        return sorted(self._backends)

    async def embed(self, model: str, texts: list[str]) -> EmbedOutput:
        if model not in self._backends:
            raise ApiError(400, "model_not_served", f"model {model!r} is not served", field="model")
        return self._backends[model].embed(texts)

    async def info(self, model: str) -> dict[str, Any]:
        backend = self._backends[model]
        return {"model": model, "backend": backend.name, "dimension": backend.dimension}
