"""The one Ray actor that owns the vector store, and a small client that hides ``.remote()``.

An edge shard lives in exactly one process, so every Serve replica, the outbox relay and Ray Data
sinks reach it through this named, detached actor. With a Qdrant server configured the same actor
fronts the server backend, so callers never change. ``ray`` is imported here but nothing is
created at import time: :func:`get_store` makes (or finds) the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from deployments.metrics import StoreMetrics
from deployments.vector_store.base import PointRecord, SearchHit, StoredPoint, Vector, VectorStoreBackend

if TYPE_CHECKING:
    from ray.actor import ActorHandle

    from serve_app.settings import Settings

NAMESPACE = "heimdex"
MAX_CONCURRENCY = 16


def build_backend(settings: Settings) -> VectorStoreBackend:
    """The backend the settings ask for: a Qdrant server when qdrant_url is set, else edge shards."""
    if settings.qdrant_url:
        from deployments.vector_store.server import ServerBackend

        return ServerBackend.from_url(settings.qdrant_url, settings.qdrant_api_key)
    from deployments.vector_store.edge import EdgeBackend

    return EdgeBackend(settings.data_dir / "qdrant", optimize_after_writes=settings.optimize_after_writes)


class VectorStoreActor:
    """Owns one backend; every method is the backend's, run on the actor's thread pool."""

    def __init__(self, settings: Settings) -> None:
        self._backend = build_backend(settings)
        self._metrics = StoreMetrics()

    def ping(self) -> dict[str, Any]:
        return {"kind": self._backend.kind, "collections": self._backend.list_collections()}

    def ensure_collection(self, model: str, version: str, dimension: int) -> str:
        return self._backend.ensure_collection(model, version, dimension)

    def resolve(self, name_or_alias: str) -> str:
        return self._backend.resolve(name_or_alias)

    def set_alias(self, alias: str, collection: str) -> None:
        self._backend.set_alias(alias, collection)

    def get_alias(self, alias: str) -> str | None:
        return self._backend.get_alias(alias)

    def list_collections(self) -> list[str]:
        return self._backend.list_collections()

    def list_aliases(self) -> dict[str, str]:
        return self._backend.list_aliases()

    def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        with self._metrics.timed("upsert"):
            return self._backend.upsert(collection, tenant, points, wait)

    def search(
        self,
        collection: str,
        tenant: str,
        vector: Vector,
        limit: int = 10,
        asset_id: str | None = None,
        score_threshold: float | None = None,
        with_payload: bool | list[str] = True,
    ) -> list[SearchHit]:
        with self._metrics.timed("search"):
            return self._backend.search(
                collection, tenant, vector, limit, asset_id, score_threshold, with_payload
            )

    def search_batch(self, collection: str, requests: list[dict[str, Any]]) -> list[list[SearchHit]]:
        with self._metrics.timed("search_batch"):
            return self._backend.search_batch(collection, requests)

    def metrics_snapshot(self) -> dict[str, Any]:
        """Per-operation latency histograms for the Gateway's ``/metrics`` route."""
        return self._metrics.snapshot()

    def retrieve(
        self, collection: str, tenant: str, ids: list[str], with_vectors: bool = False
    ) -> list[StoredPoint]:
        return self._backend.retrieve(collection, tenant, ids, with_vectors)

    def count(self, collection: str, tenant: str, asset_id: str | None = None) -> int:
        return self._backend.count(collection, tenant, asset_id)

    def delete_asset(self, collection: str, tenant: str, asset_id: str) -> int:
        return self._backend.delete_asset(collection, tenant, asset_id)

    def delete_ids(self, collection: str, tenant: str, ids: list[str]) -> int:
        return self._backend.delete_ids(collection, tenant, ids)

    def scroll(
        self,
        collection: str,
        tenant: str,
        limit: int = 256,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], str | None]:
        return self._backend.scroll(collection, tenant, limit, offset, with_vectors)

    def tenants(self, collection: str) -> list[str]:
        return self._backend.tenants(collection)

    def stats(self, tenant: str) -> dict[str, int]:
        return self._backend.stats(tenant)

    def snapshot_create(self, collection: str) -> str:
        return self._backend.snapshot_create(collection)

    def snapshot_list(self) -> list[dict[str, Any]]:
        return self._backend.snapshot_list()

    def snapshot_restore(self, name: str) -> None:
        self._backend.snapshot_restore(name)

    def close(self) -> None:
        self._backend.close()


