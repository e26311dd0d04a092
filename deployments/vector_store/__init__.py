"""The vector-store layer: one interface, an embedded (Qdrant edge) and a server (Qdrant) backend.

Importing this package has no side effects and does not import Ray. ``open_store`` /
``open_async_store`` (``deployments.vector_store.facade``) give a process its store, picked once from
a :class:`StoreConfig`.
"""

from deployments.vector_store.async_contract import AsyncVectorStore
from deployments.vector_store.base import (
    CollectionNotFoundError,
    DimensionMismatchError,
    PointRecord,
    SearchHit,
    StoredPoint,
    StoreUnavailableError,
    TenantMismatchError,
    VectorStore,
    VectorStoreError,
    alias_name,
    collection_name,
    parse_collection_name,
)
from deployments.vector_store.config import StoreConfig
from deployments.vector_store.facade import open_async_store, open_store

__all__ = [
    "AsyncVectorStore",
    "CollectionNotFoundError",
    "DimensionMismatchError",
    "PointRecord",
    "SearchHit",
    "StoreConfig",
    "StoreUnavailableError",
    "StoredPoint",
    "TenantMismatchError",
    "VectorStore",
    "VectorStoreError",
    "alias_name",
    "collection_name",
    "open_async_store",
    "open_store",
    "parse_collection_name",
]
