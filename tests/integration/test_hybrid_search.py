"""Sparse (BM25) and hybrid search on the real edge engine in-process, with the real packaged MiniLM model.

* an exact code that the embedding model cannot tell from its look-alikes: dense ranks the segment low,
  sparse and hybrid rank it first;
* sparse and hybrid never return another tenant's points, and another tenant's writes never move a
  tenant's BM25 scores (IDF is computed over the searching tenant's points);
* a collection created before hybrid retrieval (no sparse vector) answers SparseIndexMissingError for
  sparse and hybrid, keeps working for dense, and a new version carries both vectors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from deployments.point_ids import point_id_for
from deployments.registry import get_model
from deployments.vector_store import PointRecord, alias_name, collection_name
from deployments.vector_store.base import SparseIndexMissingError
from deployments.vector_store.edge import EdgeBackend
from deployments.vector_store.payloads import segment_payload, segment_point
from tests.data.corpus import EXACT_CODE, EXACT_CODE_LOOK_ALIKES, EXACT_CODE_TARGET, PARAPHRASES, distractor_sentences

MODEL = "minilm-l6-v2"
ALIAS = alias_name(MODEL)
CODE, TARGET, LOOK_ALIKES = EXACT_CODE, EXACT_CODE_TARGET, EXACT_CODE_LOOK_ALIKES


@pytest.fixture(scope="module")
def embedder() -> Any:
    from deployments.backends import load_backend
    from serve_app.settings import Settings

    return load_backend(get_model(MODEL), "onnx-fp32", threads=1, paths=Settings().model_paths())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeBackend]:
    backend = EdgeBackend(tmp_path / "qdrant", optimize_after_writes=10_000, idle_optimize_s=60.0)
    backend.ensure_collection(MODEL, "v1", get_model(MODEL).dimension)
    yield backend
    backend.close()


def write(store: EdgeBackend, embedder: Any, org: str, texts: list[str], asset: str = "a",
          collection: str = ALIAS) -> list[str]:
    vectors = embedder.embed(texts).vectors
    points = [segment_point(point_id_for(org, asset, f"s{i}", MODEL, "v1"), vectors[i],
                            segment_payload(org, asset, f"s{i}", MODEL, "v1", text, "2026-01-01T00:00:00Z"))
              for i, text in enumerate(texts)]
    store.upsert(collection, org, points)
    return [p.id for p in points]


def rank_of(hits: list[Any], point_id: str) -> int | None:
    return next((i + 1 for i, h in enumerate(hits) if h.point_id == point_id), None)


def test_hybrid_finds_an_exact_code_that_dense_ranks_low(store: EdgeBackend, embedder: Any) -> None:
    texts = [TARGET, *LOOK_ALIKES, *(s for s, _ in PARAPHRASES), *distractor_sentences(200)]
    ids = write(store, embedder, "org-a", texts)
    target = ids[0]
    query = embedder.embed([CODE]).vectors[0]

    dense = store.search(ALIAS, "org-a", query, limit=100, mode="dense", text=CODE)
    dense_rank = rank_of(dense, target)
    assert dense_rank is not None and dense_rank >= 5, f"dense ranks the exact code at {dense_rank}"

    sparse = store.search(ALIAS, "org-a", None, limit=10, mode="sparse", text=CODE)
    assert [h.point_id for h in sparse] == [target], "BM25 matches the code and nothing else"
    assert sparse[0].payload["text"] == TARGET

    hybrid = store.search(ALIAS, "org-a", query, limit=10, mode="hybrid", text=CODE)
    assert rank_of(hybrid, target) == 1
    assert len(hybrid) == 10, "hybrid still fills the page from the dense list"
    scores = [h.score for h in hybrid]
    assert scores == sorted(scores, reverse=True)


def test_sparse_and_hybrid_are_tenant_scoped(store: EdgeBackend, embedder: Any) -> None:
    mine = write(store, embedder, "org-a", [TARGET, *LOOK_ALIKES[:4]], asset="x")
    write(store, embedder, "org-a", distractor_sentences(40), asset="y")
    query = embedder.embed([CODE]).vectors[0]
    before = store.search(ALIAS, "org-a", None, mode="sparse", text=CODE)[0].score

    # Another tenant holds the very same code, many times over (its document frequency of the term is high).
    theirs = set(write(store, embedder, "org-b", [TARGET] * 3 + [f"{CODE} {s}" for s in distractor_sentences(30)]))
    for mode in ("sparse", "hybrid"):
        for asset in (None, "x", "y"):
            hits = store.search(ALIAS, "org-a", query, limit=100, mode=mode, text=CODE, asset_id=asset)
            assert not {h.point_id for h in hits} & theirs, (mode, asset)
            assert {h.payload["org_id"] for h in hits} <= {"org-a"}
            if asset is not None:
                assert {h.payload["asset_id"] for h in hits} <= {asset}
        b_hits = store.search(ALIAS, "org-b", query, limit=100, mode=mode, text=CODE)
        assert {h.point_id for h in b_hits} <= theirs and mine[0] not in {h.point_id for h in b_hits}
    after = store.search(ALIAS, "org-a", None, mode="sparse", text=CODE)[0].score
    assert after == pytest.approx(before), "another tenant's writes moved this tenant's BM25 score"
    assert store.search(ALIAS, "org-nobody", query, mode="hybrid", text=CODE) == []


def test_stopword_queries(store: EdgeBackend, embedder: Any) -> None:
    write(store, embedder, "org-a", [TARGET, *LOOK_ALIKES[:3]])
    query = embedder.embed(["the of and"]).vectors[0]
    assert store.search(ALIAS, "org-a", None, mode="sparse", text="the of and") == []
    hybrid = store.search(ALIAS, "org-a", query, limit=4, mode="hybrid", text="the of and")
    dense = store.search(ALIAS, "org-a", query, limit=4, mode="dense")
    assert [h.point_id for h in hybrid] == [h.point_id for h in dense], "no term: the dense list alone"


def make_pre_hybrid_collection(data_dir: Path, name: str, dimension: int) -> None:
    """A shard exactly as EdgeBackend created them before hybrid retrieval: the dense vector only."""
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
                           optimizers=qe.EdgeOptimizersConfig(indexing_threshold=10_000))
    shard = qe.EdgeShard.create(str(data_dir / "collections" / name), config)
    shard.update(qe.UpdateOperation.create_field_index("org_id", qe.KeywordIndexParams(is_tenant=True)))
    shard.flush()
    shard.close()
    (data_dir / "aliases.json").write_text(json.dumps({alias_name("old"): name}))


def test_a_pre_hybrid_collection_answers_dense_and_refuses_sparse(tmp_path: Path) -> None:
    data_dir = tmp_path / "qdrant"
    (data_dir / "collections").mkdir(parents=True)
    old = collection_name("old", "v1")
    make_pre_hybrid_collection(data_dir, old, 4)
    store = EdgeBackend(data_dir, optimize_after_writes=10_000, idle_optimize_s=60.0)
    try:
        point = segment_point(point_id_for("org-a", "a", "s", "old", "v1"), [1.0, 0.0, 0.0, 0.0],
                              {"asset_id": "a", "text": "KX7731 leaks"})
        assert point.sparse, "writers always send the BM25 terms"
        assert store.upsert(alias_name("old"), "org-a", [point]) == 1, "writes to an old collection go on"
        assert [h.point_id for h in store.search(alias_name("old"), "org-a", [1.0, 0, 0, 0])] == [point.id]
        for mode in ("sparse", "hybrid"):
            with pytest.raises(SparseIndexMissingError, match="re-embed") as caught:
                store.search(alias_name("old"), "org-a", [1.0, 0, 0, 0], mode=mode, text="KX7731")
            assert caught.value.collection == old
        v2 = store.ensure_collection("old", "v2", 4)
        store.upsert(v2, "org-a", [PointRecord(point.id, point.vector, point.payload, point.sparse)])
        assert [h.point_id for h in store.search(v2, "org-a", None, mode="sparse", text="KX7731")] == [point.id]
    finally:
        store.close()
    reopened = EdgeBackend(data_dir, optimize_after_writes=10_000, idle_optimize_s=60.0)
    try:  # what a collection holds is read back from its config after a restart
        with pytest.raises(SparseIndexMissingError):
            reopened.search(old, "org-a", None, mode="sparse", text="KX7731")
        assert len(reopened.search(collection_name("old", "v2"), "org-a", None, mode="sparse", text="KX7731")) == 1
    finally:
        reopened.close()


def test_search_arguments_are_checked(store: EdgeBackend) -> None:
    with pytest.raises(ValueError, match="needs the query text"):
        store.search(ALIAS, "org-a", np.zeros(384), mode="hybrid")
    with pytest.raises(ValueError, match="needs a query vector"):
        store.search(ALIAS, "org-a", None, mode="dense", text="x")
    with pytest.raises(ValueError, match="unknown search mode"):
        store.search(ALIAS, "org-a", np.zeros(384), mode="fuzzy", text="x")
