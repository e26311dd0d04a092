"""Compare the registered embedding models on this machine: quality on paraphrase vs unrelated pairs,
and speed per backend (every backend the registry lists for the model: torch, onnx-fp32, onnx-int8).

Models whose weights are not installed are listed as such, never downloaded (no network).

    python scripts/evaluate_models.py [--json out.json] [--runs 30]
    heimdex evaluate                      # the same, through the console script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (a, paraphrase of a): the score of each should be high.
PARAPHRASES: list[tuple[str, str]] = [
    ("The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps above an idle hound."),
    ("How do I reset my password?", "What are the steps to change my forgotten password?"),
    ("The meeting was moved to Thursday afternoon.", "We rescheduled the meeting for Thursday after lunch."),
    ("Database indexes make queries faster.", "Adding an index speeds up database lookups."),
    ("The child is playing football in the park.", "A kid kicks a soccer ball around the park."),
    ("Heavy rain caused flooding in the city centre.", "Downtown streets flooded after a storm."),
    ("She bought a new laptop for work.", "She purchased a new notebook computer for her job."),
    ("The concert was cancelled because of the storm.", "Bad weather led to the show being called off."),
]
# (a, unrelated b): the score of each should be low.
UNRELATED: list[tuple[str, str]] = [
    ("The quick brown fox jumps over the lazy dog.", "Database indexes make queries faster."),
    ("How do I reset my password?", "The child is playing football in the park."),
    ("The meeting was moved to Thursday afternoon.", "Volcanic soil is rich in minerals."),
    ("Heavy rain caused flooding in the city centre.", "She bought a new laptop for work."),
    ("The concert was cancelled because of the storm.", "Photosynthesis converts light into chemical energy."),
    ("A recipe for tomato soup with basil.", "The stock market closed higher on Friday."),
]
SPEED_TEXT = "Semantic search finds documents by meaning rather than by exact keywords. " * 3
BATCH_SIZE = 32


def available_backends(spec: Any) -> list[str]:
    return list(spec.backends)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def quality(backend: Any) -> dict[str, float]:
    def scores(pairs: list[tuple[str, str]]) -> list[float]:
        vectors = backend.embed([t for pair in pairs for t in pair]).vectors
        return [cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))]

    para, unrel = scores(PARAPHRASES), scores(UNRELATED)
    # Retrieval check: each sentence's paraphrase is its nearest neighbour among all paraphrase targets.
    sources = backend.embed([a for a, _ in PARAPHRASES]).vectors
    targets = backend.embed([b for _, b in PARAPHRASES]).vectors
    sims = sources @ targets.T / np.outer(np.linalg.norm(sources, axis=1), np.linalg.norm(targets, axis=1))
    top1 = float(np.mean(np.argmax(sims, axis=1) == np.arange(len(PARAPHRASES))))
    return {"paraphrase_mean": statistics.fmean(para), "paraphrase_min": min(para),
            "unrelated_mean": statistics.fmean(unrel), "unrelated_max": max(unrel),
            "margin": min(para) - max(unrel), "top1_accuracy": top1}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def speed(backend: Any, runs: int) -> dict[str, float]:
    for _ in range(3):
        backend.embed([SPEED_TEXT])
    single: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.embed([SPEED_TEXT])
        single.append((time.perf_counter() - started) * 1000)
    batch: list[float] = []
    texts = [f"{SPEED_TEXT} {i}" for i in range(BATCH_SIZE)]
    for _ in range(max(3, runs // 5)):
        started = time.perf_counter()
        backend.embed(texts)
        batch.append((time.perf_counter() - started) * 1000)
    return {"single_p50_ms": percentile(single, 50), "single_p95_ms": percentile(single, 95),
            f"batch{BATCH_SIZE}_p50_ms": percentile(batch, 50), f"batch{BATCH_SIZE}_p95_ms": percentile(batch, 95),
            "texts_per_s": BATCH_SIZE / (percentile(batch, 50) / 1000)}


def evaluate(runs: int = 30, threads: int | None = None) -> dict[str, Any]:
    from deployments.backends import load_backend
    from deployments.registry import MODELS

    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
                              "models": {}}
    for name, spec in MODELS.items():
        entry: dict[str, Any] = {"dimension": spec.dimension, "max_tokens": spec.max_tokens,
                                 "installed": spec.is_installed(), "backends": {}}
        report["models"][name] = entry
        if not entry["installed"]:
            entry["note"] = f"not installed: {spec.install_hint}"
            continue
        for backend_name in spec.backends:
            if backend_name not in available_backends(spec):
                entry["backends"][backend_name] = {"available": False,
                                                   "note": "backend module not present in this checkout"}
                continue
            try:
                started = time.perf_counter()
                backend = load_backend(spec, backend_name, device="cpu", threads=threads)
                load_s = time.perf_counter() - started
                entry["backends"][backend_name] = {"available": True, "load_s": load_s,
                                                   "quality": quality(backend), "speed": speed(backend, runs)}
            except Exception as exc:
                entry["backends"][backend_name] = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']['cpus']} CPUs, 1-min load average {report['machine']['load_avg_1m']:.1f}"]
    header = (f"{'model':<14} {'backend':<10} {'dim':>4} {'para':>6} {'unrel':>6} {'margin':>7} {'top1':>5} "
              f"{'1x p50':>8} {'1x p95':>8} {'32x p50':>8} {'32x p95':>8} {'texts/s':>8}")
    lines += [header, "-" * len(header)]
    for name, entry in report["models"].items():
        if not entry["installed"]:
            lines.append(f"{name:<14} {'-':<10} {entry['dimension']:>4}  {entry['note']}")
            continue
        for backend_name, result in entry["backends"].items():
            if not result.get("available"):
                lines.append(f"{name:<14} {backend_name:<10} {entry['dimension']:>4}  unavailable: "
                             f"{result.get('note') or result.get('error')}")
                continue
            q, s = result["quality"], result["speed"]
            lines.append(
                f"{name:<14} {backend_name:<10} {entry['dimension']:>4} {q['paraphrase_mean']:>6.3f} "
                f"{q['unrelated_mean']:>6.3f} {q['margin']:>7.3f} {q['top1_accuracy']:>5.2f} "
                f"{s['single_p50_ms']:>8.1f} {s['single_p95_ms']:>8.1f} {s['batch32_p50_ms']:>8.1f} "
                f"{s['batch32_p95_ms']:>8.1f} {s['texts_per_s']:>8.1f}")
    lines.append("para/unrel: mean cosine of paraphrase / unrelated pairs; margin: worst paraphrase minus best "
                 "unrelated (> 0: every pair separated); latencies in ms.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed single-text calls per backend")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: backend's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    args = parser.parse_args(argv)
    report = evaluate(runs=args.runs, threads=args.threads)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
