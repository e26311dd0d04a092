"""The store actor on a local Ray: reachable by name, and its data outlives the actor process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from deployments.vector_store import PointRecord, alias_name
from deployments.vector_store.actor import get_store
from deployments.vector_store.proxies import actor_store, async_actor_store
from serve_app.settings import Settings
from tests.conftest import RayCluster

DIM = 8


@pytest.fixture(scope="module")
def local_ray(ray_cluster: RayCluster) -> Iterator[None]:
    """The session's one Ray cluster (tests/conftest.py)."""
    yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, store_actor_name=f"test-store-{uuid.uuid4().hex[:8]}", qdrant_url=None)


def test_actor_store_round_trip_and_restart(local_ray: None, settings: Settings) -> None:
    rng = np.random.default_rng(0)
    points = [PointRecord(str(uuid.uuid4()), rng.normal(size=DIM), {"asset_id": "a"}) for _ in range(10)]
    config = settings.store_config()
    handle = get_store(config)
    try:
        client, awaited = actor_store(handle), async_actor_store(handle)
        assert get_store(config)._actor_id == handle._actor_id, "get_if_exists returns the same actor"
        collection = client.ensure_collection("toy", "v1", DIM)
        assert client.upsert(alias_name("toy"), "org-a", points) == 10

        async def search() -> list[str]:
            hits = await awaited.search(alias_name("toy"), "org-a", points[2].vector, limit=3)
            return [h.point_id for h in hits]

        assert asyncio.run(search())[0] == points[2].id
        assert client.search(alias_name("toy"), "org-b", points[2].vector) == []
        assert client.ping() == {"kind": "edge", "collections": [collection]}
        assert (settings.data_dir / "qdrant" / "collections" / collection).is_dir()

        ray.kill(handle, no_restart=True)
        handle = get_store(config)
        client = actor_store(handle)
        assert client.count(alias_name("toy"), "org-a") == 10
        hits = client.search(alias_name("toy"), "org-a", points[5].vector, limit=1)
        assert hits[0].point_id == points[5].id
    finally:
        ray.kill(handle, no_restart=True)
