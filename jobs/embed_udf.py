"""The Ray Data embedding step: a callable class that runs the SAME backend code as the online path.

Each actor of the ``map_batches`` pool loads the model once through
:func:`deployments.backends.load_backend`, so truncation to the model's token limit, length-sorted
chunking and L2 normalisation are exactly those of the Embedder replicas (vectors match the online
API to float precision). Rows whose ``status`` is not ``todo`` (already written, or failed
validation) pass through untouched with a zero vector; a text the model cannot embed marks its row
failed instead of failing the run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from deployments.model_paths import ModelPaths
from deployments.registry import get_model

log = logging.getLogger(__name__)

STATUS_TODO = "todo"
STATUS_SKIP = "skip"
STATUS_FAILED = "failed"


class EmbedBatch:
    """``ds.map_batches(EmbedBatch, fn_constructor_kwargs={...}, batch_format="numpy", concurrency=N)``."""

    def __init__(
        self, model: str, paths: ModelPaths, backend: str | None = None, device: str = "auto",
        threads: int | None = None,
    ) -> None:
        from deployments.backends import load_backend

        spec = get_model(model)
        self.dimension = spec.dimension
        # ``paths``: the job driver's Settings.model_paths() (jobs/reembed.py); the actors read no environment.
        self.backend = load_backend(spec, backend, device, threads, paths=paths)
        self.backend.warmup()

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        status = np.asarray(batch["status"]).astype(object)
        errors = np.asarray(batch["error"]).astype(object)
        n = len(status)
        vectors = np.zeros((n, self.dimension), dtype=np.float32)
        truncated = np.zeros(n, dtype=bool)
        todo = [i for i in range(n) if status[i] == STATUS_TODO]
        if todo:
            texts = [str(batch["text"][i]) for i in todo]
            try:
                out = self.backend.embed(texts)
                vectors[todo] = out.vectors
                truncated[todo] = out.truncated
            except Exception:  # one bad text must not sink the batch: retry row by row
                log.exception("batch embedding failed; retrying %d rows one by one", len(todo))
                for i, text in zip(todo, texts, strict=True):
                    try:
                        single = self.backend.embed([text])
                    except Exception as exc:
                        status[i] = STATUS_FAILED
                        errors[i] = f"embedding failed: {type(exc).__name__}: {exc}"[:300]
                    else:
                        vectors[i] = single.vectors[0]
                        truncated[i] = single.truncated[0]
        return {**batch, "status": status, "error": errors, "vector": vectors, "truncated": truncated}
