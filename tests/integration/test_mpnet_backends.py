"""all-mpnet-base-v2 through every backend Heimdex serves it with, against sentence-transformers' own ``encode``
on the same reassembled directory: cosine >= 0.9999 on every text (short, odd, unicode, truncated at 384 tokens).

torch on CUDA runs where a GPU is present (the same check, fp16); on the CPU-only CI machine that case skips.
Skipped only when the model is not installed (`make models`; CI installs it).
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from deployments.backends.base import EmbeddingBackend
from deployments.model_paths import ModelPaths
from deployments.registry import get_model
from serve_app.settings import Settings
from tests.integration.test_onnx_backend import TEXTS

SPEC = get_model("all-mpnet-base-v2")
MIN_COSINE = 0.9999

PATHS = Settings().model_paths()  # where `make models` put it (HEIMDEX_MODEL_CACHE, else ~/.cache/heimdex/models)

pytestmark = pytest.mark.skipif(not SPEC.is_installed(PATHS), reason="all-mpnet-base-v2 not installed (make models)")

# Past MiniLM's 256 tokens, under this model's 384: truncation must follow this model's own limit.
TEXTS_384 = [*TEXTS, "alpha beta gamma delta " * 90]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(SPEC.weights_dir(PATHS)), device="cpu")
    assert model.max_seq_length == SPEC.max_tokens, "the registry's token limit is the model's own"
    return np.asarray(model.encode(TEXTS_384, batch_size=16, normalize_embeddings=True), dtype=np.float32)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    """The installed model, with the exports going to a temporary ONNX cache."""
    return replace(PATHS, onnx_cache=tmp_path_factory.mktemp("onnx-cache"))


def _served_backends() -> list[tuple[str, str]]:
    cases = [(name, "cpu") for name in SPEC.backends]
    cases.append(("torch", "cuda"))
    return cases


@pytest.fixture(scope="module", params=_served_backends(), ids=lambda c: f"{c[0]}-{c[1]}")
def backend(request: pytest.FixtureRequest, paths: ModelPaths) -> EmbeddingBackend:
    from deployments.backends import load_backend

    name, device = request.param
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device on this machine")
    loaded = load_backend(SPEC, name, device=device, threads=2, paths=paths)
    assert loaded.name == name
    return loaded


def test_every_served_backend_matches_sentence_transformers(backend: EmbeddingBackend, reference: np.ndarray) -> None:
    out = backend.embed(TEXTS_384)
    assert out.vectors.shape == (len(TEXTS_384), 768) and out.vectors.dtype == np.float32
    cosines = (out.vectors * reference).sum(axis=1) / (
        np.linalg.norm(out.vectors, axis=1) * np.linalg.norm(reference, axis=1))
    worst = int(np.argmin(cosines))
    assert cosines.min() >= MIN_COSINE, f"{backend.name}: cosine {cosines.min():.6f} on {TEXTS_384[worst][:60]!r}"
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-4)
    assert max(out.token_counts) == SPEC.max_tokens and any(out.truncated)
    assert 256 < out.token_counts[-1] < SPEC.max_tokens and not out.truncated[-1]


def test_mpnet_has_no_int8_backend() -> None:
    from deployments.backends import load_backend

    with pytest.raises(ValueError, match="no backend 'onnx-int8'"):
        load_backend(SPEC, "onnx-int8", device="cpu", paths=PATHS)
