"""The edge backend and the server backend (qdrant-client's in-process mode) give the same answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from deployments.vector_store import PointRecord, VectorStore, alias_name, bm25, collection_name
from deployments.vector_store.base import SparseIndexMissingError
from deployments.vector_store.edge import EdgeBackend
from deployments.vector_store.server import ServerBackend

DIM = 16
WORDS = ["pump", "valve", "leak", "oil", "line", "night", "shift", "report", "invoice", "paid", "wire", "transfer",
         "ticket", "urgent", "crane", "dock", "harbour", "customs", "delay", "engine", "filter"]


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[EdgeBackend, ServerBackend]]:
    edge = EdgeBackend(tmp_path / "edge", optimize_after_writes=10_000, idle_optimize_s=60.0)
    server = ServerBackend(QdrantClient(":memory:"))
    yield edge, server
    edge.close()
    server.close()


def run_sequence(store: VectorStore) -> dict[str, Any]:
    """One fixed sequence of writes and reads; returns everything observed."""
    rng = np.random.default_rng(42)
    vectors = rng.normal(size=(60, DIM)).astype(np.float32)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    # Texts of 3 to 62 words, no two of one length (so BM25 scores do not tie: engines may order exact ties
    # differently, and a swap inside a prefetch moves the fused scores), each point's own code last.
    texts = [" ".join([*rng.choice(WORDS, size=3 + int(n)), f"code{n}"]) for n in rng.permutation(60)]
    points = {
        org: [
            PointRecord(
                str(uuid.UUID(int=k * 1000 + i + 1)), vectors[k * 30 + i],
                {"asset_id": f"a{i % 4}", "i": i, "text": texts[k * 30 + i]}, bm25.encode_document(texts[k * 30 + i]),
            )
            for i in range(30)
        ]
        for k, org in enumerate(("org-a", "org-b"))
    }
    text_queries = ["pump leak", "invoice paid urgent", f"code{3} crane", "customs delay engine filter", "the"]
    out: dict[str, Any] = {}
    out["collection"] = store.ensure_collection("toy", "v1", DIM)
    alias = alias_name("toy")
    out["upserted"] = [store.upsert(alias, org, pts) for org, pts in points.items()]
    out["search"] = [store.search(alias, "org-a", q, limit=7) for q in queries]
    out["search_asset"] = [store.search(alias, "org-b", q, limit=5, asset_id="a2") for q in queries]
    out["search_threshold"] = store.search(alias, "org-a", queries[0], limit=30, score_threshold=0.2)
    out["search_sparse"] = [store.search(alias, org, None, limit=30, mode="sparse", text=t)
                            for org in points for t in text_queries]
    out["search_hybrid"] = [store.search(alias, "org-a", q, limit=8, mode="hybrid", text=t, asset_id=asset)
                            for q, t in zip(queries, text_queries, strict=False) for asset in (None, "a1")]
    out["counts"] = [store.count(alias, org, asset) for org in points for asset in (None, "a0", "a3")]
    asked = [points["org-a"][3].id, points["org-b"][0].id, points["org-a"][1].id]
    out["retrieve"] = [p.point_id for p in store.retrieve(alias, "org-a", asked)]
    scrolled: list[str] = []
    offset: str | None = None
    while True:
        page, offset = store.scroll(alias, "org-b", limit=8, offset=offset)
        scrolled.extend(p.point_id for p in page)
        if offset is None:
            break
    out["scroll"] = scrolled
    out["tenants"] = store.tenants(alias)
    out["delete_asset"] = store.delete_asset(alias, "org-a", "a1")
    out["delete_ids"] = store.delete_ids(alias, "org-b", asked)
    out["after"] = [store.count(alias, "org-a"), store.count(alias, "org-b")]
    out["stats"] = store.stats("org-b")
    v2 = store.ensure_collection("toy", "v2", DIM)
    store.set_alias(alias, v2)
    out["aliases"] = store.list_aliases()
    out["collections"] = store.list_collections()
    out["count_v2"] = store.count(alias, "org-a")
    return out


def tie_groups(hits: list[Any]) -> list[tuple[float, set[str]]]:
    """Hits as runs of equal scores (within 1e-4), best first: each run's ids as a set."""
    groups: list[tuple[float, set[str]]] = []
    for h in hits:
        if groups and abs(groups[-1][0] - h.score) < 1e-4:
            groups[-1][1].add(h.point_id)
        else:
            groups.append((h.score, {h.point_id}))
    return groups


