"""The embedded backend: one Qdrant edge shard per collection, in this process, on local disk.

Layout under ``data_dir``::

    collections/<collection>/   one EdgeShard directory per collection
    aliases.json                alias -> collection, replaced atomically on every change
    snapshots/<collection>@<utc stamp>.tar.gz

qdrant-edge 0.9 quirks this module works around (see tests/integration/test_vector_store_edge.py):

* Every EdgeShard method holds the GIL for its whole run (``optimize()`` included), so a background
  thread keeps HNSW building out of the upsert call but the process still stalls while it runs.
  Each shard is still guarded by its own lock so a future release that drops the GIL stays safe.
* Shards are created with ``indexing_threshold`` sized so that ``optimize_after_writes`` points fill
  it; with the engine default a small shard is never indexed at all and optimize() is a no-op.
* ``retrieve`` takes no filter, so tenant isolation on retrieve filters the payloads afterwards.
* Ids come back as ``uuid.UUID``; they are returned as canonical strings.
* A point of a collection with a sparse vector reads back as ``{"": dense, "bm25": SparseVector}``.
* There is no snapshot *create* in the API (only unpack/update_from_snapshot), so a snapshot is a
  gzip-1 tar of the flushed shard directory taken under the shard lock; restore closes the shard,
  swaps the directory and loads it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import qdrant_edge as qe

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

IDLE_OPTIMIZE_S = 2.0
# A shard under steady writes is optimized again once it grew by 1/OPTIMIZE_GROWTH_DIVISOR of its size.
OPTIMIZE_GROWTH_DIVISOR = 4
_FACET_LIMIT = 100_000
_SNAPSHOT_SUFFIX = ".tar.gz"


def _tenant_filter(tenant: str, asset_id: str | None = None) -> qe.Filter:
    must: list[Any] = [qe.FieldCondition(key=TENANT_FIELD, match=qe.MatchValue(check_tenant(tenant)))]
    if asset_id is not None:
        must.append(qe.FieldCondition(key=ASSET_FIELD, match=qe.MatchValue(asset_id)))
    return qe.Filter(must=must)


def _hit(point: Any) -> SearchHit:
    return SearchHit(point_id=str(point.id), score=float(point.score), payload=dict(point.payload or {}))


def _stored(record: Any, with_vectors: bool) -> StoredPoint:
    raw = record.vector.get("") if isinstance(record.vector, dict) else record.vector
    vector = [float(x) for x in raw] if with_vectors and raw is not None else None
    return StoredPoint(point_id=str(record.id), payload=dict(record.payload or {}), vector=vector)


@dataclass
class _Shard:
    """One open collection: the shard, its lock and the write counters the optimizer reads."""

    name: str
    path: Path
    shard: qe.EdgeShard
    dimension: int
    sparse: bool = False  # has the BM25 sparse vector (collections created before hybrid retrieval have not)
    lock: threading.RLock = field(default_factory=threading.RLock)
    pending_writes: int = 0
    last_write: float = 0.0
    optimize_runs: int = 0
    optimized_writes: int = 0  # points written before the last optimize (upserts counted, not distinct)


class EdgeBackend(VectorStore):
    """Qdrant edge shards on local disk, HNSW built by a background optimizer thread."""

    kind = "edge"

    def __init__(
        self, data_dir: Path, optimize_after_writes: int = 2000, idle_optimize_s: float = IDLE_OPTIMIZE_S,
        tuning: SearchTuning | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tuning = tuning or SearchTuning()
        self.optimize_after_writes = optimize_after_writes
        self.idle_optimize_s = idle_optimize_s
        self._collections_dir = self.data_dir / "collections"
        self._snapshots_dir = self.data_dir / "snapshots"
        self._aliases_path = self.data_dir / "aliases.json"
        self._collections_dir.mkdir(parents=True, exist_ok=True)
        self._snapshots_dir.mkdir(parents=True, exist_ok=True)
        self._meta_lock = threading.RLock()
        self._shards: dict[str, _Shard] = {}
        self._aliases: dict[str, str] = self._read_aliases()
        self._closed = False
        for path in sorted(self._collections_dir.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                self._shards[path.name] = self._load(path.name, path)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._optimizer = threading.Thread(target=self._optimize_loop, name="edge-optimizer", daemon=True)
        self._optimizer.start()

    # Shard plumbing ------------------------------------------------------------------------
    @staticmethod
    def _load(name: str, path: Path) -> _Shard:
        config = json.loads((path / "edge_config.json").read_text())
        dimension = int(config["vectors"][""]["size"])
        sparse = bm25.SPARSE_VECTOR in (config.get("sparse_vectors") or {})
        shard = qe.EdgeShard.load(str(path))
        return _Shard(name=name, path=path, shard=shard, dimension=dimension, sparse=sparse,
                      optimized_writes=int(shard.info().points_count))

    def _read_aliases(self) -> dict[str, str]:
        if not self._aliases_path.exists():
            return {}
        return {str(k): str(v) for k, v in json.loads(self._aliases_path.read_text()).items()}

    def _write_aliases(self) -> None:
        """Temp file + os.replace, so a crash leaves either the old or the new alias map."""
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".aliases-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(self._aliases, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._aliases_path)

    def _get(self, name_or_alias: str) -> _Shard:
        if self._closed:
            raise StoreUnavailableError("edge backend is closed")
        with self._meta_lock:
            name = self._aliases.get(name_or_alias, name_or_alias)
            shard = self._shards.get(name)
        if shard is None:
            raise CollectionNotFoundError(name_or_alias)
        return shard

    @contextlib.contextmanager
    def _locked(self, name_or_alias: str) -> Iterator[_Shard]:
        shard = self._get(name_or_alias)
        with shard.lock:
            yield shard

    # Collections and aliases -------------------------------------------------------------
    def ensure_collection(self, model: str, version: str, dimension: int) -> str:
        name = collection_name(model, version)
        with self._meta_lock:
            existing = self._shards.get(name)
            if existing is None:
                self._shards[name] = self._create(name, dimension)
            elif existing.dimension != dimension:
                raise DimensionMismatchError(name, existing.dimension, dimension)
            alias = alias_name(model)
            if alias not in self._aliases:
                self._aliases[alias] = name
                self._write_aliases()
        return name

    def _create(self, name: str, dimension: int) -> _Shard:
        # Size the indexing threshold (KB) so optimize() indexes once optimize_after_writes points land.
        threshold_kb = max(1, self.optimize_after_writes * dimension * 4 // 1024)
        # The dense vector stays the unnamed one (as in collections made before hybrid retrieval); the BM25
        # vector sits beside it, its IDF computed by the engine at query time.
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
            sparse_vectors={bm25.SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb),
        )
        path = self._collections_dir / name
        shard = qe.EdgeShard.create(str(path), config)
        shard.update(
            qe.UpdateOperation.create_field_index(TENANT_FIELD, qe.KeywordIndexParams(is_tenant=True))
        )
        shard.update(qe.UpdateOperation.create_field_index(ASSET_FIELD, qe.KeywordIndexParams()))
        shard.flush()
        return _Shard(name=name, path=path, shard=shard, dimension=dimension, sparse=True)

    def resolve(self, name_or_alias: str) -> str:
        return self._get(name_or_alias).name

    def set_alias(self, alias: str, collection: str) -> None:
        with self._meta_lock:
            if collection not in self._shards:
                raise CollectionNotFoundError(collection)
            self._aliases[alias] = collection
            self._write_aliases()

    def get_alias(self, alias: str) -> str | None:
        with self._meta_lock:
            return self._aliases.get(alias)

    def list_collections(self) -> list[str]:
        with self._meta_lock:
            return sorted(self._shards)

    def list_aliases(self) -> dict[str, str]:
        with self._meta_lock:
            return dict(self._aliases)

    # Writes ----------------------------------------------------------------------------------
    def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        check_tenant(tenant)
        if not points:
            return 0
        with self._locked(collection) as s:
            batch = []
            for point in points:
                vector = as_float_list(point.vector)
                if len(vector) != s.dimension:
                    raise DimensionMismatchError(s.name, s.dimension, len(vector))
                stored: Any = vector
                if s.sparse and point.sparse:
                    terms = qe.SparseVector(list(point.sparse.indices), list(point.sparse.values))
                    stored = {"": vector, bm25.SPARSE_VECTOR: terms}
                batch.append(qe.Point(point.id, stored, tenant_payload(tenant, point.payload)))
            s.shard.update(qe.UpdateOperation.upsert_points(batch))
            if wait:
                s.shard.flush()
            s.pending_writes += len(batch)
            s.last_write = time.monotonic()
            if s.pending_writes >= self._optimize_due_after(s):
                self._wake.set()
        return len(batch)

    def delete_asset(self, collection: str, tenant: str, asset_id: str) -> int:
        flt = _tenant_filter(tenant, asset_id)
        with self._locked(collection) as s:
            n = s.shard.count(qe.CountRequest(exact=True, filter=flt))
            if n:
                s.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
                s.shard.flush()
        return int(n)

    def delete_ids(self, collection: str, tenant: str, ids: list[str]) -> int:
        with self._locked(collection) as s:
            owned = [p.point_id for p in self._retrieve(s, tenant, ids, with_vectors=False)]
            if owned:
                s.shard.update(qe.UpdateOperation.delete_points(list(owned)))
                s.shard.flush()
        return len(owned)

    # Reads -----------------------------------------------------------------------------------
    def _dense_params(self, s: _Shard, flt: qe.Filter) -> qe.SearchParams:
        """Exact when the filtered set is small enough to scan (recall 1.0), else HNSW (ACORN for a small share)."""
        n = int(s.shard.count(qe.CountRequest(exact=False, filter=flt)))
        t = self.tuning
        return qe.SearchParams(exact=n <= t.exact_max_points, hnsw_ef=t.hnsw_ef,
                               acorn=qe.AcornSearchParams(enable=True) if t.acorn else None)

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
        query_vector = as_float_list(vector) if vector is not None else []
        flt = _tenant_filter(tenant, asset_id)
        terms = bm25.encode_query(text or "") if mode != "dense" else None
        with self._locked(collection) as s:
            if mode != "sparse" and len(query_vector) != s.dimension:
                raise DimensionMismatchError(s.name, s.dimension, len(query_vector))
            if mode != "dense" and not s.sparse:
                raise SparseIndexMissingError(s.name)
            sparse_query = None
            if terms:
                sparse_query = qe.Query.Nearest(qe.SparseVector(list(terms.indices), list(terms.values)),
                                                using=bm25.SPARSE_VECTOR)
            # IDF over the searching tenant's points only: another tenant's writes never move its scores.
            sparse_params = qe.SearchParams(idf=qe.IdfParams(corpus=flt))
            if mode == "sparse":
                if sparse_query is None:  # only stopwords: no term to match
                    return []
                request = qe.QueryRequest(limit=limit, query=sparse_query, filter=flt, params=sparse_params,
                                          score_threshold=score_threshold, with_payload=with_payload)
            elif mode == "dense":
                request = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(query_vector), filter=flt,
                                          params=self._dense_params(s, flt), score_threshold=score_threshold,
                                          with_payload=with_payload)
            else:
                t = self.tuning
                depth = max(limit, t.prefetch_limit)
                prefetches = [qe.Prefetch(limit=depth, query=qe.Query.Nearest(query_vector), filter=flt,
                                          params=self._dense_params(s, flt))]
                weights = [t.rrf_weights[0]]
                if sparse_query is not None:  # a query of stopwords only fuses the dense list alone
                    prefetches.append(qe.Prefetch(limit=depth, query=sparse_query, filter=flt, params=sparse_params))
                    weights.append(t.rrf_weights[1])
                # The stubs type the fusion as Fusion; the runtime classes are Fusion.Rrf / Fusion.Dbsf.
                fusion: Any = qe.Fusion.Dbsf() if t.fusion == "dbsf" else qe.Fusion.Rrf(k=t.rrf_k, weights=weights)
                request = qe.QueryRequest(limit=limit, prefetches=prefetches, query=fusion, filter=flt,
                                          score_threshold=score_threshold, with_payload=with_payload)
            return [_hit(p) for p in s.shard.query(request)]

    @staticmethod
    def _retrieve(s: _Shard, tenant: str, ids: list[str], with_vectors: bool) -> list[StoredPoint]:
        check_tenant(tenant)
        if not ids:
            return []
        records = s.shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        # retrieve() has no filter: tenant isolation is enforced on the returned payloads.
        by_id = {
            str(r.id): _stored(r, with_vectors)
            for r in records
            if (r.payload or {}).get(TENANT_FIELD) == tenant
        }
        return [by_id[i] for i in dict.fromkeys(str(i) for i in ids) if i in by_id]

    def retrieve(
        self, collection: str, tenant: str, ids: list[str], with_vectors: bool = False
    ) -> list[StoredPoint]:
        with self._locked(collection) as s:
            return self._retrieve(s, tenant, ids, with_vectors)

    def count(self, collection: str, tenant: str, asset_id: str | None = None) -> int:
        with self._locked(collection) as s:
            return int(s.shard.count(qe.CountRequest(exact=True, filter=_tenant_filter(tenant, asset_id))))

    def scroll(
        self,
        collection: str,
        tenant: str,
        limit: int = 256,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], str | None]:
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_tenant_filter(tenant),
            with_payload=True,
            with_vector=with_vectors,
        )
        with self._locked(collection) as s:
            records, next_offset = s.shard.scroll(request)
        points = [_stored(r, with_vectors) for r in records]
        return points, None if next_offset is None else str(next_offset)

    def tenants(self, collection: str) -> list[str]:
        with self._locked(collection) as s:
            response = s.shard.facet(qe.FacetRequest(key=TENANT_FIELD, limit=_FACET_LIMIT, exact=True))
        return sorted(str(hit.value) for hit in response.hits if hit.count > 0)

    def stats(self, tenant: str) -> dict[str, int]:
        return {name: self.count(name, tenant) for name in self.list_collections()}

    # Optimizer -------------------------------------------------------------------------------
    def _optimize_loop(self) -> None:
        """Run optimize() per shard after enough new points, or once writes have gone idle."""
        while not self._stop.is_set():
            self._wake.wait(timeout=min(0.5, self.idle_optimize_s))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._meta_lock:
                shards = list(self._shards.values())
            now = time.monotonic()
            for s in shards:
                due = s.pending_writes >= self._optimize_due_after(s) or (
                    s.pending_writes > 0 and now - s.last_write >= self.idle_optimize_s
                )
                if due:
                    self._optimize(s)

    def _optimize_due_after(self, s: _Shard) -> int:
        """New points that make a shard due for optimize while writes continue: the configured count,
        or a quarter of what the shard held at its last optimize if that is more. A steady stream
        into a large shard then re-merges it a bounded number of times per doubling instead of every
        ``optimize_after_writes`` points (100,000 seeded points: 50 optimize runs become ~15); an
        idle shard is still optimized ``idle_optimize_s`` after its last write."""
        return max(self.optimize_after_writes, s.optimized_writes // OPTIMIZE_GROWTH_DIVISOR)

    def _optimize(self, s: _Shard) -> None:
        with s.lock:
            if self._closed or s.pending_writes == 0:
                return
            s.optimized_writes += s.pending_writes
            s.pending_writes = 0
            try:
                s.shard.optimize()
                s.shard.flush()
            except Exception:  # a failed optimize must not kill the thread; search still works
                log.exception("optimize of %s failed", s.name)
            s.optimize_runs += 1

    def optimize_now(self, collection: str) -> bool:
        """Optimize one collection synchronously (admin use and tests); True if segments changed."""
        with self._locked(collection) as s:
            s.optimized_writes += s.pending_writes
            s.pending_writes = 0
            changed = bool(s.shard.optimize())
            s.shard.flush()
            s.optimize_runs += 1
            return changed

    def shard_info(self, collection: str) -> dict[str, int]:
        """Segment and index counts of one collection (shows whether HNSW has been built)."""
        with self._locked(collection) as s:
            info = s.shard.info()
            return {
                "segments_count": int(info.segments_count),
                "points_count": int(info.points_count),
                "indexed_vectors_count": int(info.indexed_vectors_count),
                "optimize_runs": s.optimize_runs,
                "pending_writes": s.pending_writes,
            }

    def payload_indexes(self, collection: str) -> list[str]:
        """Names of the payload fields carrying an index."""
        with self._locked(collection) as s:
            return sorted(s.shard.info().payload_schema)

    # Snapshots -------------------------------------------------------------------------------
    def snapshot_create(self, collection: str) -> str:
        """Flush, then tar the shard directory while its lock keeps writers and the optimizer out."""
        with self._locked(collection) as s:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            name = f"{s.name}@{stamp}{_SNAPSHOT_SUFFIX}"
            s.shard.flush()
            tmp = self._snapshots_dir / f".{name}.partial"
            # gzip level 1: the shard preallocates zero-filled files (WAL, payload pages), ~150 MB
            # even when nearly empty, and fast compression shrinks that to well under 1 MB.
            with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
                tar.add(s.path, arcname=s.name)
            os.replace(tmp, self._snapshots_dir / name)
        return name

    def snapshot_list(self) -> list[dict[str, Any]]:
        snapshots = []
        for path in sorted(self._snapshots_dir.glob(f"*@*{_SNAPSHOT_SUFFIX}")):
            collection, _, stamp = path.name.removesuffix(_SNAPSHOT_SUFFIX).rpartition("@")
            snapshots.append(
                {
                    "name": path.name,
                    "collection": collection,
                    "created_at": stamp,
                    "size": path.stat().st_size,
                }
            )
        return snapshots

    def snapshot_restore(self, name: str) -> None:
        """Close the shard, swap in the snapshot's directory, load it again."""
        path = self._snapshots_dir / name
        if "/" in name or not path.is_file():
            raise FileNotFoundError(f"no snapshot named {name!r}")
        collection = name.removesuffix(_SNAPSHOT_SUFFIX).rpartition("@")[0]
        staging = Path(tempfile.mkdtemp(dir=self._collections_dir, prefix=".restore-"))
        try:
            with tarfile.open(path) as tar:
                tar.extractall(staging, filter="data")
            restored = staging / collection
            with self._meta_lock:
                current = self._shards.pop(collection, None)
                target = self._collections_dir / collection
                if current is not None:
                    with current.lock:
                        current.shard.close()
                        old = staging / ".old"
                        os.replace(target, old)
                        os.replace(restored, target)
                else:
                    os.replace(restored, target)
                self._shards[collection] = self._load(collection, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # Lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        self._optimizer.join(timeout=30)
        with self._meta_lock:
            self._closed = True
            for s in self._shards.values():
                with s.lock:
                    s.shard.flush()
                    s.shard.close()
            self._shards.clear()
