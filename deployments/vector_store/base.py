"""The vector-store contract every backend implements, and the records that cross it.

Two implementations sit behind :class:`VectorStore`: the embedded Qdrant edge shard (one process,
no server; other processes reach it through a proxy of the actor that owns it, see
:mod:`deployments.vector_store.proxies`) and a Qdrant server through ``qdrant-client`` (each process
talks to the server itself). :func:`deployments.vector_store.open_store` picks one, once; callers
never see which one runs. The async twin of this contract, ``AsyncVectorStore``, is generated from
this class (scripts/generate_async_store.py; a test checks it is current). Every
read and write takes the tenant explicitly and the backend adds the ``org_id`` filter itself, so
no caller can forget tenant isolation.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

Vector: TypeAlias = Sequence[float] | npt.NDArray[Any]
WithPayload: TypeAlias = bool | list[str]
# dense: cosine over the model's vectors; sparse: BM25 over the segment text; hybrid: both, fused by
# reciprocal rank inside Qdrant's query API.
SearchMode: TypeAlias = Literal["dense", "sparse", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("dense", "sparse", "hybrid")

TENANT_FIELD = "org_id"
ASSET_FIELD = "asset_id"
COLLECTION_PREFIX = "embeddings__"


class VectorStoreError(RuntimeError):
    """Base class of every error the vector store raises on purpose."""


class CollectionNotFoundError(VectorStoreError, LookupError):
    """A collection or alias name that resolves to nothing."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no collection or alias named {name!r}")


class StoreUnavailableError(VectorStoreError):
    """The store could not be reached (server down, retries exhausted, shard closed)."""


class DimensionMismatchError(VectorStoreError, ValueError):
    """A vector whose length differs from the collection's dimension."""

    def __init__(self, collection: str, expected: int, got: int) -> None:
        self.collection = collection
        self.expected = expected
        self.got = got
        super().__init__(f"collection {collection!r} holds {expected}-d vectors, got {got}-d")


class TenantMismatchError(VectorStoreError, ValueError):
    """A point whose payload names another tenant than the one writing it."""


class SparseIndexMissingError(VectorStoreError, LookupError):
    """A sparse or hybrid search of a collection created before collections carried BM25 vectors."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        super().__init__(f"collection {collection!r} has no BM25 (sparse) vectors: it was created before hybrid "
                         "retrieval; re-embed into a new version to search it with mode 'sparse' or 'hybrid'")


@dataclass(frozen=True)
class SparseTerms:
    """A sparse vector: term ids and their weights, same length (see deployments.vector_store.bm25)."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __bool__(self) -> bool:
        return bool(self.indices)


@dataclass
class PointRecord:
    """One point to write: a deterministic id (UUID string), its vector and payload, and the BM25 terms of
    its text (``bm25.encode_document``; None writes no sparse vector: sparse search will not find it)."""

    id: str
    vector: Vector
    payload: dict[str, Any] = field(default_factory=dict)
    sparse: SparseTerms | None = None


@dataclass(frozen=True)
class SearchHit:
    """One search result, best first in the list that holds it."""

    point_id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    """A stored point as read back by retrieve or scroll."""

    point_id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


def collection_name(model: str, version: str) -> str:
    """The physical collection of one model version; a new version gets a new collection."""
    return f"{COLLECTION_PREFIX}{model}__{version}"


def parse_collection_name(name: str) -> tuple[str, str]:
    """(model, version) of a physical collection name; ValueError for anything else."""
    model, sep, version = name.removeprefix(COLLECTION_PREFIX).rpartition("__")
    if not name.startswith(COLLECTION_PREFIX) or not sep or not model or not version:
        raise ValueError(f"{name!r} is not a collection name of the form {COLLECTION_PREFIX}<model>__<version>")
    return model, version


def alias_name(model: str) -> str:
    """The stable alias callers search through; re-pointing it switches model versions."""
    return f"{COLLECTION_PREFIX}{model}"


def as_float_list(vector: Vector) -> list[float]:
    """A vector as plain Python floats (both engines want lists; numpy arrays are common input)."""
    return [float(x) for x in np.asarray(vector, dtype=np.float32).reshape(-1)]


