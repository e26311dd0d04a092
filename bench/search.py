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