def get_store(settings: Settings) -> ActorHandle:
    """Get or create the detached store actor named ``settings.store_actor_name``.

    ``num_cpus=0`` because the actor is I/O and index bound and must never wait for a CPU slot;
    ``max_restarts=-1`` so a crash reopens the shard from disk; threaded (``max_concurrency``) so
    searches from many replicas overlap instead of queueing behind one another.
    """
    remote_cls: Any = ray.remote(VectorStoreActor)
    handle: ActorHandle = remote_cls.options(
        name=settings.store_actor_name,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_concurrency=MAX_CONCURRENCY,
        max_restarts=-1,
    ).remote(settings)
    return handle


class StoreClient:
    """The store actor with plain method names: ``await client.search(...)`` in async code (Serve),
    ``client.sync.search(...)`` in blocking code (relay, Ray Data sinks)."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle
        self.sync = SyncStoreClient(handle)

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreClient:
        return cls(get_store(settings))

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.handle, method).remote(*args, **kwargs)

    async def ping(self) -> dict[str, Any]:
        return await self._call("ping")

    async def ensure_collection(self, model: str, version: str, dimension: int) -> str:
        return await self._call("ensure_collection", model, version, dimension)

    async def resolve(self, name_or_alias: str) -> str:
        return await self._call("resolve", name_or_alias)

    async def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        return await self._call("upsert", collection, tenant, points, wait)

    async def search(self, collection: str, tenant: str, vector: Vector, **kwargs: Any) -> list[SearchHit]:
        return await self._call("search", collection, tenant, vector, **kwargs)

    async def search_batch(self, collection: str, requests: list[dict[str, Any]]) -> list[list[SearchHit]]:
        return await self._call("search_batch", collection, requests)

    async def retrieve(
        self, collection: str, tenant: str, ids: list[str], **kwargs: Any
    ) -> list[StoredPoint]:
        return await self._call("retrieve", collection, tenant, ids, **kwargs)

    async def count(self, collection: str, tenant: str, asset_id: str | None = None) -> int:
        return await self._call("count", collection, tenant, asset_id)

    async def delete_asset(self, collection: str, tenant: str, asset_id: str) -> int:
        return await self._call("delete_asset", collection, tenant, asset_id)

    async def delete_ids(self, collection: str, tenant: str, ids: list[str]) -> int:
        return await self._call("delete_ids", collection, tenant, ids)

    async def stats(self, tenant: str) -> dict[str, int]:
        return await self._call("stats", tenant)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any other actor method by name (scroll, tenants, aliases, snapshots)."""
        return await self._call(method, *args, **kwargs)


class SyncStoreClient:
    """Blocking twin of :class:`StoreClient` (``ray.get`` on every call); never use it inside Serve."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any actor method by name."""
        return ray.get(getattr(self.handle, method).remote(*args, **kwargs))

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def ensure_collection(self, model: str, version: str, dimension: int) -> str:
        return self.call("ensure_collection", model, version, dimension)

    def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        return self.call("upsert", collection, tenant, points, wait)

    def search(self, collection: str, tenant: str, vector: Vector, **kwargs: Any) -> list[SearchHit]:
        return self.call("search", collection, tenant, vector, **kwargs)

    def search_batch(self, collection: str, requests: list[dict[str, Any]]) -> list[list[SearchHit]]:
        return self.call("search_batch", collection, requests)

    def count(self, collection: str, tenant: str, asset_id: str | None = None) -> int:
        return self.call("count", collection, tenant, asset_id)

    def delete_asset(self, collection: str, tenant: str, asset_id: str) -> int:
        return self.call("delete_asset", collection, tenant, asset_id)
