"""Compare the registered embedding models on this machine: quality, speed and memory per backend (every
backend the registry lists for the model: torch, onnx-fp32, onnx-int8).

Quality: a small paraphrase vs unrelated set made for this script, and the public labelled sets shipped in the
gensim wheel's test data (the ``bench`` extra; nothing downloaded at run time):

* Lee50 (Lee, Pincombe & Welsh 2005): 50 news documents (45-126 words), human similarity of all 1,225 pairs;
  Pearson and Spearman of cosine vs the mean human rating. The document-level set: the closest to search.
* Polarity200: 200 labelled movie-review sentences (Pang & Lee; 100 positive, 100 negative); leave-one-out
  10-nearest-neighbour accuracy: how often a sentence's neighbours share its label.
* SimLex-999 and WordSim-353: human-rated word pairs; Spearman. Single words, far from search's inputs.

Memory: each (model, backend) runs in a fresh Python process; "RSS" is what the loaded, warmed-up backend
adds to that process after its libraries are imported, "peak" the process's largest RSS during the run.

Models whose weights are not installed are listed as such, never downloaded (no network).

    python scripts/evaluate_models.py [--json out.json] [--runs 30]
    heimdex evaluate                      # the same, through the console script
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
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


def gensim_test_data() -> Path | None:
    """The test_data folder of the installed gensim wheel (found without importing gensim), or None."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    return path if (path / "lee.cor").exists() else None


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def public_quality(backend: Any, data: Path, neighbours: int = 10) -> dict[str, Any]:
    """Quality on the public labelled sets in gensim's test data (see the module docstring)."""
    out: dict[str, Any] = {}
    # Both corpora are Windows-1252 text (curly quotes, dashes).
    docs = [line.strip() for line in (data / "lee.cor").read_text(encoding="cp1252", errors="replace").splitlines()
            if line.strip()]
    human = np.loadtxt(data / "similarities0-1.txt")
    rows, cols = np.triu_indices(len(docs), k=1)
    vectors = _unit(backend.embed(docs).vectors)
    cosine = (vectors @ vectors.T)[rows, cols]
    gold = human[rows, cols]
    out["lee50"] = {"pairs": len(gold), "pearson": float(np.corrcoef(cosine, gold)[0, 1]),
                    "spearman": _spearman(cosine, gold)}

    polarity = (data / "pang_lee_polarity.cor").read_text(encoding="cp1252", errors="replace")
    labelled = [line.split(" ", 1) for line in polarity.splitlines() if line.strip()]
    labels = np.array([label for label, _ in labelled])
    vectors = _unit(backend.embed([text.strip() for _, text in labelled]).vectors)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :neighbours]
    out["polarity200"] = {"sentences": len(labels), "k": neighbours, "knn_accuracy": float(np.mean(
        [np.mean(labels[n] == labels[i]) for i, n in enumerate(nearest)]))}

    for name, filename in (("simlex999", "simlex999.txt"), ("wordsim353", "wordsim353.tsv")):
        left, right, gold_scores = [], [], []
        for line in (data / filename).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                a, b, score = line.split("\t")[:3]
                left.append(a)
                right.append(b)
                gold_scores.append(float(score))
        cos = (_unit(backend.embed(left).vectors) * _unit(backend.embed(right).vectors)).sum(axis=1)
        out[name] = {"pairs": len(gold_scores), "spearman": _spearman(cos, np.array(gold_scores))}
    return out


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def evaluate_one(name: str, backend_name: str, runs: int, threads: int | None) -> dict[str, Any]:
    """One (model, backend) in THIS process (run it in a fresh one: memory is measured here)."""
    from deployments.backends import load_backend
    from deployments.registry import get_model
    from serve_app.settings import get_settings

    spec = get_model(name)
    # Import the runtimes first, so the RSS growth below is the model's, not the libraries'.
    if backend_name == "torch":
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    baseline = _rss_mb()
    started = time.perf_counter()
    backend = load_backend(spec, backend_name, device="cpu", threads=threads, paths=get_settings().model_paths())
    load_s = time.perf_counter() - started
    backend.warmup()
    loaded = _rss_mb()
    result: dict[str, Any] = {"available": True, "load_s": load_s, "quality": quality(backend)}
    data = gensim_test_data()
    result["public"] = public_quality(backend, data) if data is not None else None
    result["speed"] = speed(backend, runs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["memory"] = {"libraries_rss_mb": round(baseline, 1), "model_rss_mb": round(loaded - baseline, 1),
                        "peak_rss_mb": round(peak, 1), "vector_bytes": 4 * spec.dimension}
    return result


def head_to_head(runs: int, threads: int | None) -> dict[str, Any]:
    """Every installed model on its default CPU backend, timed in alternation inside ONE process, so load from
    elsewhere on the machine hits them alike: the fair speed ratio on a busy machine. ``min`` is the least
    contended round (closest to the idle cost), ``p50`` the typical one."""
    from deployments.backends import load_backend
    from deployments.registry import MODELS
    from serve_app.settings import get_settings

    paths = get_settings().model_paths()
    backends = {name: load_backend(spec, None, device="cpu", threads=threads, paths=paths)
                for name, spec in MODELS.items() if spec.is_installed(paths)}
    texts = [f"{SPEED_TEXT} {i}" for i in range(BATCH_SIZE)]
    times: dict[str, dict[str, list[float]]] = {n: {"single": [], "batch": []} for n in backends}
    for backend in backends.values():
        backend.embed(texts)
    for _ in range(max(5, runs)):
        for name, backend in backends.items():
            started = time.perf_counter()
            backend.embed([SPEED_TEXT])
            times[name]["single"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            backend.embed(texts)
            times[name]["batch"].append((time.perf_counter() - started) * 1000)
    return {name: {"backend": backends[name].name, "rounds": len(t["single"]),
                   "single_min_ms": min(t["single"]), "single_p50_ms": percentile(t["single"], 50),
                   f"batch{BATCH_SIZE}_min_ms": min(t["batch"]),
                   f"batch{BATCH_SIZE}_p50_ms": percentile(t["batch"], 50),
                   "texts_per_s_best": BATCH_SIZE / (min(t["batch"]) / 1000)}
            for name, t in times.items()}


def _run_child(name: str, backend_name: str, runs: int, threads: int | None) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", name, backend_name, "--runs", str(runs)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("EVAL_ONE ")]
    if done.returncode != 0 or not lines:
        last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["no output"]
        return {"available": False, "error": f"exit {done.returncode}: {last[0][:300]}"}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("EVAL_ONE "))
    return result


def evaluate(runs: int = 30, threads: int | None = None) -> dict[str, Any]:
    from deployments.registry import MODELS
    from serve_app.settings import get_settings

    paths = get_settings().model_paths()
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
                              "public_sets": str(gensim_test_data() or "not installed: pip install -e '.[bench]'"),
                              "models": {}}
    for name, spec in MODELS.items():
        entry: dict[str, Any] = {"dimension": spec.dimension, "max_tokens": spec.max_tokens,
                                 "installed": spec.is_installed(paths), "backends": {}}
        report["models"][name] = entry
        if not entry["installed"]:
            entry["note"] = f"not installed: {spec.install_hint}"
            continue
        for backend_name in spec.backends:
            if backend_name not in available_backends(spec):
                entry["backends"][backend_name] = {"available": False,
                                                   "note": "backend module not present in this checkout"}
                continue
            entry["backends"][backend_name] = _run_child(name, backend_name, runs, threads)
    report["head_to_head"] = _run_child("*", "head-to-head", runs, threads)
    report["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    return report


def format_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [f"machine: {machine['cpus']} CPUs, 1-min load average {machine['load_avg_1m']:.1f} before, "
             f"{machine.get('load_avg_1m_after', machine['load_avg_1m']):.1f} after"]
    header = (f"{'model':<18} {'backend':<10} {'dim':>4} {'para':>6} {'unrel':>6} {'margin':>7} {'top1':>5} "
              f"{'1x p50':>8} {'1x p95':>8} {'32x p50':>8} {'32x p95':>8} {'texts/s':>8} {'RSS MB':>7} {'peak':>6}")
    public: list[str] = []
    lines += [header, "-" * len(header)]
    for name, entry in report["models"].items():
        if not entry["installed"]:
            lines.append(f"{name:<18} {'-':<10} {entry['dimension']:>4}  {entry['note']}")
            continue
        for backend_name, result in entry["backends"].items():
            if not result.get("available"):
                lines.append(f"{name:<18} {backend_name:<10} {entry['dimension']:>4}  unavailable: "
                             f"{result.get('note') or result.get('error')}")
                continue
            q, s, m = result["quality"], result["speed"], result["memory"]
            lines.append(
                f"{name:<18} {backend_name:<10} {entry['dimension']:>4} {q['paraphrase_mean']:>6.3f} "
                f"{q['unrelated_mean']:>6.3f} {q['margin']:>7.3f} {q['top1_accuracy']:>5.2f} "
                f"{s['single_p50_ms']:>8.1f} {s['single_p95_ms']:>8.1f} {s['batch32_p50_ms']:>8.1f} "
                f"{s['batch32_p95_ms']:>8.1f} {s['texts_per_s']:>8.1f} {m['model_rss_mb']:>7.0f} "
                f"{m['peak_rss_mb']:>6.0f}")
            p = result.get("public")
            if p:
                public.append(
                    f"{name:<18} {backend_name:<10} {p['lee50']['pearson']:>10.4f} {p['lee50']['spearman']:>10.4f} "
                    f"{p['polarity200']['knn_accuracy']:>10.4f} {p['simlex999']['spearman']:>10.4f} "
                    f"{p['wordsim353']['spearman']:>10.4f}")
    lines.append("para/unrel: mean cosine of paraphrase / unrelated pairs; margin: worst paraphrase minus best "
                 "unrelated (> 0: every pair separated); latencies in ms; RSS: the loaded model's memory, peak: the "
                 "whole process's.")
    duel = report.get("head_to_head") or {}
    if duel and "error" not in duel:
        lines += ["", "head to head (default backends, alternating in one process; min = least contended round):",
                  f"{'model':<18} {'backend':<10} {'1x min':>8} {'1x p50':>8} {'32x min':>8} {'32x p50':>8} "
                  f"{'texts/s':>8}"]
        lines += [f"{name:<18} {d['backend']:<10} {d['single_min_ms']:>8.1f} {d['single_p50_ms']:>8.1f} "
                  f"{d['batch32_min_ms']:>8.1f} {d['batch32_p50_ms']:>8.1f} {d['texts_per_s_best']:>8.1f}"
                  for name, d in duel.items() if isinstance(d, dict)]
    elif duel:
        lines.append(f"head to head: {duel.get('error')}")
    if public:
        lines += ["", f"public labelled sets ({report['public_sets']}):",
                  f"{'model':<18} {'backend':<10} {'Lee50 r':>10} {'Lee50 rho':>10} {'pol kNN10':>10} "
                  f"{'SimLex rho':>10} {'WS353 rho':>10}", *public]
    else:
        lines.append(f"public labelled sets: {report['public_sets']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="timed single-text calls per backend")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: backend's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full report here")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "BACKEND"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # the child process of one (model, backend), or of the head-to-head timing
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        one = (head_to_head(args.runs, args.threads) if args.one[1] == "head-to-head"
               else evaluate_one(args.one[0], args.one[1], args.runs, args.threads))
        print("EVAL_ONE " + json.dumps(one), flush=True)
        return 0
    report = evaluate(runs=args.runs, threads=args.threads)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
