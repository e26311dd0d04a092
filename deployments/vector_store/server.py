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

from deployments.vector_store import bm25
from deployments.vector_store.base import (
    ASSET_FIELD,
    TENANT_FIELD,
    CollectionNotFoundError,
    DimensionMismatchError,
    PointRecord,
    SearchHit,
    SearchMode,
    SparseIndexMissingError,
    StoredPoint,
    StoreUnavailableError,
    Vector,
    VectorStore,
    WithPayload,
    alias_name,
    as_float_list,
    check_search,
    check_tenant,
    collection_name,
    tenant_payload,
)
from deployments.vector_store.config import SearchTuning

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

    def __init__(self, client: QdrantClient, snapshots_path: str = "/qdrant/snapshots",
                 tuning: SearchTuning | None = None) -> None:
        self.client = client
        self.tuning = tuning or SearchTuning()
        # Where the server keeps snapshots on its own disk (the official image's default); restore
        # hands the server a file:// location under it.
        self.snapshots_path = snapshots_path.rstrip("/")
        self._lock = threading.Lock()
        self._aliases: dict[str, str] = {}
        self._aliases_at = float("-inf")
        self._dimensions: dict[str, int] = {}
        self._sparse: dict[str, bool] = {}

    @classmethod
    def from_url(cls, url: str, api_key: str | None = None, timeout: int = 30,
                 tuning: SearchTuning | None = None) -> ServerBackend:
        """A backend talking to a Qdrant server over REST."""
        return cls(QdrantClient(url=url, api_key=api_key, timeout=timeout), tuning=tuning)

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
            config = self._call(self.client.get_collection, collection).config.params
            vectors = config.vectors
            params = vectors.get("") if isinstance(vectors, dict) else vectors
            if params is None:
                raise CollectionNotFoundError(collection)
            # Collections created before hybrid retrieval have no BM25 vector (nor can one be added).
            self._sparse[collection] = bm25.SPARSE_VECTOR in (config.sparse_vectors or {})
            dim = self._dimensions[collection] = int(params.size)
        return dim

    def _has_sparse(self, collection: str) -> bool:
        self._dimension(collection)
        return self._sparse[collection]

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
                    sparse_vectors_config={bm25.SPARSE_VECTOR: m.SparseVectorParams(modifier=m.Modifier.IDF)},
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
            stored: Any = vector
            if point.sparse and self._has_sparse(name):
                terms = m.SparseVector(indices=list(point.sparse.indices), values=list(point.sparse.values))
                stored = {"": vector, bm25.SPARSE_VECTOR: terms}
            structs.append(m.PointStruct(id=point.id, vector=stored, payload=tenant_payload(tenant, point.payload)))
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
    def _dense_params(self, name: str, flt: m.Filter) -> m.SearchParams:
        """Exact when the filtered set is small enough to scan (recall 1.0), else HNSW (ACORN for a small share)."""
        n = int(self._call(self.client.count, name, count_filter=flt, exact=False).count)
        t = self.tuning
        return m.SearchParams(exact=n <= t.exact_max_points, hnsw_ef=t.hnsw_ef,
                              acorn=m.AcornSearchParams(enable=True) if t.acorn else None)

    def search(
        self,
        collection: str,
        tenant: str,
        vector: Vector | None,
        limit: int = 10,
        asset_id: str | None = None,
        score_threshold: float | None = None,
        with_payload: WithPayload = True,
        mode: SearchMode = "dense",
        text: str | None = None,
    ) -> list[SearchHit]:
        check_search(mode, vector, text)
        name = self.resolve(collection)
        query = as_float_list(vector) if vector is not None else []
        if mode != "sparse":
            self._check_dimension(name, query)
        if mode != "dense" and not self._has_sparse(name):
            raise SparseIndexMissingError(name)
        flt = _tenant_filter(tenant, asset_id)
        terms = bm25.encode_query(text or "") if mode != "dense" else None
        sparse = m.SparseVector(indices=list(terms.indices), values=list(terms.values)) if terms else None
        # IDF over the searching tenant's points only: another tenant's writes never move its scores.
        sparse_params = m.SearchParams(idf=m.IdfCorpusParams(corpus=flt))
        common: dict[str, Any] = {"query_filter": flt, "limit": limit, "score_threshold": score_threshold,
                                  "with_payload": with_payload}
        if mode == "sparse":
            if sparse is None:  # only stopwords: no term to match
                return []
            response = self._call(self.client.query_points, name, query=sparse, using=bm25.SPARSE_VECTOR,
                                  search_params=sparse_params, **common)
        elif mode == "dense":
            response = self._call(self.client.query_points, name, query=query,
                                  search_params=self._dense_params(name, flt), **common)
        else:
            t = self.tuning
            depth = max(limit, t.prefetch_limit)
            prefetch = [m.Prefetch(query=query, filter=flt, limit=depth, params=self._dense_params(name, flt))]
            weights = [t.rrf_weights[0]]
            if sparse is not None:  # a query of stopwords only fuses the dense list alone
                prefetch.append(m.Prefetch(query=sparse, using=bm25.SPARSE_VECTOR, filter=flt, limit=depth,
                                           params=sparse_params))
                weights.append(t.rrf_weights[1])
            fusion: m.Query = (m.FusionQuery(fusion=m.Fusion.DBSF) if t.fusion == "dbsf"
                               else m.RrfQuery(rrf=m.Rrf(k=t.rrf_k, weights=weights)))
            response = self._call(self.client.query_points, name, prefetch=prefetch, query=fusion, **common)
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