def assert_same_ranking(edge_hits: list[Any], server_hits: list[Any], key: str) -> None:
    """Same scores, same ids in the same order up to ties: engines order equal scores differently (reciprocal rank
    fusion ties often: 1/(2+3) == 1.2/(2+4)), and the limit may cut through the last run of equal scores."""
    assert np.allclose([h.score for h in edge_hits], [h.score for h in server_hits], atol=1e-4), key
    edge_groups, server_groups = tie_groups(edge_hits), tie_groups(server_hits)
    assert [ids for _, ids in edge_groups[:-1]] == [ids for _, ids in server_groups[:-1]], key


def test_edge_and_server_agree(backends: tuple[EdgeBackend, ServerBackend]) -> None:
    edge_out, server_out = (run_sequence(b) for b in backends)
    for key in ("search_sparse", "search_hybrid"):
        edge_lists, server_lists = edge_out.pop(key), server_out.pop(key)
        assert any(edge_lists), key
        for edge_hits, server_hits in zip(edge_lists, server_lists, strict=True):
            assert_same_ranking(edge_hits, server_hits, key)
            assert {h.payload["org_id"] for h in edge_hits + server_hits} <= {edge_hits[0].payload["org_id"]} \
                if edge_hits else not server_hits
    for key in ("search", "search_asset"):
        for edge_hits, server_hits in zip(edge_out.pop(key), server_out.pop(key), strict=True):
            assert [h.point_id for h in edge_hits] == [h.point_id for h in server_hits], key
            assert np.allclose([h.score for h in edge_hits], [h.score for h in server_hits], atol=1e-4), key
            assert [h.payload for h in edge_hits] == [h.payload for h in server_hits], key
    edge_thr, server_thr = edge_out.pop("search_threshold"), server_out.pop("search_threshold")
    assert [h.point_id for h in edge_thr] == [h.point_id for h in server_thr]
    assert all(h.score >= 0.2 for h in edge_thr)
    assert edge_out == server_out
    # Sanity: the sequence really exercised something.
    assert edge_out["after"] == [30 - 8, 30 - 1]
    assert len(edge_out["scroll"]) == 30


def test_server_snapshots_unsupported_in_local_mode(backends: tuple[EdgeBackend, ServerBackend]) -> None:
    _, server = backends
    server.ensure_collection("toy", "v1", DIM)
    with pytest.raises(NotImplementedError, match="Qdrant server"):
        server.snapshot_create(alias_name("toy"))


def test_pre_hybrid_collections_refuse_sparse_on_both_backends(tmp_path: Path) -> None:
    """A collection created before hybrid retrieval (dense vector only) answers dense and refuses sparse."""
    import qdrant_edge as qe
    from qdrant_client import models as m

    old = collection_name("old", "v1")
    edge_dir = tmp_path / "edge"
    (edge_dir / "collections").mkdir(parents=True)
    qe.EdgeShard.create(str(edge_dir / "collections" / old),
                        qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))).close()
    client = QdrantClient(":memory:")
    client.create_collection(old, vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE))
    stores: list[VectorStore] = [EdgeBackend(edge_dir, optimize_after_writes=10_000, idle_optimize_s=60.0),
                                 ServerBackend(client)]
    try:
        for store in stores:
            point = PointRecord(str(uuid.UUID(int=1)), [1.0] * DIM, {"text": "pump leak"}, bm25.encode_document("pump"))
            assert store.upsert(old, "org-a", [point]) == 1
            assert [h.point_id for h in store.search(old, "org-a", [1.0] * DIM)] == [point.id]
            for mode in ("sparse", "hybrid"):
                with pytest.raises(SparseIndexMissingError, match="re-embed"):
                    store.search(old, "org-a", [1.0] * DIM, mode=mode, text="pump")  # type: ignore[arg-type]
            new = store.ensure_collection("old", "v2", DIM)
            store.upsert(new, "org-a", [point])
            assert [h.point_id for h in store.search(new, "org-a", None, mode="sparse", text="pump")] == [point.id]
    finally:
        for store in stores:
            store.close()
