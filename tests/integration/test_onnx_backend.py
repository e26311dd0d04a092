"""The onnx-fp32 and onnx-int8 backends against the fp32 torch reference, on the real packaged MiniLM model.

The export (the slow part) runs once per module into a temporary cache directory.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deployments.backends.base import EmbeddingBackend, EmbedOutput
from deployments.model_paths import ModelPaths
from deployments.registry import get_model
from serve_app.settings import Settings

SPEC = get_model("minilm-l6-v2")
PATHS = Settings().model_paths()  # this machine's weights, as the service finds them
# onnx-int8 must keep cosine >= 0.99 to torch fp32 on every text; onnx-fp32 runs the same fp32
# weights, so anything short of 1.0 beyond rounding would be an export bug.
MIN_COSINE = {"onnx-int8": 0.99, "onnx-fp32": 0.99999}

_LONG_PARAGRAPH = (
    "Heimdex embeds documents for many tenants at once. Each request is authenticated, rate limited "
    "and routed to a replica that tokenises the text, runs the transformer and pools the token states "
    "into one vector, which is normalised and stored in the tenant's collection for semantic search. "
)

TEXTS: list[str] = [
    # short
    "Hello world.",
    "hi",
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sat on the mat.",
    "Dogs are running in the park.",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital of France.",
    "Stock markets fell sharply on Monday.",
    "The weather will be sunny tomorrow.",
    "I love this product, it works great!",
    "Terrible service, never again.",
    "Quantum computers use qubits.",
    "She sold seashells by the seashore.",
    "Python 3.11 is faster than 3.10.",
    "Please call me back at 555-0123.",
    "Order #4821 shipped on 2024-03-15.",
    "ok",
    "x",
    # punctuation and oddities
    "?!?!",
    "...",
    "---- *** ----",
    "(((nested (parentheses) everywhere)))",
    "email: someone@example.com; url: https://example.org/a?b=c&d=e",
    "C++ vs. C# vs. F#: which one?",
    "$100, €85, £72 and ¥11,000",
    "     leading and trailing spaces     ",
    "line one\nline two\n\tindented line three",
    "ALL CAPS SHOUTING ABOUT THE RESULTS",
    "camelCaseIdentifiersAndSnake_case_names_in_code()",
    "def f(x): return x ** 2  # square",
    '{"key": "value", "list": [1, 2, 3]}',
    "<html><body><p>Some markup</p></body></html>",
    # unicode
    "Café crème brûlée à la française.",
    "Ünïcödé dïäcrïtïcs ëvërÿwhërë",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "Γειά σου Κόσμε",  # noqa: RUF001
    "नमस्ते दुनिया",
    "I feel 🙂 today 🎉🎉🎉",
    "naïve façade coöperate résumé",
    "Straße, Maß, Fuß",
    "😀😃😄😁😆😅😂🤣",
    # medium
    "The committee approved the budget after a long debate about infrastructure spending and schools.",
    "Researchers found that regular exercise improves memory and reduces the risk of heart disease.",
    "To install the package, run pip install followed by the package name, then import it in Python.",
    "The train was delayed by forty minutes because of a signal failure near the central station.",
    "A group of children are playing football on a sandy beach while their parents watch.",
    "Machine learning models can be compressed with quantisation, pruning and knowledge distillation.",
    # long, under the limit
    _LONG_PARAGRAPH,
    _LONG_PARAGRAPH * 2,
    " ".join(f"token{i}" for i in range(60)),
    # long, truncated at the model's 256 tokens
    _LONG_PARAGRAPH * 6,
    "word " * 1000,
    " ".join(str(i) for i in range(2000)),
    ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40).strip(),
    "東京 " * 400,
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


pytestmark = pytest.mark.skipif(not SPEC.is_installed(PATHS), reason="minilm-l6-v2 weights not installed")


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> ModelPaths:
    """The machine's weights, with the exports going to a temporary ONNX cache."""
    return replace(PATHS, onnx_cache=tmp_path_factory.mktemp("onnx-cache"))


@pytest.fixture(scope="module", params=sorted(MIN_COSINE))
def onnx_backend(request: pytest.FixtureRequest, paths: ModelPaths) -> EmbeddingBackend:
    from deployments.backends import load_backend

    backend = load_backend(SPEC, request.param, threads=2, paths=paths)
    assert backend.name == request.param
    return backend


