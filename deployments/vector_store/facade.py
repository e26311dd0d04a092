"""Pick the vector store once per process, from a :class:`StoreConfig`.

* Embedded (no ``qdrant_url``): the edge shard owned by one Ray actor; this process gets a proxy
  (blocking or awaited).
* Qdrant server: this process's own ``qdrant-client`` (blocking; awaited calls run on worker
  threads), no actor hop, so every Serve replica and Ray Data writer talks to the server itself.
"""

from __future__ import annotations

import threading

from deployments.vector_store.async_contract import AsyncVectorStore
from deployments.vector_store.base import VectorStore
from deployments.vector_store.config import StoreConfig

_OPENED: dict[StoreConfig, VectorStore] = {}
_LOCK = threading.Lock()


def build_store(config: StoreConfig) -> VectorStore:
    """A new store object of the configured kind, in this process (the actor calls this for edge)."""
    if config.qdrant_url:
        from deployments.vector_store.server import ServerBackend

        return ServerBackend.from_url(config.qdrant_url, config.qdrant_api_key, tuning=config.search)
    from deployments.vector_store.edge import EdgeBackend

    return EdgeBackend(config.data_dir / "qdrant", optimize_after_writes=config.optimize_after_writes,
                       tuning=config.search)


def open_store(config: StoreConfig) -> VectorStore:
    """This process's blocking store (cached): a server client, or a proxy of the store actor."""
    with _LOCK:
        store = _OPENED.get(config)
        if store is None:
            if config.embedded:
                from deployments.vector_store.actor import get_store
                from deployments.vector_store.proxies import actor_store

                store = actor_store(get_store(config))
            else:
                store = build_store(config)
            _OPENED[config] = store
        return store


def open_async_store(config: StoreConfig) -> AsyncVectorStore:
    """This process's awaited store, for event loops (Serve replicas)."""
    from deployments.vector_store.proxies import async_actor_store, threaded_store

    if config.embedded:
        from deployments.vector_store.actor import get_store

        return async_actor_store(get_store(config))
    return threaded_store(open_store(config))
