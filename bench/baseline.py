"""The denominators: the raw model, in the bench process, with no service in the way.

``SentenceTransformer(MODEL_DIR).encode`` with torch using every core, measured while the service is
idle: throughput at the best of a few batch sizes (per text set), and the latency of encoding one text.
Each trial is bounded by a text count *and* a duration.

Beside it, the backend the Embedder serves with (the registry's CPU default, e.g. ``onnx-fp32``), in
the same process: its own single-text latency and batch-32 throughput, so the service's overhead can
be read against the model code it actually runs as well as against the torch ceiling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bench.load import percentiles
from bench.texts import text_set

MODEL = "minilm-l6-v2"
BATCH_SIZES = (16, 32, 64, 128)
# Batches per encode() call in the throughput trials: the duration bound is checked between calls.
BATCHES_PER_CALL = 1


def load_model(threads: int | None = None) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from deployments.registry import get_model

    torch.set_num_threads(threads or os.cpu_count() or 1)
    spec = get_model(MODEL)
    model = SentenceTransformer(str(spec.weights_dir()), device="cpu")
    model.max_seq_length = spec.max_tokens
    model.eval()
    return model


def token_stats(model: Any, texts: list[str]) -> dict[str, float]:
    encoded = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    return {"mean_tokens": sum(lengths) / len(lengths), "min_tokens": min(lengths), "max_tokens": max(lengths)}


def throughput(encode: Callable[[list[str], int], Any], texts: list[str], batch_size: int, max_texts: int,
               max_seconds: float) -> dict[str, Any]:
    """texts/s of ``encode(chunk, batch_size)`` over up to ``max_texts`` texts or ``max_seconds``."""
    encode(texts[:batch_size], batch_size)  # warm-up
    done = 0
    start = time.perf_counter()
    while done < max_texts and time.perf_counter() - start < max_seconds:
        offset = done % len(texts)
        chunk = texts[offset:offset + min(BATCHES_PER_CALL * batch_size, max_texts - done)]
        encode(chunk, batch_size)
        done += len(chunk)
    elapsed = time.perf_counter() - start
    return {"batch_size": batch_size, "texts": done, "elapsed_s": elapsed, "texts_per_s": done / elapsed}


def _encode_batch(model: Any) -> Callable[[list[str], int], Any]:
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                                  convert_to_numpy=True)


def _encode_one(model: Any) -> Callable[[str], Any]:
    return lambda text: model.encode([text], normalize_embeddings=True, convert_to_numpy=True)


def single_latency(encode_one: Callable[[str], Any], texts: list[str], n: int, max_seconds: float) -> dict[str, Any]:
    """Latency of embedding one text: what one online request costs the model alone."""
    for text in texts[:5]:
        encode_one(text)
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        if time.perf_counter() - start >= max_seconds:
            break
        sent = time.perf_counter()
        encode_one(texts[i % len(texts)])
        samples.append((time.perf_counter() - sent) * 1000.0)
    return {"n": len(samples), **percentiles(samples)}


def served_backend(quick: bool = False) -> dict[str, Any]:
    """The Embedder's default CPU backend in this process: single-text latency, batch-32 texts/s (short)."""
    from deployments.backends import load_backend
    from deployments.registry import get_model

    backend = load_backend(get_model(MODEL), None, device="cpu")
    short = text_set("short")
    single = single_latency(lambda text: backend.embed([text]), short, n=100 if quick else 500,
                            max_seconds=4.0 if quick else 30.0)
    max_texts, max_seconds = (512, 2.0) if quick else (2000, 15.0)  # as the raw SHORT trials
    batch = throughput(lambda texts, _: backend.embed(texts), short, 32, max_texts, max_seconds)
    return {"backend": backend.name, "single": single, "batch_size": batch["batch_size"],
            "texts_per_s": batch["texts_per_s"]}


def measure_baseline(quick: bool = False, sets: tuple[str, ...] = ("short", "long")) -> dict[str, Any]:
    """Raw encode throughput per text set (every batch size, and the best) and single-text latency."""
    import torch

    model = load_model()
    out: dict[str, Any] = {"model": MODEL, "torch_threads": torch.get_num_threads(), "sets": {}}
    for name in sets:
        texts = text_set(name)
        batch_sizes: tuple[int, ...] = BATCH_SIZES
        if name == "short":
            max_texts, max_seconds = (512, 2.0) if quick else (2000, 15.0)
        else:
            max_texts, max_seconds = (256, 3.0) if quick else (1024, 25.0)
            if quick:
                batch_sizes = (32, 64)
        trials = [throughput(_encode_batch(model), texts, bs, max_texts, max_seconds) for bs in batch_sizes]
        best = max(trials, key=lambda t: t["texts_per_s"])
        out["sets"][name] = {**token_stats(model, texts[:500]), "trials": trials,
                             "best_batch_size": best["batch_size"], "best_texts_per_s": best["texts_per_s"]}
    short = text_set("short")
    out["single"] = single_latency(_encode_one(model), short, n=100 if quick else 500,
                                   max_seconds=4.0 if quick else 30.0)
    del model
    out["served_backend"] = served_backend(quick)
    return out
