"""The embedded (Qdrant edge) backend against real shards in a temporary directory."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from deployments.vector_store import (
    CollectionNotFoundError,
    DimensionMismatchError,
    PointRecord,
    TenantMismatchError,
    alias_name,
    collection_name,
)
from deployments.vector_store.edge import EdgeBackend

DIM = 8
MODEL, VERSION = "toy", "v1"
ALIAS = alias_name(MODEL)


def make_points(n: int, seed: int, assets: int = 3) -> list[PointRecord]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return [
        PointRecord(
            id=str(uuid.UUID(int=seed * 1_000_000 + i)),
            vector=vectors[i],
            payload={"asset_id": f"a{i % assets}", "n": i},
        )
        for i in range(n)
    ]


@pytest.fixture
def open_backend(tmp_path: Path) -> Iterator[Callable[..., EdgeBackend]]:
    opened: list[EdgeBackend] = []

    def _open(**kwargs: float) -> EdgeBackend:
        backend = EdgeBackend(tmp_path / "qdrant", **kwargs)  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield _open
    for backend in opened:
        backend.close()


@pytest.fixture
def backend(open_backend: Callable[..., EdgeBackend]) -> EdgeBackend:
    store = open_backend(optimize_after_writes=10_000, idle_optimize_s=60.0)
    store.ensure_collection(MODEL, VERSION, DIM)
    return store


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_collection_and_alias_management(backend: EdgeBackend) -> None:
    name = collection_name(MODEL, VERSION)
    assert backend.ensure_collection(MODEL, VERSION, DIM) == name  # idempotent
    assert backend.list_collections() == [name]
    assert backend.get_alias(ALIAS) == name
    assert backend.resolve(ALIAS) == name == backend.resolve(name)
    v2 = backend.ensure_collection(MODEL, "v2", DIM)
    assert backend.get_alias(ALIAS) == name, "a new version must not steal an existing alias"
    backend.set_alias(ALIAS, v2)
    assert backend.list_aliases() == {ALIAS: v2}
    with pytest.raises(CollectionNotFoundError):
        backend.resolve("embeddings__nope")
    with pytest.raises(CollectionNotFoundError):
        backend.set_alias(ALIAS, "embeddings__nope")
    with pytest.raises(DimensionMismatchError):
        backend.ensure_collection(MODEL, VERSION, DIM + 1)


def test_upsert_search_retrieve_count_scroll_delete(backend: EdgeBackend) -> None:
    points = make_points(30, seed=1)
    assert backend.upsert(ALIAS, "org-a", points) == 30
    assert backend.count(ALIAS, "org-a") == 30
    assert backend.count(ALIAS, "org-a", asset_id="a0") == 10

    hits = backend.search(ALIAS, "org-a", points[7].vector, limit=5)
    assert hits[0].point_id == points[7].id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload == {"asset_id": "a1", "n": 7, "org_id": "org-a"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    filtered = backend.search(ALIAS, "org-a", points[7].vector, limit=30, asset_id="a2")
    assert len(filtered) == 10 and all(h.payload["asset_id"] == "a2" for h in filtered)
    assert all(h.score >= 0.5 for h in backend.search(ALIAS, "org-a", points[7].vector, score_threshold=0.5))
    bare = backend.search(ALIAS, "org-a", points[7].vector, limit=1, with_payload=False)
    assert bare[0].payload == {}

    got = backend.retrieve(ALIAS, "org-a", [points[2].id, points[1].id, str(uuid.uuid4())], with_vectors=True)
    assert [p.point_id for p in got] == [points[2].id, points[1].id]
    assert got[0].vector is not None
    expected = np.asarray(points[2].vector) / np.linalg.norm(points[2].vector)  # cosine stores unit vectors
    assert np.allclose(got[0].vector, expected, atol=1e-5)

    seen: list[str] = []
    offset: str | None = None
    while True:
        page, offset = backend.scroll(ALIAS, "org-a", limit=7, offset=offset)
        assert len(page) <= 7
        seen.extend(p.point_id for p in page)
        if offset is None:
            break
    assert sorted(seen) == sorted(p.id for p in points) and len(seen) == len(set(seen))

    assert backend.delete_asset(ALIAS, "org-a", "a0") == 10
    assert backend.count(ALIAS, "org-a") == 20
    assert backend.delete_ids(ALIAS, "org-a", [points[1].id, points[2].id, points[0].id]) == 2  # 0 is gone
    assert backend.count(ALIAS, "org-a") == 18
    assert backend.tenants(ALIAS) == ["org-a"]
    assert backend.stats("org-a") == {collection_name(MODEL, VERSION): 18}


def test_tenant_isolation(backend: EdgeBackend) -> None:
    a_points = make_points(12, seed=2)
    b_points = make_points(5, seed=3)
    backend.upsert(ALIAS, "org-a", a_points)
    backend.upsert(ALIAS, "org-b", b_points)
    a_ids = {p.id for p in a_points}

    for asset in (None, "a0"):
        hits = backend.search(ALIAS, "org-b", a_points[0].vector, limit=50, asset_id=asset)
        assert hits, "org-b has points of its own"
        assert not a_ids & {h.point_id for h in hits}
        assert all(h.payload["org_id"] == "org-b" for h in hits)
    assert backend.retrieve(ALIAS, "org-b", [a_points[0].id]) == []
    assert backend.delete_ids(ALIAS, "org-b", [a_points[0].id]) == 0
    assert backend.delete_asset(ALIAS, "org-b", "a1") == len(
        [p for p in b_points if p.payload["asset_id"] == "a1"]
    )
    assert backend.count(ALIAS, "org-a") == 12
    page, _ = backend.scroll(ALIAS, "org-b", limit=100)
    assert not a_ids & {p.point_id for p in page}
    assert backend.tenants(ALIAS) == ["org-a", "org-b"]
    with pytest.raises(TenantMismatchError):
        backend.upsert(
            ALIAS, "org-b", [PointRecord(str(uuid.uuid4()), a_points[0].vector, {"org_id": "org-a"})]
        )
    with pytest.raises(ValueError):
        backend.count(ALIAS, "")


def test_dimension_mismatch(backend: EdgeBackend) -> None:
    with pytest.raises(DimensionMismatchError):
        backend.upsert(ALIAS, "org-a", [PointRecord(str(uuid.uuid4()), [0.1] * (DIM + 1), {})])
    with pytest.raises(DimensionMismatchError):
        backend.search(ALIAS, "org-a", [0.1] * (DIM - 1))
    assert backend.count(ALIAS, "org-a") == 0


def test_data_survives_close_and_reopen(open_backend: Callable[..., EdgeBackend]) -> None:
    first = open_backend()
    name = first.ensure_collection(MODEL, VERSION, DIM)
    v2 = first.ensure_collection(MODEL, "v2", DIM)
    first.set_alias("embeddings__pinned", v2)
    points = make_points(25, seed=4)
    first.upsert(ALIAS, "org-a", points)
    first.close()

    second = open_backend()
    assert second.list_collections() == [name, v2]
    assert second.list_aliases() == {ALIAS: name, "embeddings__pinned": v2}
    assert second.count(ALIAS, "org-a") == 25
    assert second.retrieve(ALIAS, "org-a", [points[3].id])[0].payload["n"] == 3
    assert second.search(ALIAS, "org-a", points[9].vector, limit=1)[0].point_id == points[9].id
    assert second.payload_indexes(name) == ["asset_id", "org_id"]


def test_optimize_runs_in_background_after_threshold(open_backend: Callable[..., EdgeBackend]) -> None:
    store = open_backend(optimize_after_writes=50, idle_optimize_s=60.0)
    store.ensure_collection(MODEL, VERSION, DIM)
    store.upsert(ALIAS, "org-a", make_points(30, seed=5))
    time.sleep(0.6)
    assert store.shard_info(ALIAS)["optimize_runs"] == 0, "below the threshold and not idle: no optimize"
    points = make_points(40, seed=6)
    store.upsert(ALIAS, "org-a", points)  # 70 pending >= 50
    assert wait_for(lambda: store.shard_info(ALIAS)["optimize_runs"] >= 1)
    info = store.shard_info(ALIAS)
    assert info["indexed_vectors_count"] > 0, info
    assert info["pending_writes"] == 0
    assert store.search(ALIAS, "org-a", points[5].vector, limit=1)[0].point_id == points[5].id


def test_optimize_runs_after_idle(open_backend: Callable[..., EdgeBackend]) -> None:
    store = open_backend(optimize_after_writes=10_000, idle_optimize_s=0.3)
    store.ensure_collection(MODEL, VERSION, DIM)
    store.upsert(ALIAS, "org-a", make_points(10, seed=7))
    assert wait_for(lambda: store.shard_info(ALIAS)["optimize_runs"] == 1, timeout=5.0)


def test_concurrent_upsert_search_and_optimize(open_backend: Callable[..., EdgeBackend]) -> None:
    """Writers, readers and optimize() at once: the per-shard lock keeps every call consistent."""
    store = open_backend(optimize_after_writes=40, idle_optimize_s=0.1)
    store.ensure_collection(MODEL, VERSION, DIM)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            for k in range(4):
                store.upsert(ALIAS, "org-a", make_points(25, seed=100 + seed * 10 + k), wait=k == 3)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for k in range(30):
                store.search(ALIAS, "org-a", np.ones(DIM) * (k + 1), limit=5)
        except BaseException as exc:
            errors.append(exc)

    def optimizer() -> None:
        try:
            for _ in range(3):
                store.optimize_now(ALIAS)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)] + [threading.Thread(target=optimizer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert store.count(ALIAS, "org-a") == 3 * 4 * 25


def test_snapshot_round_trip(backend: EdgeBackend) -> None:
    points = make_points(20, seed=8)
    backend.upsert(ALIAS, "org-a", points)
    name = backend.snapshot_create(ALIAS)
    listed = backend.snapshot_list()
    assert [s["name"] for s in listed] == [name]
    assert listed[0]["collection"] == collection_name(MODEL, VERSION) and listed[0]["size"] > 0

    backend.delete_asset(ALIAS, "org-a", "a1")
    backend.upsert(ALIAS, "org-b", make_points(3, seed=9))
    assert backend.count(ALIAS, "org-a") == 13

    backend.snapshot_restore(name)
    assert backend.count(ALIAS, "org-a") == 20
    assert backend.count(ALIAS, "org-b") == 0
    assert backend.search(ALIAS, "org-a", points[4].vector, limit=1)[0].point_id == points[4].id
    backend.upsert(ALIAS, "org-a", make_points(2, seed=10))  # the restored shard takes writes
    assert backend.count(ALIAS, "org-a") == 22
    with pytest.raises(FileNotFoundError):
        backend.snapshot_restore("embeddings__toy__v1@nope.tar.gz")