@pytest.fixture(scope="module")
def torch_backend() -> EmbeddingBackend:
    from deployments.backends import load_backend

    return load_backend(SPEC, "torch", device="cpu", threads=2, paths=PATHS)


@pytest.fixture(scope="module")
def outputs(onnx_backend: EmbeddingBackend, torch_backend: EmbeddingBackend) -> tuple[EmbedOutput, EmbedOutput]:
    return onnx_backend.embed(TEXTS), torch_backend.embed(TEXTS)


def test_text_set_is_varied() -> None:
    assert len(TEXTS) >= 50


def test_export_is_cached_in_the_cache_dir(paths: ModelPaths, onnx_backend: EmbeddingBackend) -> None:
    from deployments.backends.onnx_export import export_onnx

    precision = "int8" if onnx_backend.name == "onnx-int8" else "fp32"
    path = paths.onnx_cache / f"{SPEC.name}-{SPEC.version}" / f"model.{precision}.onnx"
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    assert export_onnx(SPEC, precision, paths) == path  # present: returned as is, not re-exported
    assert path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".export-")]  # no temp left behind


def test_dimension_and_normalisation(outputs: tuple[EmbedOutput, EmbedOutput]) -> None:
    onnx_out, _ = outputs
    assert onnx_out.vectors.shape == (len(TEXTS), 384)
    assert onnx_out.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(onnx_out.vectors, axis=1), 1.0, atol=1e-5)


def test_same_tokens_and_truncation_as_torch(outputs: tuple[EmbedOutput, EmbedOutput]) -> None:
    onnx_out, torch_out = outputs
    assert onnx_out.token_counts == torch_out.token_counts
    assert onnx_out.truncated == torch_out.truncated
    assert any(onnx_out.truncated)
    assert not all(onnx_out.truncated)
    assert max(onnx_out.token_counts) == SPEC.max_tokens


def test_cosine_to_fp32_reference(onnx_backend: EmbeddingBackend, outputs: tuple[EmbedOutput, EmbedOutput]) -> None:
    onnx_out, torch_out = outputs
    cos = _cosines(onnx_out.vectors, torch_out.vectors)
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE[onnx_backend.name], f"cosine {cos.min():.6f} on {TEXTS[worst][:60]!r}"


def test_default_backend_is_onnx_fp32_and_onnx_runs_on_the_cpu_only() -> None:
    from deployments.backends import load_backend

    assert SPEC.default_backend == "onnx-fp32"
    with pytest.raises(ValueError, match="CPU only"):
        load_backend(SPEC, "onnx-int8", device="cuda", paths=PATHS)


def test_batch_composition_does_not_change_vectors(onnx_backend: EmbeddingBackend) -> None:
    # Padding and chunking: a text alone and inside a mixed batch must embed (nearly) the same.
    alone = np.stack([onnx_backend.embed([t]).vectors[0] for t in TEXTS[:10]])
    together = onnx_backend.embed(TEXTS).vectors[:10]
    assert _cosines(alone, together).min() >= 0.995


def test_norms_give_the_raw_mean_pooled_vectors_of_sentence_transformers(
        onnx_backend: EmbeddingBackend, torch_backend: EmbeddingBackend) -> None:
    """TEI's normalize=false: vectors x norms is the model's un-normalised mean pooling, on every backend."""
    texts = ["The quick brown fox.", "A second, somewhat longer sentence about embeddings and norms."]
    # The reference: sentence-transformers' own token embeddings, mean-pooled here (its encode always applies
    # the model's Normalize module, whatever normalize_embeddings says).
    tokens = torch_backend._model.encode(texts, output_value="token_embeddings")  # type: ignore[attr-defined]
    reference = np.stack([np.asarray(t.cpu().numpy()).mean(axis=0) for t in tokens])
    for backend in (torch_backend, onnx_backend):
        out = backend.embed(texts)
        assert out.norms is not None and out.norms.shape == (2,)
        raw = out.vectors * out.norms[:, None]
        tolerance = 1e-3 if backend.name != "onnx-int8" else 0.15
        np.testing.assert_allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(reference, axis=1), rtol=tolerance)
        if backend.name != "onnx-int8":
            np.testing.assert_allclose(raw, reference, atol=1e-4)
