"""Throughput of the CPU backends side by side: TorchBackend fp32, OnnxBackend fp32 and int8, raw SentenceTransformer.

Batches of 32 generated texts (fixed seed) of about 15 and about 120 tokens. The backends are
measured in interleaved rounds inside one process, so background load on the machine hits them
alike, and the median round is reported. Runtime is bounded by ``--seconds`` per measurement.

    python -m bench.backends [--threads N] [--seconds S] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BATCH = 32
_VOCABULARY = (
    "the of and to in is for on that with as by at from this data model system user service search "
    "query vector index tenant request response latency batch token embedding document cluster node "
    "replica memory network storage quickly slowly large small new old first last public private "
    "report team city river market price music night morning water energy policy research school"
)


def make_texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocabulary = _VOCABULARY.split()
    return [(" ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + ".") for _ in range(n)]


def _measure(embed: Callable[[list[str]], Any], texts: list[str], seconds: float) -> float:
    """Texts per second embedding ``texts`` in batches of BATCH for about ``seconds``."""
    done = 0
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    start = time.perf_counter()
    while True:
        for batch in batches:
            embed(batch)
            done += len(batch)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="minilm-l6-v2")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=2.5, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    from deployments.backends.onnx_backend import OnnxBackend
    from deployments.backends.torch_backend import TorchBackend
    from deployments.registry import get_model

    spec = get_model(args.model)
    torch.set_num_threads(args.threads)
    torch_backend = TorchBackend(spec, device="cpu", threads=args.threads)
    onnx_fp32 = OnnxBackend(spec, threads=args.threads, precision="fp32")
    onnx_int8 = OnnxBackend(spec, threads=args.threads, precision="int8")
    raw = SentenceTransformer(str(spec.weights_dir()), device="cpu")
    raw.max_seq_length = spec.max_tokens

    def raw_encode(texts: list[str]) -> Any:
        return raw.encode(texts, batch_size=BATCH, normalize_embeddings=spec.normalize, show_progress_bar=False)

    runners: dict[str, Callable[[list[str]], Any]] = {
        "torch-fp32": torch_backend.embed,
        "onnx-fp32": onnx_fp32.embed,
        "onnx-int8": onnx_int8.embed,
        "sentence-transformers": raw_encode,
    }
    workloads = {"short": make_texts(4 * BATCH, 12, seed=1), "long": make_texts(2 * BATCH, 100, seed=2)}
    tokens = {
        name: statistics.mean(torch_backend.embed(texts).token_counts) for name, texts in workloads.items()
    }
    for run in runners.values():  # warm up every path once
        for texts in workloads.values():
            run(texts[:BATCH])

    samples: dict[str, dict[str, list[float]]] = {w: {r: [] for r in runners} for w in workloads}
    for _ in range(args.rounds):
        for workload, texts in workloads.items():
            for runner, run in runners.items():
                samples[workload][runner].append(_measure(run, texts, args.seconds))

    results: dict[str, Any] = {"model": spec.name, "threads": args.threads, "batch": BATCH, "workloads": {}}
    print(f"model={spec.name} threads={args.threads} batch={BATCH} rounds={args.rounds} (median texts/s)")
    print(f"{'workload':10s} {'tokens':>7s} " + " ".join(f"{r:>22s}" for r in runners) + f" {'int8/fp32':>10s}")
    for workload in workloads:
        medians = {r: statistics.median(v) for r, v in samples[workload].items()}
        speedup = medians["onnx-int8"] / medians["torch-fp32"]
        results["workloads"][workload] = {
            "mean_tokens": tokens[workload],
            "texts_per_s": medians,
            "samples": samples[workload],
            "speedup_int8_vs_torch_fp32": speedup,
            "speedup_onnx_fp32_vs_torch_fp32": medians["onnx-fp32"] / medians["torch-fp32"],
            "speedup_int8_vs_sentence_transformers": medians["onnx-int8"] / medians["sentence-transformers"],
        }
        row = " ".join(f"{medians[r]:22.1f}" for r in runners)
        print(f"{workload:10s} {tokens[workload]:7.1f} {row} {speedup:9.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
