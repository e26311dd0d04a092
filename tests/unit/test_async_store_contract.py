"""The async store contract is generated from the sync one, and the proxies cover all of it."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from pathlib import Path

from deployments.vector_store.actor import VectorStoreActor
from deployments.vector_store.async_contract import AsyncVectorStore
from deployments.vector_store.base import CONTRACT_METHODS, PointRecord, VectorStore
from deployments.vector_store.edge import EdgeBackend
from deployments.vector_store.proxies import ActorStore, AsyncActorStore, ThreadedStore, threaded_store
from scripts.generate_async_store import main as generate


def test_generated_async_contract_is_current() -> None:
    assert generate(["--check"]) == 0, "run python scripts/generate_async_store.py"


def test_async_twin_mirrors_every_contract_method() -> None:
    for name in CONTRACT_METHODS:
        sync_sig = inspect.signature(getattr(VectorStore, name))
        async_method = getattr(AsyncVectorStore, name)
        assert inspect.iscoroutinefunction(async_method), name
        assert inspect.signature(async_method) == sync_sig, name


def test_proxies_and_actor_forward_the_whole_contract() -> None:
    for cls in (ActorStore, AsyncActorStore, ThreadedStore):
        assert not getattr(cls, "__abstractmethods__", frozenset()), cls
        assert all(name in cls.__dict__ for name in CONTRACT_METHODS), cls
    assert all(callable(getattr(VectorStoreActor, name, None)) for name in CONTRACT_METHODS)


def test_threaded_store_awaits_a_blocking_store(tmp_path: Path) -> None:
    edge = EdgeBackend(tmp_path)
    store = threaded_store(edge)

    async def round_trip() -> tuple[int, int]:
        collection = await store.ensure_collection("toy", "v1", 4)
        written = await store.upsert(collection, "org-a", [PointRecord(str(uuid.uuid4()), [1.0, 0.0, 0.0, 0.0])])
        return written, await store.count(collection, "org-a")

    try:
        assert asyncio.run(round_trip()) == (1, 1)
        assert store.kind == "edge"
    finally:
        edge.close()