def check_search(mode: str, vector: Vector | None, text: str | None) -> None:
    """Refuse a search that lacks what its mode needs: dense a vector, sparse a text, hybrid both."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}; one of {', '.join(SEARCH_MODES)}")
    if mode != "sparse" and vector is None:
        raise ValueError(f"a {mode} search needs a query vector")
    if mode != "dense" and text is None:
        raise ValueError(f"a {mode} search needs the query text")


def check_tenant(tenant: str) -> str:
    """Refuse an empty tenant: an empty org_id filter would be a silent cross-tenant leak risk."""
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("tenant must be a non-empty string")
    return tenant


def tenant_payload(tenant: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with org_id forced to the writing tenant; a conflicting org_id is refused."""
    owner = payload.get(TENANT_FIELD)
    if owner is not None and owner != tenant:
        raise TenantMismatchError(f"point payload names org_id={owner!r} but tenant {tenant!r} is writing")
    return {**payload, TENANT_FIELD: tenant}


class VectorStore(abc.ABC):
    """What every vector store offers; names may be collections or aliases throughout."""

    kind: str = "abstract"

    def ping(self) -> dict[str, Any]:
        """The store answers: its kind and its collections."""
        return {"kind": self.kind, "collections": self.list_collections()}

    # Collections and aliases -------------------------------------------------------------
    @abc.abstractmethod
    def ensure_collection(self, model: str, version: str, dimension: int) -> str:
        """Create the version's cosine collection (and the model alias if absent); idempotent."""

    @abc.abstractmethod
    def resolve(self, name_or_alias: str) -> str:
        """The collection a name or alias points to, or CollectionNotFoundError."""

    @abc.abstractmethod
    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` (atomically replacing any previous target)."""

    @abc.abstractmethod
    def get_alias(self, alias: str) -> str | None:
        """The collection behind ``alias``, or None."""

    @abc.abstractmethod
    def list_collections(self) -> list[str]:
        """Every physical collection, sorted."""

    @abc.abstractmethod
    def list_aliases(self) -> dict[str, str]:
        """Alias name -> collection name."""

    # Writes ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert(self, collection: str, tenant: str, points: list[PointRecord], wait: bool = True) -> int:
        """Write points owned by ``tenant``; returns how many were written."""

    @abc.abstractmethod
    def delete_asset(self, collection: str, tenant: str, asset_id: str) -> int:
        """Delete the tenant's points of one asset; returns how many were deleted."""

    @abc.abstractmethod
    def delete_ids(self, collection: str, tenant: str, ids: list[str]) -> int:
        """Delete those of ``ids`` the tenant owns; returns how many were deleted."""

    # Reads -----------------------------------------------------------------------------------
    @abc.abstractmethod
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
        """The tenant's best points, best first. ``mode`` dense: nearest neighbours of ``vector`` (cosine);
        sparse: BM25 of ``text`` over the segment texts; hybrid: both lists fused by reciprocal rank inside
        Qdrant. The tenant (and ``asset_id``) filter applies to every stage; ``score_threshold`` to the final
        score. Sparse and hybrid raise SparseIndexMissingError on a collection without BM25 vectors."""

    @abc.abstractmethod
    def retrieve(
        self, collection: str, tenant: str, ids: list[str], with_vectors: bool = False
    ) -> list[StoredPoint]:
        """The tenant's points among ``ids``, in the order asked; other tenants' ids are skipped."""

    @abc.abstractmethod
    def count(self, collection: str, tenant: str, asset_id: str | None = None) -> int:
        """Exact number of the tenant's points (of one asset if given)."""

    @abc.abstractmethod
    def scroll(
        self,
        collection: str,
        tenant: str,
        limit: int = 256,
        offset: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], str | None]:
        """One page of the tenant's points in id order, and the offset of the next page."""

    @abc.abstractmethod
    def tenants(self, collection: str) -> list[str]:
        """Distinct org_ids holding points in the collection, sorted (an admin view)."""

    @abc.abstractmethod
    def stats(self, tenant: str) -> dict[str, int]:
        """The tenant's point count in every collection."""

    # Snapshots and lifecycle ---------------------------------------------------------------
    @abc.abstractmethod
    def snapshot_create(self, collection: str) -> str:
        """Snapshot one collection; returns the snapshot's name."""

    @abc.abstractmethod
    def snapshot_list(self) -> list[dict[str, Any]]:
        """Every snapshot: at least name, collection, size."""

    @abc.abstractmethod
    def snapshot_restore(self, name: str) -> None:
        """Replace a collection's contents with a snapshot's."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release everything; the backend is unusable afterwards."""


# Every public method of the contract, in declaration order: what the proxies forward and the async
# twin mirrors.
CONTRACT_METHODS: tuple[str, ...] = tuple(
    name for name, value in VectorStore.__dict__.items() if callable(value) and not name.startswith("_"))
