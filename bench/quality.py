"""Quality of the ONNX backends (fp32, int8) against the fp32 torch reference on public labelled benchmarks.

The benchmarks are SimLex-999 (Hill et al., 2015) and WordSim-353 (Finkelstein et al., 2002),
human-rated word-pair similarity sets, as shipped inside the ``gensim`` wheel on PyPI
(``gensim/test/test_data/simlex999.txt`` and ``wordsim353.tsv``; install with the ``bench`` extra).
No sentence-level labelled set (STS-B, SICK, MRPC) ships inside a PyPI package, and nothing can be
downloaded from a dataset hub here, so these word-pair sets are the public labelled data available.

For each set: the Spearman correlation between the cosine of the two embeddings and the gold
score, for every backend, and each ONNX backend's score over torch's. The check passes when every
ratio is ≥ 0.99.

    python -m bench.quality [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import write_json

BENCHMARKS = {"SimLex-999": "simlex999.txt", "WordSim-353": "wordsim353.tsv"}
MIN_RATIO = 0.99


def gensim_test_data() -> Path:
    """The test_data folder of the installed gensim wheel (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gensim is not installed: pip install -e '.[bench]'")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"


def load_pairs(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Word pairs and gold scores from a gensim-format file (``#`` comments, tab-separated)."""
    left: list[str] = []
    right: list[str] = []
    gold: list[float] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, score = line.split("\t")[:3]
        left.append(a)
        right.append(b)
        gold.append(float(score))
    return left, right, np.asarray(gold, dtype=np.float64)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def pair_cosines(backend: Any, left: list[str], right: list[str]) -> np.ndarray:
    a = backend.embed(left).vectors
    b = backend.embed(right).vectors
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1), dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Spearman quality of onnx-fp32 and onnx-int8 vs torch fp32.")
    parser.add_argument("--model", default="minilm-l6-v2")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from deployments.backends.onnx_backend import OnnxBackend
    from deployments.backends.torch_backend import TorchBackend
    from deployments.registry import get_model
    from serve_app.settings import get_settings

    spec = get_model(args.model)
    paths = get_settings().model_paths()
    backends: dict[str, Any] = {"torch-fp32": TorchBackend(spec, paths, device="cpu", threads=args.threads)}
    for precision in ("fp32", "int8"):  # the ONNX backends the registry lists for this model
        if f"onnx-{precision}" in spec.backends:
            backends[f"onnx-{precision}"] = OnnxBackend(spec, paths, threads=args.threads, precision=precision)
    data_dir = gensim_test_data()
    results: dict[str, Any] = {"model": spec.name, "source": "gensim wheel test_data", "benchmarks": {}}
    ok = True
    print(f"model={spec.name}  metric=Spearman(cosine, gold)  source={data_dir}")
    for name, filename in BENCHMARKS.items():
        left, right, gold = load_pairs(data_dir / filename)
        scores = {b: spearman(pair_cosines(backend, left, right), gold) for b, backend in backends.items()}
        ratios = {b: scores[b] / scores["torch-fp32"] for b in backends if b != "torch-fp32"}
        ok = ok and min(ratios.values()) >= MIN_RATIO
        ratio = ratios.get("onnx-int8", min(ratios.values()))
        results["benchmarks"][name] = {"pairs": len(gold), "spearman": scores, "ratio": ratio, "ratios": ratios}
        print(f"{name:12s} pairs={len(gold):4d}  " + "  ".join(f"{b}={v:.4f}" for b, v in scores.items())
              + "  " + "  ".join(f"{b}/torch={r:.4f}" for b, r in ratios.items()))
    results["pass"] = ok
    print("PASS" if ok else f"FAIL: a ratio is below {MIN_RATIO}")
    write_json(args.json, results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
