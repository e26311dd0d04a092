"""The server backend: a Qdrant server (or qdrant-client's in-process mode) behind the same interface.

Aliases use Qdrant's own alias API so an alias switch is one atomic server-side operation. Point
operations accept aliases natively on the server; names are still resolved here so that dimension
checks and "not found" errors behave exactly like the edge backend. Every call is retried on
429/5xx/connection errors (3 tries, exponential backoff): writes are idempotent because point ids
are deterministic, so a retried upsert cannot duplicate anything.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from deployments.vector_store.base import (
    ASSET_FIELD,
    TENANT_FIELD,
    CollectionNotFoundError,
    DimensionMismatchError,
    PointRecord,
    SearchHit,
    StoredPoint,
    StoreUnavailableError,
    Vector,
    VectorStore,
    WithPayload,
    alias_name,
    as_float_list,
    check_tenant,
    collection_name,
    tenant_payload,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

UPSERT_BATCH = 128
RETRIES = 3
BACKOFF_BASE_S = 0.2
ALIAS_CACHE_S = 2.0
_FACET_LIMIT = 100_000


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        return status == 429 or status >= 500
    return isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError | TimeoutError)


def _tenant_filter(tenant: str, asset_id: str | None = None) -> m.Filter:
    must: list[m.Condition] = [
        m.FieldCondition(key=TENANT_FIELD, match=m.MatchValue(value=check_tenant(tenant)))
    ]
    if asset_id is not None:
        must.append(m.FieldCondition(key=ASSET_FIELD, match=m.MatchValue(value=asset_id)))
    return m.Filter(must=must)


def _hit(point: m.ScoredPoint) -> SearchHit:
    return SearchHit(point_id=str(point.id), score=float(point.score), payload=dict(point.payload or {}))


def _stored(record: m.Record, with_vectors: bool) -> StoredPoint:
    vector = None
    if with_vectors and record.vector is not None:
        raw = record.vector.get("") if isinstance(record.vector, dict) else record.vector
        vector = [float(x) for x in raw] if isinstance(raw, list) else None  # type: ignore[arg-type]
    return StoredPoint(point_id=str(record.id), payload=dict(record.payload or {}), vector=vector)


class ServerBackend(VectorStore):
    """Qdrant through qdrant-client: a real server via :meth:`from_url`, or ``QdrantClient(":memory:")``."""

    kind = "server"

    def __init__(self, client: QdrantClient, snapshots_path: str = "/qdrant/snapshots") -> None:
        self.client = client
        # Where the server keeps snapshots on its own disk (the official image's default); restore
        # hands the server a file:// location under it.
        self.snapshots_path = snapshots_path.rstrip("/")
        self._lock = threading.Lock()
        self._aliases: dict[str, str] = {}
        self._aliases_at = float("-inf")
        self._dimensions: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None, timeout: int = 30) -> ServerBackend:
        """A backend talking to a Qdrant server over REST."""
        return cls(QdrantClient(url=url, api_key=api_key, timeout=timeout))

    # Plumbing --------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the client, retrying transient failures; exhausted retries -> StoreUnavailableError."""
        for attempt in range(RETRIES):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if attempt == RETRIES - 1:
                    raise StoreUnavailableError(f"qdrant unavailable after {RETRIES} tries: {exc}") from exc
                delay = BACKOFF_BASE_S * 2**attempt
                log.warning("qdrant call %s failed (%s); retrying in %.1fs", fn.__name__, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _alias_map(self, refresh: bool = False) -> dict[str, str]:
        # A short cache: resolving on every search would double the round trips to the server.
        with self._lock:
            if refresh or time.monotonic() - self._aliases_at > ALIAS_CACHE_S:
                response = self._call(self.client.get_aliases)
                self._aliases = {a.alias_name: a.collection_name for a in response.aliases}
                self._aliases_at = time.monotonic()
            return dict(self._aliases)

    def _dimension(self, collection: str) -> int:
        dim = self._dimensions.get(collection)
        if dim is None:
            vectors = self._call(self.client.get_collection, collection).config.params.vectors
            params = vectors.get("") if isinstance(vectors, dict) else vectors
            if params is None:
                raise CollectionNotFoundError(collection)
            dim = self._dimensions[collection] = int(params.size)
        return dim

    def _check_dimension(self, collection: str, vector: list[float]) -> None:
        expected = self._dimension(collection)
        if len(vector) != expected:
            raise DimensionMismatchError(collection, expected, len(vector))

    # Collections and aliases -------------------------------------------------------------
    def ensure_collection(self, model: str, version: str, dimension: int) -> str:
        name = collection_name(model, version)
        if not self._call(self.client.collection_exists, name):
            try:
                self._call(
                    self.client.create_collection,
                    name,
                    vectors_config=m.VectorParams(size=dimension, distance=m.Distance.COSINE),
                )
            except UnexpectedResponse as exc:  # another process created it first
                if exc.status_code != 409:
                    raise
            with warnings.catch_warnings():  # local mode warns that payload indexes are no-ops
                warnings.simplefilter("ignore", UserWarning)
                self._call(
                    self.client.create_payload_index,
                    name,
                    TENANT_FIELD,
                    m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True),
                    wait=True,
                )
                self._call(self.client.create_payload_index, name, ASSET_FIELD, m.PayloadSchemaType.KEYWORD)
        existing = self._dimension(name)
        if existing != dimension:
            raise DimensionMismatchError(name, existing, dimension)
        alias = alias_name(model)
        if alias not in self._alias_map(refresh=True):
            self._update_alias(alias, name, replace=False)
        return name

    def _update_alias(self, alias: str, collection: str, replace: bool) -> None:
        ops: list[m.AliasOperations] = []
        if replace:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias)))
        ops.append(
            m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=collection, alias_name=alias))
        )
        self._call(self.client.update_collection_aliases, ops)
        self._alias_map(refresh=True)

    def resolve(self, name_or_alias: str) -> str:
        target = self._alias_map().get(name_or_alias)
        if target is not None:
            return target
        if name_or_alias in self._dimensions or name_or_alias in self.list_collections():
            return name_or_alias
        raise CollectionNotFoundError(name_or_alias)

    def set_alias(self, alias: str, collection: str) -> None:
        if collection not in self.list_collections():
            raise CollectionNotFoundError(collection)
        # Delete + create in one request: the server applies the switch atomically.
        self._update_alias(alias, collection, replace=alias in self._alias_map(refresh=True))

    def get_alias(self, alias: str) -> str | None:
        return self._alias_map(refresh=True).get(alias)

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._call(self.client.get_collections).collections)

    def list_aliases(self) -> dict[str, str]:
        return self._alias_map(refresh=True)

    # Writes ----------------------------------------------------------------------------------
    def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        check_tenant(tenant)
        name = self.resolve(collection)
        structs = []
        for point in points:
            vector = as_float_list(point.vector)
            self._check_dimension(name, vector)
            structs.append(
                m.PointStruct(id=point.id, vector=vector, payload=tenant_payload(tenant, point.payload))
            )
        for start in range(0, len(structs), UPSERT_BATCH):
            self._call(self.client.upsert, name, points=structs[start : start + UPSERT_BATCH], wait=wait)
        return len(structs)

    def delete_asset(self, collection: str, tenant: str, asset_id: str) -> int:
        name = self.resolve(collection)
        flt = _tenant_filter(tenant, asset_id)
        n = self._call(self.client.count, name, count_filter=flt, exact=True).count
        if n:
            self._call(self.client.delete, name, points_selector=m.FilterSelector(filter=flt), wait=True)
        return int(n)

    def delete_ids(self, collection: str, tenant: str, ids: list[str]) -> int:
        name = self.resolve(collection)
        owned: list[m.ExtendedPointId] = [p.point_id for p in self.retrieve(name, tenant, ids)]
        if owned:
            self._call(self.client.delete, name, points_selector=m.PointIdsList(points=owned), wait=True)
        return len(owned)

    # Reads -----------------------------------------------------------------------------------
    def search(
        self,
        collection: str,
        tenant: str,
        vector: Vector,
        limit: int = 10,
        asset_id: str | None = None,
        score_threshold: float | None = None,
        with_payload: WithPayload = True,
    ) -> list[SearchHit]:
        name = self.resolve(collection)
        query = as_float_list(vector)
        self._check_dimension(name, query)
        response = self._call(
            self.client.query_points,
            name,
            query=query,
            query_filter=_tenant_filter(tenant, asset_id),
            limit=limit,
            score_threshold=score_threshold,
            with_payload=with_payload,
        )
        return [_hit(p) for p in response.points]

    def retrieve(
        self, collection: str, tenant: str, ids: list[str], with_vectors: bool = False
    ) -> list[StoredPoint]:
        check_tenant(tenant)
        if not ids:
            return []
        name = self.resolve(collection)
        records = self._call(
            self.client.retrieve, name, ids=list(ids), with_payload=True, with_vectors=with_vectors
        )
        by_id = {
            str(r.id): _stored(r, with_vectors)
            for r in records
            if (r.payload or {}).get(TENANT_FIELD) == tenant
        }
        return [by_id[i] for i in dict.fromkeys(str(i) for i in ids) if i in by_id]

    def count(self, collection: str, tenant: str, asset_id: str | None = None) -> int:
        name = self.resolve(collection)
        return int(
            self._call(
                self.client.count, name, count_filter=_tenant_filter(tenant, asset_id), exact=True
            ).count
        )

    def scroll(
        self,
        collection: str,
        tenant: str,
        limit: int = 256,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], str | None]:
        name = self.resolve(collection)
        records, next_offset = self._call(
            self.client.scroll,
            name,
            scroll_filter=_tenant_filter(tenant),
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=with_vectors,
        )
        return [_stored(r, with_vectors) for r in records], None if next_offset is None else str(next_offset)

    def tenants(self, collection: str) -> list[str]:
        name = self.resolve(collection)
        response = self._call(self.client.facet, name, key=TENANT_FIELD, limit=_FACET_LIMIT, exact=True)
        return sorted(str(hit.value) for hit in response.hits if hit.count > 0)

    def stats(self, tenant: str) -> dict[str, int]:
        return {name: self.count(name, tenant) for name in self.list_collections()}

    # Snapshots -------------------------------------------------------------------------------
    @staticmethod
    def _unsupported(exc: NotImplementedError) -> NotImplementedError:
        return NotImplementedError(
            f"snapshots need a Qdrant server; qdrant-client's local mode has none ({exc})"
        )

    def snapshot_create(self, collection: str) -> str:
        name = self.resolve(collection)
        try:
            description = self._call(self.client.create_snapshot, name, wait=True)
        except NotImplementedError as exc:
            raise self._unsupported(exc) from exc
        if description is None:
            raise StoreUnavailableError(f"qdrant returned no snapshot for {name!r}")
        return description.name

    def snapshot_list(self) -> list[dict[str, Any]]:
        snapshots: list[dict[str, Any]] = []
        for name in self.list_collections():
            try:
                found = self._call(self.client.list_snapshots, name)
            except NotImplementedError as exc:
                raise self._unsupported(exc) from exc
            snapshots.extend(
                {"name": s.name, "collection": name, "created_at": s.creation_time, "size": s.size}
                for s in found
            )
        return snapshots

    def snapshot_restore(self, name: str) -> None:
        owner = next((s["collection"] for s in self.snapshot_list() if s["name"] == name), None)
        if owner is None:
            raise FileNotFoundError(f"no snapshot named {name!r}")
        location = f"file://{self.snapshots_path}/{owner}/{name}"
        self._call(self.client.recover_snapshot, owner, location=location, wait=True)

    def close(self) -> None:
        self.client.close()
