"""The vector-store layer: one interface, an embedded (Qdrant edge) and a server (Qdrant) backend.

Importing this package has no side effects and does not import Ray; the actor lives in
``deployments.vector_store.actor``.
"""

from deployments.vector_store.base import (
    CollectionNotFoundError,
    DimensionMismatchError,
    PointRecord,
    SearchHit,
    StoredPoint,
    StoreUnavailableError,
    TenantMismatchError,
    VectorStoreBackend,
    VectorStoreError,
    alias_name,
    collection_name,
    parse_collection_name,
)

__all__ = [
    "CollectionNotFoundError",
    "DimensionMismatchError",
    "PointRecord",
    "SearchHit",
    "StoreUnavailableError",
    "StoredPoint",
    "TenantMismatchError",
    "VectorStoreBackend",
    "VectorStoreError",
    "alias_name",
    "collection_name",
    "parse_collection_name",
]
