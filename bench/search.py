"""Search latency at scale: seed many points straight through the store actor, then time
``POST /vectors/search`` from one client.

The vectors are random unit vectors: what a search costs depends on how many points the shard holds
and how they are indexed, not on where the vectors came from, and writing them directly saves
embedding 100,000 texts. Point ids are the service's deterministic ids, so seeding the same stack
twice overwrites instead of growing. Seeding is bounded by a duration; the figure records how many
points were actually stored.

After seeding, the store's HNSW optimize is forced (``optimize_now`` when the store actor exposes it)
or waited for (the edge backend optimizes a shard once writes have been idle for ~2 s; a search takes
the shard lock, so one search after that idle time returns only when the optimize has finished).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import LoadRunner, LoadSpec
from bench.stack import Stack
from bench.texts import text_set

MODEL = "minilm-l6-v2"
MODEL_VERSION = "v1"
DIMENSION = 384
UPSERT_BATCH = 1000
IDLE_OPTIMIZE_WAIT_S = 3.0  # > the edge backend's IDLE_OPTIMIZE_S (2 s)
NOISE = 0.9  # per-dimension noise around a centroid (itself ~N(0, 1) per dimension)
QUERY_NOISES = (0.75, 1.5)  # norms of the noise that turns a stored unit vector into a query (cosine ~0.8, ~0.55)


def tenant_name(i: int) -> str:
    return f"bench-tenant-{i:02d}"


def seed_store(tenants: int, points_per_tenant: int, max_seconds: float, seed: int = 7) -> dict[str, Any]:
    """Upsert ``tenants x points_per_tenant`` random unit vectors, round-robin over tenants in
    batches of ``UPSERT_BATCH``, stopping early at ``max_seconds``. Needs a Ray connection."""
    from deployments.point_ids import point_id_for
    from deployments.vector_store import PointRecord, alias_name, open_store
    from serve_app.settings import Settings

    store = open_store(Settings().store_config())
    collection = alias_name(MODEL)
    rng = np.random.default_rng(seed)
    written = dict.fromkeys(range(tenants), 0)
    start = time.perf_counter()
    stopped_early = False
    while any(n < points_per_tenant for n in written.values()):
        for t in range(tenants):
            if time.perf_counter() - start >= max_seconds:
                stopped_early = True
                break
            first = written[t]
            n = min(UPSERT_BATCH, points_per_tenant - first)
            if n <= 0:
                continue
            vectors = rng.standard_normal((n, DIMENSION), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            points = []
            for j in range(n):
                segment = f"seg-{first + j}"
                asset = f"asset-{(first + j) // 100}"
                points.append(PointRecord(
                    id=point_id_for(tenant_name(t), asset, segment, MODEL, MODEL_VERSION),
                    vector=vectors[j].tolist(),
                    payload={"asset_id": asset, "segment_id": segment, "text_preview": f"synthetic point {first + j}"},
                ))
            store.upsert(collection, tenant_name(t), points)
            written[t] += n
        if stopped_early:
            break
    seed_s = time.perf_counter() - start
    optimize = _optimize(store, collection)
    return {"tenants": tenants, "points_per_tenant_target": points_per_tenant, "points": sum(written.values()),
            "seed_s": seed_s, "stopped_early": stopped_early, "optimize": optimize}


def _optimize(store: Any, collection: str) -> dict[str, Any]:
    start = time.perf_counter()
    import ray

    from deployments.vector_store.actor import get_store
    from serve_app.settings import Settings

    target = store.resolve(collection)
    try:
        ray.get(get_store(Settings().store_config()).optimize_now.remote(target))
        how = "optimize_now"
    except AttributeError:
        # The actor does not expose optimize_now: let the idle optimizer start, then block on the
        # shard lock with one search (twice, in case the first landed before the optimizer took it).
        probe = [0.0] * DIMENSION
        probe[0] = 1.0
        for _ in range(2):
            time.sleep(IDLE_OPTIMIZE_WAIT_S)
            store.search(collection, tenant_name(0), probe, limit=1)
        how = "waited for the idle optimizer"
    return {"how": how, "seconds": time.perf_counter() - start, "collection": target}


def measure_search(stack: Stack, runner: LoadRunner, tenants: int, requests: int, max_seconds: float) -> dict[str, Any]:
    """Latency of text queries (embed + search) and of vector queries (search only) from one client,
    the requests spread round-robin over the seeded tenants (each with its own token)."""
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    settings = Settings()
    tokens = [{"Authorization": f"Bearer {mint_token(settings, org_id=tenant_name(t), sub='bench')}"}
              for t in range(tenants)]
    queries = text_set("short")[:200]
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((200, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    kinds: dict[str, list[dict[str, Any]]] = {
        "query": [{"query": q, "limit": 10} for q in queries],
        "vector": [{"vector": v.tolist(), "limit": 10} for v in vectors],
    }
    results: dict[str, Any] = {}
    for kind, bodies in kinds.items():
        spec = LoadSpec(url=f"{stack.url}/vectors/search", bodies=bodies, concurrency=1, max_requests=requests,
                        max_duration_s=max_seconds / 2, body_headers=[tokens[i % tenants] for i in range(len(bodies))],
                        warmup_requests=min(10, requests))
        results[kind] = runner.run(spec).as_dict()
    return results


# --- In-process: recall against exact cosine, and latency per mode, at 100,000 points -------------------------

def _synthetic_corpus(n: int, dimension: int, seed: int, noise: float = NOISE) -> tuple[np.ndarray, list[str]]:
    """``n`` unit vectors drawn around 2,000 centroids (embeddings cluster by topic; uniform random vectors
    are HNSW's worst case and unlike any model's output) and a text per point: 12 words drawn from a
    Zipf-distributed 20,000-word vocabulary, plus one unique code per point (what exact-term queries hit)."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((2000, dimension), dtype=np.float32)
    vectors = centroids[rng.integers(0, len(centroids), n)] + noise * rng.standard_normal((n, dimension),
                                                                                         dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranks = np.minimum(rng.zipf(1.2, size=(n, 12)), 20_000)
    texts = [" ".join(f"w{r}" for r in row) + f" code{i:06d}" for i, row in enumerate(ranks)]
    return vectors, texts


def measure_store_search(points: int = 100_000, tenants: tuple[int, ...] = (1, 10), queries: int = 200,
                         limit: int = 10, tunings: dict[str, Any] | None = None, seed: int = 7,
                         data_dir: str | None = None, noise: float = NOISE) -> dict[str, Any]:
    """The edge backend in this process (no service hops): for each tenant layout (``points`` split over
    ``t`` tenants), recall@``limit`` of dense search against exact cosine (numpy over the tenant's points)
    and p50/p95 latency of dense, sparse and hybrid searches, under each SearchTuning of ``tunings``
    (default: the shipped defaults)."""
    import tempfile
    import uuid

    from deployments.vector_store import PointRecord, alias_name, bm25
    from deployments.vector_store.config import SearchTuning
    from deployments.vector_store.edge import EdgeBackend

    tunings = tunings or {"default": SearchTuning()}
    vectors, texts = _synthetic_corpus(points, DIMENSION, seed, noise)
    rng = np.random.default_rng(seed + 1)
    out: dict[str, Any] = {"points": points, "queries": queries, "limit": limit, "noise": noise, "layouts": {}}
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        for n_tenants in tenants:
            store = EdgeBackend(Path(tmp) / f"t{n_tenants}", idle_optimize_s=3600)
            try:
                store.ensure_collection("bench", "v1", DIMENSION)
                collection = alias_name("bench")
                owner = np.arange(points) % n_tenants
                start = time.perf_counter()
                for lo in range(0, points, UPSERT_BATCH):
                    for t in range(n_tenants):
                        rows = [i for i in range(lo, min(points, lo + UPSERT_BATCH)) if owner[i] == t]
                        store.upsert(collection, tenant_name(t), [
                            PointRecord(str(uuid.UUID(int=i + 1)), vectors[i], {"text": texts[i]},
                                        bm25.encode_document(texts[i])) for i in rows], wait=False)
                write_s = time.perf_counter() - start
                start = time.perf_counter()
                store.optimize_now(collection)
                optimize_s = time.perf_counter() - start
                layout: dict[str, Any] = {"tenants": n_tenants, "points_per_tenant": points // n_tenants,
                                          "write_s": write_s, "optimize_s": optimize_s, "tunings": {}}
                # Queries: a stored vector moved by noise of norm QUERY_NOISES[j] (a new text near a stored one:
                # cosine ~0.8, or only on its topic: cosine ~0.55), and a 3-word text with the point's code.
                picks = rng.integers(0, points, queries)
                qtexts = [" ".join([*texts[i].split()[:2], texts[i].split()[-1]]) for i in picks]
                query_sets = []
                for noise_norm in QUERY_NOISES:
                    step = noise_norm / np.sqrt(DIMENSION)
                    qvecs = vectors[picks] + step * rng.standard_normal((queries, DIMENSION), dtype=np.float32)
                    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
                    exact = []
                    for q, i in zip(qvecs, picks, strict=True):
                        mine = np.flatnonzero(owner == owner[i])
                        best = mine[np.argsort(-(vectors[mine] @ q))[:limit]]
                        exact.append({str(uuid.UUID(int=int(j) + 1)) for j in best})
                    query_sets.append((noise_norm, qvecs, exact))
                for name, tuning in tunings.items():
                    store.tuning = tuning
                    figures: dict[str, Any] = {}
                    for mode in ("dense", "sparse", "hybrid"):
                        latencies: list[float] = []
                        recalls: dict[str, list[float]] = {}
                        for noise_norm, qvecs, exact in query_sets:
                            for q, text, i, truth in zip(qvecs, qtexts, picks, exact, strict=True):
                                tenant = tenant_name(int(owner[i]))
                                began = time.perf_counter()
                                hits = store.search(collection, tenant, q, limit=limit, mode=mode, text=text,
                                                    with_payload=False)
                                latencies.append((time.perf_counter() - began) * 1000)
                                if mode == "dense":
                                    recalls.setdefault(f"query_noise_{noise_norm:g}", []).append(
                                        len({h.point_id for h in hits} & truth) / limit)
                        figures[mode] = {"p50_ms": float(np.percentile(latencies, 50)),
                                         "p95_ms": float(np.percentile(latencies, 95))}
                        if recalls:
                            figures[mode]["recall_at_k"] = {k: float(np.mean(v)) for k, v in recalls.items()}
                            figures[mode]["min_recall_at_k"] = min(figures[mode]["recall_at_k"].values())
                    layout["tunings"][name] = {"tuning": asdict(tuning), **figures}
                out["layouts"][str(n_tenants)] = layout
            finally:
                store.close()
    return out


def print_store_search(result: dict[str, Any]) -> None:
    print(f"in-process edge store, {result['points']:,} points, {result['queries']} queries, "
          f"recall@{result['limit']} vs exact cosine")
    print(f"{'layout':<22} {'tuning':<14} {'recall near':>12} {'recall far':>11} {'dense p50':>10} {'sparse p50':>11} "
          f"{'hybrid p50':>11} {'hybrid p95':>11}")
    for layout in result["layouts"].values():
        label = f"{layout['tenants']} x {layout['points_per_tenant']:,}"
        for name, f in layout["tunings"].items():
            near, far = f["dense"]["recall_at_k"].values()
            print(f"{label:<22} {name:<14} {near:>12.4f} {far:>11.4f} {f['dense']['p50_ms']:>8.2f}ms "
                  f"{f['sparse']['p50_ms']:>9.2f}ms {f['hybrid']['p50_ms']:>9.2f}ms {f['hybrid']['p95_ms']:>9.2f}ms")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from deployments.vector_store.config import SearchTuning

    parser = argparse.ArgumentParser(description="Recall vs exact cosine and latency per search mode, "
                                     "in-process edge store.")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sweep", action="store_true", help="also HNSW without exact scans at several ef")
    parser.add_argument("--efs", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--noise", type=float, default=NOISE)

    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    tunings: dict[str, Any] = {"default": SearchTuning()}
    if args.sweep:
        tunings["exact"] = SearchTuning(exact_max_points=10**9)
        for ef in args.efs:
            tunings[f"hnsw ef={ef}"] = SearchTuning(exact_max_points=0, hnsw_ef=ef, acorn=False)
            tunings[f"acorn ef={ef}"] = SearchTuning(exact_max_points=0, hnsw_ef=ef, acorn=True)
    result = measure_store_search(args.points, tuple(args.tenants), args.queries, tunings=tunings, noise=args.noise)
    print_store_search(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
