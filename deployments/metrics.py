"""Figures of the model and store processes (Embedder replicas, the vector-store actor).

Each process keeps its figures in memory (:class:`LocalHistogram` and counters) and hands a snapshot
to the Gateway's ``GET /metrics`` route through a handle call; that route is Heimdex's one metrics
export (serve_app/metrics.py renders every snapshot as Prometheus text at scrape time). A snapshot is
plain data because it crosses processes: a ``prometheus_client`` object cannot. Nothing is created at
import time: Serve imports this module in every replica.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deployments.tenant_labels import TenantLabels

# Seconds; from a cached search (~1 ms) to a cold large batch on CPU (tens of seconds).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                        10.0, 30.0)
# Calls (requests) per @serve.batch batch; max_batch_size tops out in the low hundreds.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class LocalHistogram:
    """A thread-safe Prometheus-style histogram kept in process memory (non-cumulative counts)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # last slot: above the largest bound (+Inf)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._count += 1

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [...], "counts": [...], "sum", "count"}``; counts has one more slot (+Inf)."""
        with self._lock:
            return {"buckets": list(self.buckets), "counts": list(self._counts), "sum": self._sum,
                    "count": self._count}


def in_serve_replica() -> bool:
    """True inside a Ray Serve replica (Serve importable and a replica context set)."""
    try:
        from ray.serve import context

        return context._get_internal_replica_context() is not None
    except Exception:  # pragma: no cover - Serve not importable
        return False


class EmbedderMetrics:
    """Batch size, per-batch latency, tokens and queue depth of one Embedder replica."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.batch_size = LocalHistogram(BATCH_SIZE_BUCKETS)
        self.batch_latency = LocalHistogram(LATENCY_BUCKETS_S)
        self.batches = 0
        self.texts = 0
        self.tokens = 0
        self.pending = 0  # embed() calls waiting for, or inside, a batch
        # Seconds each call waited in its tenant's queue before a model pass took it, by tenant label.
        self.tenant_labels = TenantLabels()
        self.tenant_wait: dict[str, LocalHistogram] = {}

    def enter(self, calls: int = 1) -> None:
        self.pending += calls

    def leave(self, calls: int = 1) -> None:
        self.pending -= calls

    def record_batch(self, calls: int, texts: int, tokens: int, seconds: float) -> None:
        self.batches += 1
        self.texts += texts
        self.tokens += tokens
        self.batch_size.observe(calls)
        self.batch_latency.observe(seconds)

    def record_wait(self, tenant: str, seconds: float) -> None:
        """One call's wait in its tenant's queue (in-process only: no Ray metric call per request)."""
        label = self.tenant_labels(tenant)
        histogram = self.tenant_wait.get(label)
        if histogram is None:
            histogram = self.tenant_wait.setdefault(label, LocalHistogram(LATENCY_BUCKETS_S))
        histogram.observe(seconds)

    def tenant_snapshot(self, queued_texts: dict[str, int]) -> dict[str, Any]:
        """``{label: {"queued_texts": n, "wait_s": histogram}}`` for every tenant label seen."""
        depth: dict[str, int] = {}
        for tenant, texts in queued_texts.items():
            label = self.tenant_labels(tenant)
            depth[label] = depth.get(label, 0) + texts
        empty = LocalHistogram(LATENCY_BUCKETS_S).snapshot()
        waits = {label: histogram.snapshot() for label, histogram in list(self.tenant_wait.items())}
        return {label: {"queued_texts": depth.get(label, 0), "wait_s": waits.get(label, empty)}
                for label in sorted(set(depth) | set(waits))}

    def snapshot(self) -> dict[str, Any]:
        return {"model": self.model, "batches": self.batches, "texts": self.texts, "tokens": self.tokens,
                "queue_depth": self.pending, "batch_size": self.batch_size.snapshot(),
                "batch_latency_s": self.batch_latency.snapshot()}


class StoreMetrics:
    """Latency of vector-store calls, by operation, inside the store actor."""

    OPERATIONS = ("upsert", "search", "search_batch")

    def __init__(self) -> None:
        self.latency = {op: LocalHistogram(LATENCY_BUCKETS_S) for op in self.OPERATIONS}

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.latency[operation].observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {"latency_s": {op: hist.snapshot() for op, hist in self.latency.items()}}
