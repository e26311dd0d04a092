"""The one Ray actor that owns the embedded vector store (an edge shard lives in exactly one process).

Every method of the contract is forwarded to the store it owns (generated from ``CONTRACT_METHODS``),
with latency kept for writes and searches. Other processes reach it through the proxies of
:mod:`deployments.vector_store.proxies`; :func:`deployments.vector_store.facade.open_store` hands them
out. With a Qdrant server configured no actor is used at all. Nothing is created at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deployments.metrics import StoreMetrics
from deployments.vector_store.base import CONTRACT_METHODS
from deployments.vector_store.config import StoreConfig

if TYPE_CHECKING:
    from ray.actor import ActorHandle

NAMESPACE = "heimdex"
MAX_CONCURRENCY = 16
TIMED = frozenset({"upsert", "search"})


def _forward(name: str) -> Callable[..., Any]:
    def call(self: VectorStoreActor, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._store, name)
        if name not in TIMED:
            return method(*args, **kwargs)
        with self._metrics.timed(name):
            return method(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class VectorStoreActor:
    """Owns the embedded store; its contract methods run on the actor's thread pool."""

    def __init__(self, config: StoreConfig) -> None:
        from deployments.vector_store.facade import build_store

        self._store = build_store(config)
        self._metrics = StoreMetrics()

    def optimize_now(self, collection: str) -> bool:
        """Edge only (benchmarks): build the collection's HNSW index now instead of when writes go idle."""
        optimize: Callable[[str], bool] = getattr(self._store, "optimize_now")  # noqa: B009
        return optimize(collection)

    def metrics_snapshot(self) -> dict[str, Any]:
        """Per-operation latency histograms for the Gateway's ``/metrics`` route."""
        return self._metrics.snapshot()


for _name in CONTRACT_METHODS:
    setattr(VectorStoreActor, _name, _forward(_name))


def get_store(config: StoreConfig) -> ActorHandle:
    """Get or create the detached store actor named ``config.actor_name``.

    ``num_cpus=0`` because the actor is I/O and index bound and must never wait for a CPU slot;
    ``max_restarts=-1`` so a crash reopens the shard from disk; threaded (``max_concurrency``) so
    searches from many replicas overlap instead of queueing behind one another.
    """
    import ray

    remote_cls: Any = ray.remote(VectorStoreActor)
    handle: ActorHandle = remote_cls.options(
        name=config.actor_name,
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_concurrency=MAX_CONCURRENCY,
        max_restarts=-1,
    ).remote(config)
    return handle
